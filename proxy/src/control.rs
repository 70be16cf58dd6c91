//! The control plane: reloads (file watch, SIGHUP, admin API), the health checker, and the
//! graceful-shutdown drain. It runs as a Pingora background service so that it starts after
//! any daemon fork, on its own runtime, off the request path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::sync::{broadcast, mpsc};

use crate::config::{self, ConfigErrors, LoadedConfig, MainConfig};
use crate::metrics::metrics;
use crate::state::{ConfigState, ReloadRecord, Shared};
use crate::upstream::Upstreams;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    File,
    Signal,
    Api,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "sighup",
            Trigger::Api => "api",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub version: u64,
    pub hash: String,
    pub restart_required: Vec<String>,
    /// Both files were as running: nothing was applied and nothing restarted.
    pub unchanged: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Main-file keys that only take effect at start (`upstreams_file` and `ml` apply on reload).
fn restart_only_changes(old: &MainConfig, new: &MainConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    check("listen", old.listen != new.listen);
    check("admin", old.admin != new.admin);
    check("threads", old.threads != new.threads);
    check("server", old.server != new.server);
    check("telemetry", old.telemetry != new.telemetry);
    check("storage", old.storage != new.storage);
    check("http", old.http != new.http);
    out
}

/// Re-reads both files and applies them, or keeps the running configuration and records
/// why not. Blocking (file reads, host-name resolution): call it off async runtimes'
/// worker threads (`spawn_blocking`).
pub fn reload(shared: &Shared, trigger: Trigger) -> Result<Applied, ConfigErrors> {
    let _serial = shared.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
    let current = shared.config.load_full();
    let loaded = match config::load(&current.loaded.main_path) {
        Ok(l) => l,
        Err(errors) => {
            metrics().config_reloads.with_label_values(&["error"]).inc();
            tracing::error!(trigger = trigger.as_str(), errors = %errors, "reload rejected; keeping the running configuration");
            let mut next = (*current).clone();
            next.last_reload = Some(ReloadRecord {
                at_unix_ms: unix_ms(),
                trigger: trigger.as_str(),
                result: "error",
                errors: errors.0.clone(),
                restart_required: Vec::new(),
            });
            shared.config.store(Arc::new(next));
            return Err(errors);
        }
    };
    if loaded.hash == current.loaded.hash && loaded.upstreams == current.loaded.upstreams {
        // The files say what is running (and their host names still resolve to the same
        // addresses): a no-op, so frequent reloads neither bump the version nor disturb the
        // health checker.
        metrics().config_reloads.with_label_values(&["unchanged"]).inc();
        tracing::debug!(
            trigger = trigger.as_str(),
            version = current.version,
            "configuration unchanged"
        );
        let mut next = (*current).clone();
        next.last_reload = Some(ReloadRecord {
            at_unix_ms: unix_ms(),
            trigger: trigger.as_str(),
            result: "unchanged",
            errors: Vec::new(),
            restart_required: Vec::new(),
        });
        shared.config.store(Arc::new(next));
        return Ok(Applied {
            version: current.version,
            hash: current.loaded.hash.clone(),
            restart_required: Vec::new(),
            unchanged: true,
        });
    }
    let restart_required = restart_only_changes(&current.loaded.main, &loaded.main);
    if !restart_required.is_empty() {
        tracing::warn!(keys = ?restart_required, "changed settings take effect after a restart");
    }
    let (upstreams, added) = Upstreams::build(&loaded.upstreams, Some(&shared.upstreams.load()));
    shared.upstreams.store(Arc::new(upstreams));
    let version = current.version + 1;
    let hash = loaded.hash.clone();
    // Keep the running process settings: only the upstreams part and `ml` (which the
    // scorer reads at every refresh, and the pools got with the upstreams) were applied.
    let effective = LoadedConfig {
        main: MainConfig {
            upstreams_file: loaded.main.upstreams_file.clone(),
            ml: loaded.main.ml.clone(),
            ..current.loaded.main.clone()
        },
        ..loaded
    };
    shared.config.store(Arc::new(ConfigState {
        loaded: effective,
        version,
        last_reload: Some(ReloadRecord {
            at_unix_ms: unix_ms(),
            trigger: trigger.as_str(),
            result: "success",
            errors: Vec::new(),
            restart_required: restart_required.clone(),
        }),
    }));
    shared.generation.send_modify(|g| *g += 1);
    metrics().config_reloads.with_label_values(&["success"]).inc();
    tracing::info!(trigger = trigger.as_str(), version, hash = %hash, new_servers = added.len(), "configuration applied");
    Ok(Applied {
        version,
        hash,
        restart_required,
        unchanged: false,
    })
}

