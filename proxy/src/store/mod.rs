//! Request recording: PostgreSQL and a JSONL file, off the request path.
//!
//! ```text
//! logging() ──try_send──▶ [bounded queue] ──▶ batcher ──COPY──▶ PostgreSQL (requests)
//!            └─try_send─▶ [bounded queue] ──▶ batcher ──write─▶ requests.jsonl (rotated)
//! snapshot task ──every snapshot_interval_ms──▶ backend_snapshots, servers
//! ```
//!
//! - The request path only builds a [`RequestRecord`] and offers it to each sink's queue
//!   with `try_send`: it never waits. A full queue drops the record and counts it
//!   (`neurabalancer_store_rows_dropped_total{reason="queue_full"}`).
//! - Each sink's batcher writes when `batch_size` records are waiting, and at least every
//!   `flush_interval_ms`. A failed write is retried with backoff while the
//!   queue absorbs (then drops) new records; PostgreSQL connections are re-made by the pool,
//!   so writing resumes by itself when the database is back. A batch the database rejects
//!   (a constraint or type error) is dropped and counted, never retried forever.
//! - On graceful shutdown the control service asks every sink to flush ([`Recorder::flush`])
//!   before the process exits.
//! - Migrations ([`migrate`]) run from the writer on its first connection, so a database
//!   that is down at start delays recording, never the proxy.

pub mod export;
mod jsonl;
pub mod migrate;
mod pg;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

pub use pg::{connect as pg_connect, snapshot_rows};
pub use record::{RequestRecord, SnapshotRecord};

use crate::config::StorageConfig;
use crate::metrics::metrics;
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{var}: not a PostgreSQL URL: {source}")]
    Url { var: String, source: tokio_postgres::Error },
    #[error("storage.request_log_file {path}: {source}")]
    LogFile { path: String, source: std::io::Error },
    #[error("PostgreSQL pool: {0}")]
    Pool(String),
}

pub(crate) enum Msg {
    Row(Arc<RequestRecord>),
    /// Write everything received so far, then answer.
    Flush(oneshot::Sender<()>),
}

/// One sink's queue, as the request path sees it.
struct Lane {
    sink: &'static str,
    tx: mpsc::Sender<Msg>,
    dropped_full: IntCounter,
    /// Wakes the sink's batcher once a full batch is waiting.
    wake: Arc<Notify>,
    batch_size: usize,
}

/// The request path's handle: offers records to every configured sink without waiting.
#[derive(Default)]
pub struct Recorder {
    lanes: Vec<Lane>,
}

impl Recorder {
    /// No sink: records are not even built.
    pub fn off() -> Recorder {
        Recorder::default()
    }

    pub fn is_on(&self) -> bool {
        !self.lanes.is_empty()
    }

    pub fn record(&self, rec: RequestRecord) {
        let rec = Arc::new(rec);
        for lane in &self.lanes {
            if lane.tx.try_send(Msg::Row(rec.clone())).is_err() {
                lane.dropped_full.inc();
            } else if lane.tx.max_capacity() - lane.tx.capacity() >= lane.batch_size {
                lane.wake.notify_one();
            }
        }
    }

    /// Asks every sink to write what it holds, all at once; returns false when one did not
    /// finish within `timeout` (for example, the database is down). What a sink still has
    /// queued then is counted as dropped (`reason="shutdown"`) and logged.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let flushes = self.lanes.iter().map(|lane| async move {
            let (done, wait) = oneshot::channel();
            let ok = tokio::time::timeout_at(deadline, async {
                let sent = lane.tx.send(Msg::Flush(done)).await.is_ok();
                lane.wake.notify_one();
                sent && wait.await.is_ok()
            })
            .await
            .unwrap_or(false);
            if !ok {
                let queued = lane.tx.max_capacity() - lane.tx.capacity();
                metrics()
                    .store_dropped
                    .with_label_values(&[lane.sink, "requests", "shutdown"])
                    .inc_by(queued as u64);
                tracing::warn!(sink = lane.sink, queued, "store: records not written before exit");
            }
            ok
        });
        futures::future::join_all(flushes).await.into_iter().all(|ok| ok)
    }
}

