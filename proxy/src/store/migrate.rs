//! Versioned SQL migrations (`migrations/*.sql`, embedded in the binary).
//!
//! `apply` takes a session advisory lock, so proxies starting together apply each
//! migration exactly once (the others wait, then find nothing to do); each migration runs
//! in its own transaction together with its `schema_migrations` row. A recorded checksum
//! that differs from the shipped file is an error: an applied migration was edited.

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "schema",
        sql: include_str!("../../../migrations/0001_schema.sql"),
    },
    Migration {
        version: 2,
        name: "timescaledb",
        sql: include_str!("../../../migrations/0002_timescaledb.sql"),
    },
    Migration {
        version: 3,
        name: "client_addr",
        sql: include_str!("../../../migrations/0003_client_addr.sql"),
    },
    Migration {
        version: 4,
        name: "ml",
        sql: include_str!("../../../migrations/0004_ml.sql"),
    },
];

/// Advisory-lock key: "NBMIGRAT" in ASCII.
const LOCK_KEY: i64 = 0x4e42_4d49_4752_4154;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}): {source}")]
    Failed {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version} ({name}) was applied with checksum {recorded}, but this build ships {shipped}: applied migrations must not be edited"
    )]
    Checksum {
        version: i32,
        name: &'static str,
        recorded: String,
        shipped: String,
    },
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies the missing migrations; returns the versions it applied (empty: up to date).
pub async fn apply(client: &Client) -> Result<Vec<i32>, MigrateError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let result = apply_locked(client).await;
    // Released with the session anyway if this fails (the connection is then dropped).
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    result
}

async fn apply_locked(client: &Client) -> Result<Vec<i32>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let recorded: Vec<(i32, String)> = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let shipped = checksum(m.sql);
        if let Some((_, sum)) = recorded.iter().find(|(v, _)| *v == m.version) {
            if *sum != shipped {
                return Err(MigrateError::Checksum {
                    version: m.version,
                    name: m.name,
                    recorded: sum.clone(),
                    shipped,
                });
            }
            continue;
        }
        let run = async {
            client.batch_execute("BEGIN").await?;
            client.batch_execute(m.sql).await?;
            client
                .execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &shipped],
                )
                .await?;
            client.batch_execute("COMMIT").await
        };
        if let Err(source) = run.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(MigrateError::Failed {
                version: m.version,
                name: m.name,
                source,
            });
        }
        applied.push(m.version);
    }
    if let Some(newer) = recorded
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| *v > MIGRATIONS.len() as i32)
        .max()
    {
        tracing::warn!(
            database = newer,
            known = MIGRATIONS.len(),
            "the database schema is newer than this build knows; recording continues"
        );
    }
    Ok(applied)
}
