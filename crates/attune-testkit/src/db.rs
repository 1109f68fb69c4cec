//! `TestDb`: a database of its own for each test, on either backend.

use sqlx::{Connection, Executor, PgConnection};

/// Where the tests find PostgreSQL; a fresh database is created on it per test.
pub fn admin_url() -> String {
    std::env::var("ATTUNE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A SQLite file in a new temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("attune.db").display());
        TestDb { url, pg_name: None, _dir: Some(dir) }
    }

    /// A new, empty PostgreSQL database, dropped when this value is. Panics with instructions
    /// when PostgreSQL is not reachable: these tests never pass silently.
    pub async fn postgres() -> TestDb {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin}: {e}\n\
                 Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
                 or point ATTUNE_TEST_DATABASE_URL at a server where the user may create databases."
            )
        });
        let name = format!("attune_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create the test database");
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
        TestDb { url: format!("{base}/{name}"), pg_name: Some(name), _dir: None }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg_name.is_some()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else { return };
        // Drop may run inside a runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url()).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()?;
                let _ = conn.close().await;
                Some(())
            })
        })
        .join();
    }
}