/// Runs [`reload`] on the blocking pool.
pub async fn reload_async(shared: Arc<Shared>, trigger: Trigger) -> Result<Applied, ConfigErrors> {
    match tokio::task::spawn_blocking(move || reload(&shared, trigger)).await {
        Ok(r) => r,
        Err(e) => Err(ConfigErrors(vec![config::ConfigError {
            file: String::new(),
            line: None,
            key: String::new(),
            reason: format!("reload task failed: {e}"),
        }])),
    }
}

/// [`config::digest`] of both files' current bytes (through symlinks), or `None` when one is
/// unreadable.
fn files_digest(paths: &[PathBuf; 2]) -> Option<String> {
    Some(config::digest(
        &std::fs::read(&paths[0]).ok()?,
        &std::fs::read(&paths[1]).ok()?,
    ))
}

fn watched_files(shared: &Shared) -> [PathBuf; 2] {
    let c = shared.config.load();
    [c.loaded.main_path.clone(), c.loaded.main.upstreams_file.clone()]
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// How long file events are coalesced: editors write a file in several steps.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Safety net for filesystems without change events.
const POLL: Duration = Duration::from_millis(1000);

/// Watches the directories of both files (not the files: editors replace them by rename and
/// Kubernetes swaps a `..data` symlink) and reloads when their content changes. Content is
/// compared by digest, so a rejected file is reported once, not on every event.
async fn watch_files(shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = match notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "file events unavailable; polling the configuration every second");
            None
        }
    };
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    // Start from what was loaded, so a change made while the process started is not missed.
    let mut last = Some(shared.config.load().loaded.hash.clone());
    let mut poll = tokio::time::interval(POLL);
    loop {
        let files = watched_files(&shared);
        let want: BTreeSet<PathBuf> = files.iter().map(|f| parent(f)).collect();
        if let Some(w) = watcher.as_mut() {
            for d in want.difference(&dirs) {
                if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
                }
            }
            for d in dirs.difference(&want) {
                let _ = w.unwatch(d);
            }
        }
        dirs = want;
        tokio::select! {
            ev = rx.recv() => {
                if ev.is_none() { return; }
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = poll.tick() => {}
        }
        let now = files_digest(&watched_files(&shared));
        if now.is_some() && now != last {
            last = now;
            let _ = reload_async(shared.clone(), Trigger::File).await;
            // The upstreams path may have changed with the main file.
            last = files_digest(&watched_files(&shared)).or(last);
        }
    }
}

async fn on_sighup(shared: Arc<Shared>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let _ = reload_async(shared.clone(), Trigger::Signal).await;
    }
}

/// How long a graceful exit waits for the store to write what it holds.
const STORE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// After shutdown starts (listeners closed), exit as soon as in-flight requests are done
/// instead of sleeping out Pingora's whole grace period; Pingora still ends the process at
/// the end of the grace period if they never finish.
async fn drain_then_exit(shared: Arc<Shared>, mut shutdown: ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
    tracing::info!(
        inflight = crate::proxy::inflight(&shared),
        "shutting down: draining in-flight requests"
    );
    let mut idle_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if crate::proxy::inflight(&shared) == 0 {
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            // Requests already read from the socket get a moment to register.
            if since.elapsed() >= Duration::from_millis(200) {
                break;
            }
        } else {
            idle_since = None;
        }
    }
    if shared.recorder.is_on() {
        if shared.recorder.flush(STORE_FLUSH_TIMEOUT).await {
            tracing::info!("request records flushed");
        } else {
            tracing::warn!(timeout = ?STORE_FLUSH_TIMEOUT, "request records not all flushed before exit");
        }
    }
    tracing::info!("drained; exiting");
    std::process::exit(0);
}

/// Marks the process as draining as soon as Pingora starts a graceful terminate or hands
/// its sockets to an upgraded process (5 s before it stops accepting).
async fn watch_phases(shared: Arc<Shared>, mut phases: broadcast::Receiver<ExecutionPhase>) {
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::GracefulUpgradeTransferringFds) => {
                shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

pub struct Control {
    pub shared: Arc<Shared>,
    /// Pingora's execution phases, subscribed before the server runs.
    pub phases: std::sync::Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        let shared = self.shared.clone();
        let watch = tokio::spawn(watch_files(shared.clone()));
        let hup = tokio::spawn(on_sighup(shared.clone()));
        let health = tokio::spawn(crate::health::run(shared.clone(), shutdown.clone()));
        let phases = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take();
        let phases = phases.map(|rx| tokio::spawn(watch_phases(shared.clone(), rx)));
        drain_then_exit(shared.clone(), shutdown).await;
        if let Some(p) = phases {
            p.abort();
        }
        watch.abort();
        hup.abort();
        health.abort();
    }
}
