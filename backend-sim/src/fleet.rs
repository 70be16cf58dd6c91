//! The fleet file: several backends described in YAML, each a [`Profile`].
//!
//! ```yaml
//! seed: 42                         # optional; default 0 (`backend-sim --seed` overrides it)
//! backends:
//!   - id: backend-1
//!     listen: "127.0.0.1:8001"     # optional; default 127.0.0.1 on a free port
//!     slots: 8                     # default 64
//!     queue: 100                   # default 1024
//!     service: { dist: exponential, mean_ms: 10 }
//!     classes: [ { path_prefix: /heavy, service: { dist: constant, ms: 200 } } ]
//!     errors: { fast_503: 0.01 }
//!     warmup: { duration_s: 30, factor: 3 }
//!     phases:
//!       - { at_s: 60, slowdown: 4 }
//!       - { at_s: 90, down: true }
//!       - { at_s: 100, down: false }
//!   - { id: pool, count: 3, listen: "127.0.0.1:8010", service: { dist: constant, ms: 5 } }
//! ```
//!
//! It is the same schema as a scenario's `fleet:` (`nb_lab::scenario`), so a
//! fleet can move between the two. An entry with `count: N` stands for N
//! identical backends `id-1` … `id-N`; with a fixed port P they listen on P …
//! P+N-1 (port 0: each on a free port). Phases are timed from the fleet's
//! epoch: `backend-sim --epoch-unix-ms`, else the start of the process.
//!
//! `seed` seeds every backend's random draws (with its id, see
//! [`crate::model`]): the same file and seed draw the same fates and service
//! times in every run.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so that a typo such as
//! `slot: 5` fails loudly instead of silently simulating the default.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use crate::backend::{spawn_profile_seeded, BackendHandle};
use crate::model::{Profile, DEFAULT_SEED};

/// The file as written, before `count` is expanded.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    seed: Option<u64>,
    backends: Vec<Profile>,
}

/// A parsed and validated fleet file, `count` expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Seed of the backends' random draws (`seed:`, default [`DEFAULT_SEED`]).
    pub seed: u64,
    /// The backends to start, in order.
    pub backends: Vec<BackendEntry>,
}

/// One backend of a fleet file.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendEntry {
    /// Backend id (unique in the file); the same as `profile.id`.
    pub id: String,
    /// Listen address (`127.0.0.1:0` unless given); the same as `profile.listen`.
    pub listen: SocketAddr,
    /// The backend's behaviour, `listen` set and `count` cleared.
    pub profile: Profile,
}

/// Why a fleet file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("invalid fleet file: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Two backends share an id.
    #[error("duplicate backend id {0:?}")]
    DuplicateId(String),
    /// A backend's values are invalid (see [`Profile::validate`]).
    #[error("{0}")]
    Invalid(String),
}

impl FleetConfig {
    /// Parses and validates a fleet file's contents.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let file: FleetFile = serde_yaml::from_str(yaml)?;
        let mut backends = Vec::new();
        for p in file.backends {
            expand(p, &mut backends)?;
        }
        let mut ids = HashSet::new();
        for b in &backends {
            if !ids.insert(b.id.as_str()) {
                return Err(ConfigError::DuplicateId(b.id.clone()));
            }
            b.profile.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(Self {
            seed: file.seed.unwrap_or(DEFAULT_SEED),
            backends,
        })
    }

    /// Reads, parses and validates a fleet file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&yaml)
    }

    /// The profiles of the fleet, in order.
    pub fn profiles(&self) -> Vec<Profile> {
        self.backends.iter().map(|b| b.profile.clone()).collect()
    }
}

/// Expands `count` as `nb_lab::scenario::Scenario::profiles` does, giving
/// consecutive ports to copies of a backend with a fixed port.
fn expand(p: Profile, out: &mut Vec<BackendEntry>) -> Result<(), ConfigError> {
    let listen = p.listen.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let entry = |id: String, listen: SocketAddr| {
        let mut profile = p.clone();
        profile.id.clone_from(&id);
        profile.listen = Some(listen);
        profile.count = None;
        BackendEntry { id, listen, profile }
    };
    let Some(n) = p.count else {
        out.push(entry(p.id.clone(), listen));
        return Ok(());
    };
    if n == 0 {
        return Err(ConfigError::Invalid(format!(
            "backend {}: count must be at least 1",
            p.id
        )));
    }
    for i in 1..=n {
        let mut addr = listen;
        if listen.port() != 0 {
            let port = u16::try_from(u32::from(listen.port()) + i - 1)
                .map_err(|_| ConfigError::Invalid(format!("backend {}: {n} ports from {listen} overflow", p.id)))?;
            addr.set_port(port);
        }
        out.push(entry(format!("{}-{i}", p.id), addr));
    }
    Ok(())
}

/// Starts every backend of `cfg` with its seed, phases timed from now.
pub async fn spawn_fleet(cfg: &FleetConfig) -> io::Result<Vec<BackendHandle>> {
    spawn_profiles_seeded(&cfg.profiles(), Instant::now(), cfg.seed).await
}

/// Starts backends with phases timed from `epoch` (e.g. a scenario's
/// `nb_lab::scenario::Scenario::profiles` with the load's start), seeded
/// [`DEFAULT_SEED`]. If one fails, those already started are stopped and the
/// error names the failing backend.
pub async fn spawn_profiles(profiles: &[Profile], epoch: Instant) -> io::Result<Vec<BackendHandle>> {
    spawn_profiles_seeded(profiles, epoch, DEFAULT_SEED).await
}

/// [`spawn_profiles`] with every backend seeded `seed` (each one's draws
/// also depend on its id, so backends of one fleet differ).
pub async fn spawn_profiles_seeded(profiles: &[Profile], epoch: Instant, seed: u64) -> io::Result<Vec<BackendHandle>> {
    let mut handles = Vec::with_capacity(profiles.len());
    for p in profiles {
        let where_ = p.listen.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let handle = spawn_profile_seeded(p.clone(), epoch, seed)
            .await
            .map_err(|err| io::Error::new(err.kind(), format!("backend {} on {where_}: {err}", p.id)))?;
        handles.push(handle);
    }
    Ok(handles)
}
