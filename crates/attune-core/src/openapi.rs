//! How the core's hand-written serde types describe themselves in the API documents. Compiled only
//! with the `openapi` feature, which the wire crate turns on: the core itself never needs it.

use utoipa::openapi::{schema::Type, KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat};

use crate::{names, ActionRef, PackRef, Timestamp};

fn string(pattern: &str, example: &str, max: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .max_length(Some(max))
        .examples([serde_json::json!(example)])
        .into()
}

impl utoipa::PartialSchema for PackRef {
    fn schema() -> RefOr<Schema> {
        string(names::PACK_PATTERN, "core", names::MAX_SEGMENT)
    }
}
impl utoipa::ToSchema for PackRef {}

impl utoipa::PartialSchema for ActionRef {
    fn schema() -> RefOr<Schema> {
        string(names::ACTION_PATTERN, "core.echo", 2 * names::MAX_SEGMENT + 1)
    }
}
impl utoipa::ToSchema for ActionRef {}

/// An RFC 3339 date-time string.
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}
