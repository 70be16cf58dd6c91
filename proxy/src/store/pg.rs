//! The PostgreSQL side of the store: a small connection pool, binary `COPY` of batches,
//! and the periodic backend snapshots.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::{pin_mut, SinkExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::migrate;
use super::record::{now_unix_us, Cell, Column, RequestRecord, SnapshotRecord, REQUEST_COLUMNS, SNAPSHOT_COLUMNS};
use super::{Sink, WriteError};
use crate::clock;
use crate::features::Features;
use crate::metrics::metrics;
use crate::state::Shared;
use crate::upstream::Health;

/// Connections: one for request batches, one for snapshots, spare for reconnects.
const POOL_SIZE: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A write that takes longer is abandoned (and its connection dropped) and retried: a
/// hung database must not hold the writer forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) enum DbError {
    Url(tokio_postgres::Error),
    Pool(String),
}

/// Parses a URL into a connection config with our defaults: a connect timeout, an
/// application name, and asynchronous commit (records are telemetry: a database crash may
/// lose the last few hundred milliseconds of them, and writing needs no fsync wait).
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("neurabalancer");
    }
    if cfg.get_options().is_none() {
        cfg.options("-c synchronous_commit=off");
    }
    Ok(cfg)
}

/// Connects one client outside any pool (CLI commands, tests); its connection task runs
/// on the current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = pg_config(url)?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// The pool plus "migrations applied" (once per process, by whichever task connects first).
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    migrated: Arc<tokio::sync::OnceCell<()>>,
}

impl Db {
    pub fn new(url: &str) -> Result<Db, DbError> {
        let cfg = pg_config(url).map_err(DbError::Url)?;
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Db {
            pool,
            migrated: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// A connection with the schema in place.
    async fn client(&self) -> Result<Object, WriteError> {
        let client = self.pool.get().await.map_err(|e| WriteError::Retry(e.to_string()))?;
        self.migrated
            .get_or_try_init(|| async {
                match migrate::apply(&client).await {
                    Ok(applied) => {
                        if !applied.is_empty() {
                            tracing::info!(versions = ?applied, "store: migrations applied");
                        }
                        Ok(())
                    }
                    // A schema problem can be fixed by an operator: keep retrying, loudly.
                    Err(e) => Err(WriteError::Retry(format!("migrations: {e}"))),
                }
            })
            .await?;
        Ok(client)
    }
}

/// Errors worth retrying: the connection, the server going away or starting, resources.
/// Anything else the server said about the data is final.
fn classify(e: tokio_postgres::Error) -> WriteError {
    let retry = match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57") // operator intervention: shutdown, cannot connect now
                || c.starts_with("58") // system error
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        }
    };
    if retry {
        WriteError::Retry(e.to_string())
    } else {
        WriteError::Reject(e.to_string())
    }
}

/// The header of PostgreSQL's binary `COPY` format: signature, flags, extension length.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Encoded rows are sent to the connection in chunks of about this size.
const COPY_CHUNK: usize = 256 << 10;

/// `COPY table (columns) FROM STDIN (FORMAT binary)` of `rows`; returns the rows written.
///
/// Encodes the rows itself into large chunks (tokio-postgres' `BinaryCopyInWriter` hands
/// the connection a message every 4 KiB, a task wake-up each): the writer shares the
/// machine with the proxy, so its CPU is the proxy's.
pub(crate) async fn copy_in<'a, const N: usize>(
    client: &Client,
    table: &str,
    columns: &[Column; N],
    rows: impl Iterator<Item = [Cell<'a>; N]>,
) -> Result<u64, WriteError> {
    let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
    let sql = format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", names.join(", "));
    let sink = client.copy_in::<_, Bytes>(&sql).await.map_err(classify)?;
    pin_mut!(sink);
    let types: Vec<Type> = columns.iter().map(|c| c.kind.sql_type()).collect();
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 8192);
    buf.put_slice(COPY_SIGNATURE);
    buf.put_i32(0);
    buf.put_i32(0);
    for row in rows {
        buf.put_i16(N as i16);
        for ((cell, ty), col) in row.iter().zip(&types).zip(columns) {
            let at = buf.len();
            buf.put_i32(0);
            let encoded = cell
                .to_sql_checked(ty, &mut buf)
                .map_err(|e| WriteError::Reject(format!("{table}.{}: {e}", col.name)))?;
            if let IsNull::No = encoded {
                let len = i32::try_from(buf.len() - at - 4)
                    .map_err(|_| WriteError::Reject(format!("{table}.{}: value too large", col.name)))?;
                buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
            } else {
                buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
            }
        }
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await.map_err(classify)?;
        }
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze()).await.map_err(classify)?;
    sink.as_mut().finish().await.map_err(classify)
}

