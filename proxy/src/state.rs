//! State shared by the proxy, admin and control services (each runs on its own Pingora
//! runtime; they meet only through these `Arc`s and channels).

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{ConfigError, LoadedConfig};
use crate::store::Recorder;
use crate::upstream::Upstreams;

/// What happened at the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub at_unix_ms: u64,
    pub trigger: &'static str,
    pub result: &'static str,
    pub errors: Vec<ConfigError>,
    /// Keys of the main file that changed but only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// The running configuration and the outcome of the latest reload.
#[derive(Debug, Clone)]
pub struct ConfigState {
    pub loaded: LoadedConfig,
    /// Increases with every applied configuration, starting at 1.
    pub version: u64,
    pub last_reload: Option<ReloadRecord>,
}

pub struct Shared {
    pub upstreams: ArcSwap<Upstreams>,
    pub config: ArcSwap<ConfigState>,
    pub inflight_requests: AtomicUsize,
    /// Set once a graceful shutdown or upgrade starts: responses then close their
    /// connection, so keep-alive clients move to a new one instead of meeting a closed socket.
    pub draining: AtomicBool,
    pub admin_token: Option<String>,
    /// Bumped after every applied reload; the health checker restarts its probes on it.
    pub generation: watch::Sender<u64>,
    /// Serialises reloads (never taken on the request path).
    pub reload_lock: std::sync::Mutex<()>,
    /// Request recording (off when no sink is configured).
    pub recorder: Recorder,
}

impl Shared {
    pub fn new(loaded: LoadedConfig, admin_token: Option<String>, recorder: Recorder) -> Arc<Shared> {
        let (upstreams, _) = Upstreams::build(&loaded.upstreams, None);
        Arc::new(Shared {
            upstreams: ArcSwap::from_pointee(upstreams),
            config: ArcSwap::from_pointee(ConfigState {
                loaded,
                version: 1,
                last_reload: None,
            }),
            inflight_requests: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            admin_token,
            generation: watch::Sender::new(1),
            reload_lock: std::sync::Mutex::new(()),
            recorder,
        })
    }
}
