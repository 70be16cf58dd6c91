//! The fleet file: several backends described in YAML.
//!
//! ```yaml
//! backends:
//!   - { id: backend-1, listen: "127.0.0.1:8001", delay_ms: 5, status: 200 }
//! ```
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so that a typo such as
//! `delay: 5` fails loudly instead of silently simulating a zero delay. The
//! schema is separate from [`BackendSpec`] so it can use file-friendly units
//! and grow new sections without touching the library API.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use serde::Deserialize;

use crate::backend::{spawn, BackendHandle};
use crate::spec::BackendSpec;

/// A parsed and validated fleet file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The backends to start, in order.
    pub backends: Vec<BackendEntry>,
}

/// One backend of a fleet file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    /// Backend id (must be unique in the file).
    pub id: String,
    /// Listen address; defaults to `127.0.0.1:0`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Per-request delay in milliseconds; defaults to 0.
    #[serde(default)]
    pub delay_ms: u64,
    /// Status of non-health responses; defaults to 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Padding added to response bodies; defaults to 0.
    #[serde(default)]
    pub body_bytes: usize,
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
    /// A status is not a valid HTTP status code.
    #[error("backend {id:?}: invalid status code {status}")]
    InvalidStatus {
        /// The backend.
        id: String,
        /// The offending code.
        status: u16,
    },
}

impl FleetConfig {
    /// Parses and validates a fleet file's contents.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let cfg: Self = serde_yaml::from_str(yaml)?;
        cfg.validate()?;
        Ok(cfg)
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

    fn validate(&self) -> Result<(), ConfigError> {
        let mut ids = HashSet::new();
        for b in &self.backends {
            if !ids.insert(b.id.as_str()) {
                return Err(ConfigError::DuplicateId(b.id.clone()));
            }
            if StatusCode::from_u16(b.status).is_err() {
                return Err(ConfigError::InvalidStatus {
                    id: b.id.clone(),
                    status: b.status,
                });
            }
        }
        Ok(())
    }
}

impl From<&BackendEntry> for BackendSpec {
    fn from(e: &BackendEntry) -> Self {
        BackendSpec::new(e.id.clone())
            .with_listen(e.listen)
            .with_delay(Duration::from_millis(e.delay_ms))
            .with_status(e.status)
            .with_body_bytes(e.body_bytes)
    }
}

/// Starts every backend of `cfg`. If one fails, those already started are
/// stopped and the error names the failing backend.
pub async fn spawn_fleet(cfg: &FleetConfig) -> io::Result<Vec<BackendHandle>> {
    let mut handles = Vec::with_capacity(cfg.backends.len());
    for entry in &cfg.backends {
        let handle = spawn(entry.into())
            .await
            .map_err(|err| io::Error::new(err.kind(), format!("backend {} on {}: {err}", entry.id, entry.listen)))?;
        handles.push(handle);
    }
    Ok(handles)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn default_status() -> u16 {
    200
}