/// Why a write failed, as the batcher needs to know it.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// Try the same batch again later (connection lost, database restarting, disk full).
    Retry(String),
    /// The batch can never be written: drop and count it.
    Reject(String),
}

#[async_trait]
pub(crate) trait Sink: Send {
    /// The `sink` label.
    fn name(&self) -> &'static str;
    /// Runs on a thread of its own (its writes block: a stalled disk must not hold up the
    /// other sinks).
    fn own_thread(&self) -> bool {
        false
    }
    async fn write(&mut self, batch: &[Arc<RequestRecord>]) -> Result<(), WriteError>;
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchOpts {
    pub size: usize,
    pub max_age: Duration,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// During an outage a failure is logged at most this often.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Writes one batch, retrying with exponential backoff until it is written or rejected.
async fn write_batch(sink: &mut dyn Sink, batch: &mut Vec<Arc<RequestRecord>>) {
    if batch.is_empty() {
        return;
    }
    let m = metrics();
    let name = sink.name();
    let mut backoff = RETRY_MIN;
    let mut outage: Option<(Instant, Instant)> = None; // (since, last log)
    loop {
        match sink.write(batch).await {
            Ok(()) => {
                m.store_written
                    .with_label_values(&[name, "requests"])
                    .inc_by(batch.len() as u64);
                if let Some((since, _)) = outage {
                    tracing::info!(
                        sink = name,
                        after_ms = since.elapsed().as_millis() as u64,
                        "store: writing again"
                    );
                }
                break;
            }
            Err(WriteError::Reject(e)) => {
                m.store_errors.with_label_values(&[name]).inc();
                m.store_dropped
                    .with_label_values(&[name, "requests", "rejected"])
                    .inc_by(batch.len() as u64);
                tracing::error!(sink = name, rows = batch.len(), error = %e, "store: batch rejected and dropped");
                break;
            }
            Err(WriteError::Retry(e)) => {
                m.store_errors.with_label_values(&[name]).inc();
                let now = Instant::now();
                match &mut outage {
                    None => {
                        tracing::warn!(sink = name, error = %e, "store: write failed; retrying (new records queue, then drop)");
                        outage = Some((now, now));
                    }
                    Some((_, last)) if now - *last >= OUTAGE_LOG_EVERY => {
                        tracing::warn!(sink = name, error = %e, "store: still failing");
                        *last = now;
                    }
                    Some(_) => {}
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
    batch.clear();
}

/// A sink's batcher: runs until every sender is gone.
///
/// It does not wait on the queue itself: a receiver parked in `recv()` would be woken by
/// every record, which costs the request path a cross-thread wake-up per request. It sleeps
/// instead until `max_age` passes or a producer sees a full batch waiting (or a flush is
/// asked for), then drains the queue in batches.
pub(crate) async fn drive(mut sink: Box<dyn Sink>, mut rx: mpsc::Receiver<Msg>, opts: BatchOpts, wake: Arc<Notify>) {
    let mut batch: Vec<Arc<RequestRecord>> = Vec::with_capacity(opts.size);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(opts.max_age) => {}
            _ = wake.notified() => {}
        }
        loop {
            match rx.try_recv() {
                Ok(Msg::Row(r)) => {
                    batch.push(r);
                    if batch.len() >= opts.size {
                        write_batch(&mut *sink, &mut batch).await;
                    }
                }
                Ok(Msg::Flush(done)) => {
                    write_batch(&mut *sink, &mut batch).await;
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    write_batch(&mut *sink, &mut batch).await;
                    return;
                }
            }
        }
        write_batch(&mut *sink, &mut batch).await;
    }
}

/// A sink with its queue's receiving end and its wake-up.
type LaneParts = (Box<dyn Sink>, mpsc::Receiver<Msg>, Arc<Notify>);

/// What runs in the store's background service.
struct Parts {
    lanes: Vec<LaneParts>,
    snapshots: Option<pg::Snapshots>,
    opts: BatchOpts,
}

/// Builds the recorder and the background service that drains it from the storage
/// settings. Nothing connects yet: that happens when the service starts (after Pingora
/// has daemonised). Fails on an unparsable database URL or an unwritable log file.
pub fn build(cfg: &StorageConfig) -> Result<(Recorder, Option<StoreService>), StoreError> {
    build_with_url(cfg, cfg.database_url())
}

/// [`build`] with the database URL given rather than read from the environment.
pub fn build_with_url(
    cfg: &StorageConfig,
    database_url: Option<String>,
) -> Result<(Recorder, Option<StoreService>), StoreError> {
    let opts = BatchOpts {
        size: cfg.batch_size,
        max_age: Duration::from_millis(cfg.flush_interval_ms),
    };
    let mut recorder = Recorder::off();
    let mut parts = Parts {
        lanes: Vec::new(),
        snapshots: None,
        opts,
    };
    let mut add = |sink: Box<dyn Sink>| {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let wake = Arc::new(Notify::new());
        recorder.lanes.push(Lane {
            sink: sink.name(),
            tx,
            wake: wake.clone(),
            batch_size: cfg.batch_size,
            dropped_full: metrics()
                .store_dropped
                .with_label_values(&[sink.name(), "requests", "queue_full"]),
        });
        parts.lanes.push((sink, rx, wake));
    };
    if let Some(url) = database_url {
        let db = pg::Db::new(&url).map_err(|e| match e {
            pg::DbError::Url(source) => StoreError::Url {
                var: cfg.database_url_env.clone(),
                source,
            },
            pg::DbError::Pool(e) => StoreError::Pool(e),
        })?;
        if cfg.snapshot_interval_ms > 0 {
            parts.snapshots = Some(pg::Snapshots::new(
                db.clone(),
                Duration::from_millis(cfg.snapshot_interval_ms),
            ));
        }
        add(Box::new(pg::PgSink::new(db)));
    }
    if let Some(path) = &cfg.request_log_file {
        let sink = jsonl::JsonlSink::open(path, cfg.request_log_max_bytes, cfg.request_log_keep).map_err(|source| {
            StoreError::LogFile {
                path: path.display().to_string(),
                source,
            }
        })?;
        add(Box::new(sink));
    }
    let service = (!parts.lanes.is_empty()).then(|| StoreService {
        parts: std::sync::Mutex::new(Some(parts)),
        shared: std::sync::OnceLock::new(),
    });
    Ok((recorder, service))
}

/// The store's Pingora background service: the batchers and the snapshot task.
pub struct StoreService {
    parts: std::sync::Mutex<Option<Parts>>,
    shared: std::sync::OnceLock<Arc<Shared>>,
}

impl StoreService {
    /// Snapshots read the live upstreams through `shared`.
    pub fn attach(&self, shared: Arc<Shared>) {
        let _ = self.shared.set(shared);
    }
}

#[async_trait]
impl BackgroundService for StoreService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Shutdown is driven by the control service (flush, then exit), because requests
        // still draining after the signal keep producing records.
        let Some(parts) = self.parts.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut tasks = Vec::new();
        if let (Some(snap), Some(shared)) = (parts.snapshots, self.shared.get()) {
            tasks.push(tokio::spawn(snap.run(shared.clone())));
        }
        for (sink, rx, wake) in parts.lanes {
            if sink.own_thread() {
                let name = format!("store-{}", sink.name());
                let opts = parts.opts;
                let spawned = std::thread::Builder::new().name(name).spawn(move || {
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt.block_on(drive(sink, rx, opts, wake)),
                        Err(e) => tracing::error!(error = %e, "store: no runtime for a sink; its records are lost"),
                    }
                });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "store: cannot start a sink thread; its records are lost");
                }
            } else {
                tasks.push(tokio::spawn(drive(sink, rx, parts.opts, wake)));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
