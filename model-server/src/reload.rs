//! The serving model and how it is replaced.
//!
//! Who writes what, in which order:
//!
//! - Requests only read: [`ModelSlot::current`] is an `ArcSwapOption` load, and a request keeps
//!   the `Arc<Model>` it started with to the end, so its answer names the version that scored it.
//! - Reloads (the file watcher and `POST /v1/reload`) are serialised by `reload_lock`. A reload
//!   reads the whole file, skips it when its bytes are those of the serving model
//!   (`unchanged`), else loads and checks it and scores a probe row, and only then swaps it in
//!   (`applied`). Any failure leaves the serving model in place (`error`), logged and counted.
//! - The watcher polls the file's [`Stamp`] (mtime, length, inode) and reloads when it differs
//!   from the last one seen. The stamp is taken *before* the file is read, so a write that
//!   races a load changes the stamp again and is picked up at the next poll. A missing or
//!   broken file at start is not fatal: the server answers 503 until a loadable file appears.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use crate::metrics::Metrics;
use crate::scorer::{self, Model, ModelError};

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new model serves.
    Applied { version: String },
    /// The file holds the serving model's bytes; nothing changed.
    Unchanged { version: String },
    /// The file could not be read, loaded or probed; the previous model (if any) still serves.
    Failed(ModelError),
}

impl ReloadOutcome {
    /// The `result` label of `model_server_reloads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied { .. } => "applied",
            ReloadOutcome::Unchanged { .. } => "unchanged",
            ReloadOutcome::Failed(_) => "error",
        }
    }
}

/// A file's identity for change detection; `None` when it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    pub fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

/// The model file and the model loaded from it.
pub struct ModelSlot {
    path: PathBuf,
    current: ArcSwapOption<Model>,
    /// Why the latest load failed, while no model serves (for `/health`).
    last_error: Mutex<Option<String>>,
    reload_lock: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl ModelSlot {
    pub fn new(path: PathBuf, metrics: Arc<Metrics>) -> ModelSlot {
        metrics.set_model(None);
        ModelSlot {
            path,
            current: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            reload_lock: Mutex::new(()),
            metrics,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The serving model.
    pub fn current(&self) -> Option<Arc<Model>> {
        self.current.load_full()
    }

    /// Why no model serves.
    pub fn no_model_reason(&self) -> String {
        self.last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| format!("no model loaded from {} yet", self.path.display()))
    }

    /// Re-reads the model file (blocking: file I/O and ONNX Runtime session creation);
    /// logs the outcome. Counting is the caller's: the load at start is not a reload.
    pub fn reload(&self) -> ReloadOutcome {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.load_and_swap();
        match &outcome {
            ReloadOutcome::Applied { version } => {
                tracing::info!(path = %self.path.display(), %version, "model loaded");
                self.set_error(None);
            }
            ReloadOutcome::Unchanged { version } => {
                tracing::debug!(path = %self.path.display(), %version, "model file unchanged");
            }
            ReloadOutcome::Failed(e) => {
                let serving = self.current().map(|m| m.version().to_string());
                tracing::warn!(error = %e, serving = ?serving, "model not (re)loaded; the serving model stays");
                self.set_error(Some(e.to_string()));
            }
        }
        outcome
    }

    /// [`ModelSlot::reload`], counted in `model_server_reloads_total`.
    pub fn reload_counted(&self) -> ReloadOutcome {
        let outcome = self.reload();
        self.metrics.reloads.with_label_values(&[outcome.label()]).inc();
        outcome
    }

    fn load_and_swap(&self) -> ReloadOutcome {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(source) => {
                return ReloadOutcome::Failed(ModelError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        if let Some(cur) = self.current() {
            if cur.digest() == scorer::digest(&bytes) {
                return ReloadOutcome::Unchanged {
                    version: cur.version().to_string(),
                };
            }
        }
        let model =
            match Model::from_bytes(&bytes, &self.path.display().to_string()).and_then(|m| m.probe().map(|()| m)) {
                Ok(m) => m,
                Err(e) => return ReloadOutcome::Failed(e),
            };
        let version = model.version().to_string();
        self.current.store(Some(Arc::new(model)));
        self.metrics.set_model(Some(&version));
        ReloadOutcome::Applied { version }
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = e;
        }
    }

    /// Polls the file every `interval` and reloads it when its stamp differs from `last`
    /// (the stamp taken before the previous load). Runs until dropped.
    pub async fn watch(self: Arc<Self>, mut last: Option<Stamp>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = Stamp::of(&self.path);
            if now == last {
                continue;
            }
            last = now;
            let slot = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || slot.reload_counted()).await {
                tracing::error!(error = %e, "model reload task failed");
                self.metrics.reloads.with_label_values(&["error"]).inc();
            }
        }
    }
}
