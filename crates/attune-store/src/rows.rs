//! Reading columns the same way from SQLite and PostgreSQL rows.

use serde::de::DeserializeOwned;
use sqlx::Row;

use crate::{Result, StoreError};

/// Column access shared by `SqliteRow` and `PgRow`; all stored types are TEXT, BIGINT, INTEGER or
/// BOOLEAN, so these five readers cover every column.
pub(crate) trait RowExt {
    fn text(&self, c: &str) -> Result<String>;
    fn opt_text(&self, c: &str) -> Result<Option<String>>;
    fn big(&self, c: &str) -> Result<i64>;
    fn opt_big(&self, c: &str) -> Result<Option<i64>>;
    fn int(&self, c: &str) -> Result<i32>;
    fn opt_int(&self, c: &str) -> Result<Option<i32>>;
    fn boolean(&self, c: &str) -> Result<bool>;
    fn opt_bool(&self, c: &str) -> Result<Option<bool>>;
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn text(&self, c: &str) -> Result<String> {
                Ok(self.try_get(c)?)
            }
            fn opt_text(&self, c: &str) -> Result<Option<String>> {
                Ok(self.try_get(c)?)
            }
            fn big(&self, c: &str) -> Result<i64> {
                Ok(self.try_get(c)?)
            }
            fn opt_big(&self, c: &str) -> Result<Option<i64>> {
                Ok(self.try_get(c)?)
            }
            fn int(&self, c: &str) -> Result<i32> {
                Ok(self.try_get(c)?)
            }
            fn opt_int(&self, c: &str) -> Result<Option<i32>> {
                Ok(self.try_get(c)?)
            }
            fn boolean(&self, c: &str) -> Result<bool> {
                Ok(self.try_get(c)?)
            }
            fn opt_bool(&self, c: &str) -> Result<Option<bool>> {
                Ok(self.try_get(c)?)
            }
        }
    };
}
impl_row_ext!(sqlx::sqlite::SqliteRow);
impl_row_ext!(sqlx::postgres::PgRow);

pub(crate) fn json<T: DeserializeOwned>(table: &'static str, col: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt { table, message: format!("column {col}: {e}") })
}

pub(crate) fn opt_json<T: DeserializeOwned>(
    table: &'static str,
    col: &str,
    s: Option<String>,
) -> Result<Option<T>> {
    s.map(|s| json(table, col, &s)).transpose()
}

pub(crate) fn uuid(table: &'static str, s: &str) -> Result<uuid::Uuid> {
    s.parse().map_err(|e| StoreError::Corrupt { table, message: format!("bad uuid {s:?}: {e}") })
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialising plain data to JSON cannot fail")
}