/// Runs `f` on a pooled connection with [`WRITE_TIMEOUT`]; a connection that failed or
/// timed out is discarded so the next attempt connects afresh.
async fn with_client<T, F>(db: &Db, f: F) -> Result<T, WriteError>
where
    F: AsyncFnOnce(&Client) -> Result<T, WriteError>,
{
    let client = db.client().await?;
    match tokio::time::timeout(WRITE_TIMEOUT, f(&client)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => {
            if matches!(err, WriteError::Retry(_)) {
                let _ = Object::take(client);
            }
            Err(err)
        }
        Err(_) => {
            let _ = Object::take(client);
            Err(WriteError::Retry(format!("write timed out after {WRITE_TIMEOUT:?}")))
        }
    }
}

pub(crate) struct PgSink {
    db: Db,
}

impl PgSink {
    pub fn new(db: Db) -> Self {
        PgSink { db }
    }
}

#[async_trait]
impl Sink for PgSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn write(&mut self, batch: &[Arc<RequestRecord>]) -> Result<(), WriteError> {
        with_client(&self.db, async |c: &Client| {
            copy_in(c, "requests", &REQUEST_COLUMNS, batch.iter().map(|r| r.cells())).await
        })
        .await
        .map(drop)
    }
}

/// Every `interval`: one `backend_snapshots` row per backend, and the `servers` upsert.
pub(crate) struct Snapshots {
    db: Db,
    interval: Duration,
}

fn health_str(h: Health) -> &'static str {
    match h {
        Health::Pending => "pending",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// The current state of every backend of every pool.
pub fn snapshot_rows(shared: &Shared) -> Vec<SnapshotRecord> {
    let upstreams = shared.upstreams.load();
    let now = clock::now_ns();
    let time_us = now_unix_us();
    let mut rows = Vec::new();
    for pool in upstreams.pools.values() {
        let params = **pool.shared.params.load();
        for b in &pool.members().list {
            rows.push(SnapshotRecord {
                time_us,
                pool: pool.name.clone(),
                backend: b.id(),
                address: b.addr,
                health: health_str(b.health()),
                ejected: b.is_ejected(now),
                requests: b.requests(),
                features: Features::of(b, now, &params),
            });
        }
    }
    rows
}

const UPSERT_SERVERS: &str = "INSERT INTO servers (pool, id, address, weight) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) \
     ON CONFLICT (pool, id) DO UPDATE SET address = EXCLUDED.address, weight = EXCLUDED.weight, last_seen = now()";

impl Snapshots {
    pub fn new(db: Db, interval: Duration) -> Self {
        Snapshots { db, interval }
    }

    async fn write(&self, rows: &[SnapshotRecord]) -> Result<(), WriteError> {
        let pools: Vec<&str> = rows.iter().map(|r| &*r.pool).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.backend.as_str()).collect();
        let addrs: Vec<String> = rows.iter().map(|r| r.address.to_string()).collect();
        let weights: Vec<i32> = rows.iter().map(|r| r.features.weight as i32).collect();
        with_client(&self.db, async |c: &Client| {
            c.execute(UPSERT_SERVERS, &[&pools, &ids, &addrs, &weights])
                .await
                .map_err(classify)?;
            copy_in(
                c,
                "backend_snapshots",
                &SNAPSHOT_COLUMNS,
                rows.iter().map(|r| r.cells()),
            )
            .await
        })
        .await
        .map(drop)
    }

    pub async fn run(self, shared: Arc<Shared>) {
        let m = metrics();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let rows = snapshot_rows(&shared);
            if rows.is_empty() {
                continue;
            }
            let n = rows.len() as u64;
            match self.write(&rows).await {
                Ok(()) => {
                    m.store_written
                        .with_label_values(&["postgres", "backend_snapshots"])
                        .inc_by(n);
                    failing = false;
                }
                Err(WriteError::Retry(e) | WriteError::Reject(e)) => {
                    m.store_errors.with_label_values(&["postgres"]).inc();
                    m.store_dropped
                        .with_label_values(&["postgres", "backend_snapshots", "unavailable"])
                        .inc_by(n);
                    if !failing {
                        tracing::warn!(error = %e, "store: backend snapshot not written");
                        failing = true;
                    }
                }
            }
        }
    }
}
