//! A throw-away PostgreSQL database per run, created and dropped through the
//! server named by `--database-url` (a role with CREATEDB).

use anyhow::{Context, Result};
use sqlx::{Connection, Executor, PgConnection};

pub struct TempDatabase {
    admin_url: String,
    pub name: String,
    /// The admin URL with the database replaced by the new one.
    pub url: String,
}

impl TempDatabase {
    pub async fn create(admin_url: &str) -> Result<TempDatabase> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Lower-case letters, digits and '_' only: safe to splice into SQL.
        let name = format!("anvil_bench_{}_{nanos:09}", std::process::id());
        let mut url = url::Url::parse(admin_url).context("--database-url is not a URL")?;
        url.set_path(&format!("/{name}"));
        let mut conn = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(admin_url)))?;
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .with_context(|| {
                format!("cannot create database {name} (does the role have CREATEDB?)")
            })?;
        let _ = conn.close().await;
        Ok(TempDatabase {
            admin_url: admin_url.to_string(),
            name,
            url: url.to_string(),
        })
    }

    pub async fn drop_database(self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .await
        .with_context(|| format!("cannot drop database {}", self.name))?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// The URL without its password, for printing.
pub fn redact(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
        let r = super::redact("postgres://u:hunter2@127.0.0.1:5432/db?sslmode=disable");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("127.0.0.1:5432/db"), "{r}");
    }
}
