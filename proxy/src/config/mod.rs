//! Typed configuration: `neurabalancer.yaml` (process settings, read at start) and the
//! upstreams file it names (pools and routes, hot-reloaded).
//!
//! Both are parsed with `deny_unknown_fields`, so a typo is an error, not a silent default.
//! Defaults are the named constants below; every error carries file, line and key.

mod error;
mod lines;
mod runtime;
pub mod upstreams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ConfigErrors};
pub use runtime::{ensure_private_dir, euid, runtime_dir, upgrade_sock};
pub use upstreams::{HealthCheckConfig, OutlierConfig, PoolConfig, RouteConfig, ServerConfig, UpstreamsConfig};

use crate::cidr::Cidr;
use crate::strategy::{MlParams, StrategyKind};
use error::{file_error, yaml_error, Collector};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8090";
pub const DEFAULT_TOKEN_ENV: &str = "NEURABALANCER_ADMIN_TOKEN";
pub const DEFAULT_THREADS: usize = 2;
pub const DEFAULT_ML_ENDPOINT: &str = "http://127.0.0.1:8081";
pub const DEFAULT_ML_REFRESH_MS: u64 = 100;
pub const DEFAULT_ML_TIMEOUT_MS: u64 = 50;
pub const DEFAULT_DATABASE_URL_ENV: &str = "DATABASE_URL";
/// Containers get ~30 s between SIGTERM and SIGKILL; drain well inside that.
pub const DEFAULT_GRACE_PERIOD_S: u64 = 20;
pub const DEFAULT_KEEPALIVE_POOL_SIZE: usize = 256;
/// File name of the upgrade socket inside the private runtime directory (see [`upgrade_sock`]).
pub const UPGRADE_SOCK_NAME: &str = "upgrade.sock";
/// Upper bound of every `*_ms` setting: one day. Larger values are typos, and the back-off
/// arithmetic on them could overflow.
pub const MAX_MS: u64 = 86_400_000;

/// `neurabalancer.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainConfig {
    pub listen: SocketAddr,
    /// Relative to the directory of the main file.
    pub upstreams_file: PathBuf,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default)]
    pub ml: MlConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub http: HttpConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Name of the environment variable that holds the bearer token for mutating calls.
    pub token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: parse_const_addr(DEFAULT_ADMIN_LISTEN),
            token_env: DEFAULT_TOKEN_ENV.to_string(),
        }
    }
}

/// The learned strategy (`ml`): where the model server is, how often the scorer asks it for
/// every `ml` pool's curves, how decisions read them, and when a pool falls back to its
/// classic strategy. Applied on reload (the scorer reads it at every refresh; the decision
/// parameters reach the pools with the upstreams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    /// Base URL of the model server (`http://host:port`, optionally with a path prefix).
    pub endpoint: String,
    /// How often the scorer sends one batch of rows for every backend of every `ml` pool.
    pub refresh_ms: u64,
    /// The longest a scoring call (or a `/version` call) may take; a slower answer is a
    /// failure (`timeout`).
    pub timeout_ms: u64,
    /// The classic strategy that decides while scores are missing, stale, the circuit is
    /// open or the model server errs.
    pub fallback: StrategyKind,
    /// Share of decisions sent to a random cold candidate near the best (exploration).
    pub explore: f64,
    /// Cold candidates whose expected cost is within this fraction of the lowest tie.
    pub tie: f64,
    /// Send what backends report of their own load (ORCA queue) to the model; false zeroes
    /// those features (the ablation that shows how much of the model's skill they are).
    pub orca: bool,
    /// Consecutive failed calls that open the circuit breaker.
    pub circuit_failures: u32,
    /// How long an open circuit makes no call; the next refresh after it tries again.
    pub circuit_open_ms: u64,
    /// Scores older than this are not used (`stale_scores`); unset: 10 × `refresh_ms`, at
    /// least [`MIN_ML_STALE_MS`].
    pub stale_ms: Option<u64>,
}

pub const DEFAULT_ML_EXPLORE: f64 = crate::strategy::ml::DEFAULT_EXPLORE;
pub const DEFAULT_ML_TIE: f64 = crate::strategy::ml::DEFAULT_TIE;
pub const DEFAULT_ML_CIRCUIT_FAILURES: u32 = 3;
pub const DEFAULT_ML_CIRCUIT_OPEN_MS: u64 = 1_000;
/// The least default `stale_ms` (refreshes every 100 ms or less still get a second).
pub const MIN_ML_STALE_MS: u64 = 1_000;

impl Default for MlConfig {
    fn default() -> Self {
        MlConfig {
            endpoint: DEFAULT_ML_ENDPOINT.to_string(),
            refresh_ms: DEFAULT_ML_REFRESH_MS,
            timeout_ms: DEFAULT_ML_TIMEOUT_MS,
            fallback: StrategyKind::P2cEwma,
            explore: DEFAULT_ML_EXPLORE,
            tie: DEFAULT_ML_TIE,
            orca: true,
            circuit_failures: DEFAULT_ML_CIRCUIT_FAILURES,
            circuit_open_ms: DEFAULT_ML_CIRCUIT_OPEN_MS,
            stale_ms: None,
        }
    }
}

impl MlConfig {
    /// `stale_ms`, or its default: 10 × `refresh_ms`, at least [`MIN_ML_STALE_MS`].
    pub fn stale_ms(&self) -> u64 {
        self.stale_ms
            .unwrap_or_else(|| self.refresh_ms.saturating_mul(10).max(MIN_ML_STALE_MS))
    }

    /// The decision parameters every pool's `ml` strategy reads.
    pub fn params(&self) -> MlParams {
        MlParams {
            explore: self.explore,
            tie: self.tie,
            fallback: self.fallback,
            orca: self.orca,
        }
    }

    /// The endpoint without a trailing `/`, to which the API paths are appended.
    pub fn base_url(&self) -> &str {
        self.endpoint.trim_end_matches('/')
    }

    fn validate(&self, c: &mut Collector<'_>) {
        for (key, reason) in self.params().check() {
            c.err(format!("ml.{key}"), reason);
        }
        match self.endpoint.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") => c.err(
                "ml.endpoint",
                "https is not supported (the proxy is built without TLS): use http://",
            ),
            Ok(u) if u.scheme_str() != Some("http") || u.authority().is_none() => c.err(
                "ml.endpoint",
                "must be an http:// URL with a host (http://127.0.0.1:8081)",
            ),
            Ok(u) if u.query().is_some() || u.authority().is_some_and(|a| a.as_str().contains('@')) => {
                c.err("ml.endpoint", "must not carry a query or user info")
            }
            Ok(_) => {}
            Err(e) => c.err("ml.endpoint", format!("not a URL: {e}")),
        }
        for (key, v) in [
            ("refresh_ms", self.refresh_ms),
            ("timeout_ms", self.timeout_ms),
            ("circuit_open_ms", self.circuit_open_ms),
        ] {
            if v == 0 {
                c.err(format!("ml.{key}"), "must be positive");
            }
            check_max_ms(c, &format!("ml.{key}"), v);
        }
        if self.circuit_failures == 0 {
            c.err("ml.circuit_failures", "must be at least 1");
        }
        if let Some(s) = self.stale_ms {
            check_max_ms(c, "ml.stale_ms", s);
            // Scores are published a refresh plus the call (at most two timeouts with a
            // `GET /version`) after the previous ones: any less and every cycle would have a
            // moment of `stale_scores`.
            if s < self.refresh_ms.saturating_add(self.timeout_ms.saturating_mul(2)) {
                c.err(
                    "ml.stale_ms",
                    "must be at least ml.refresh_ms + 2 × ml.timeout_ms (scores are refreshed that often)",
                );
            }
        }
    }
}

/// Request recording. Off unless the database URL variable is set or a request log file
/// is named; either way it never slows or fails a request (records beyond the queue are
/// dropped and counted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Name of the environment variable holding the PostgreSQL URL; unset or empty: no
    /// database recording.
    pub database_url_env: String,
    /// JSONL request log (same columns as `export-training`); relative to the main file.
    pub request_log_file: Option<PathBuf>,
    /// The request log is rotated (`file.1`, `file.2`, ...) when it reaches this size.
    pub request_log_max_bytes: u64,
    /// Rotated request logs kept.
    pub request_log_keep: u32,
    /// Records waiting per sink; beyond it they are dropped and counted.
    pub queue_capacity: usize,
    /// Records per write (one `COPY` for PostgreSQL).
    pub batch_size: usize,
    /// Queued records are written at least this often (and as soon as a full batch waits).
    pub flush_interval_ms: u64,
    /// Backend snapshots into `backend_snapshots` (PostgreSQL only); 0: off.
    pub snapshot_interval_ms: u64,
}

pub const DEFAULT_REQUEST_LOG_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_REQUEST_LOG_KEEP: u32 = 5;
pub const DEFAULT_STORE_QUEUE: usize = 65_536;
pub const DEFAULT_STORE_BATCH: usize = 4_096;
pub const DEFAULT_STORE_FLUSH_MS: u64 = 200;
pub const DEFAULT_SNAPSHOT_MS: u64 = 1_000;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            database_url_env: DEFAULT_DATABASE_URL_ENV.to_string(),
            request_log_file: None,
            request_log_max_bytes: DEFAULT_REQUEST_LOG_MAX_BYTES,
            request_log_keep: DEFAULT_REQUEST_LOG_KEEP,
            queue_capacity: DEFAULT_STORE_QUEUE,
            batch_size: DEFAULT_STORE_BATCH,
            flush_interval_ms: DEFAULT_STORE_FLUSH_MS,
            snapshot_interval_ms: DEFAULT_SNAPSHOT_MS,
        }
    }
}

impl StorageConfig {
    /// The database URL from the configured environment variable, if set and not empty.
    pub fn database_url(&self) -> Option<String> {
        std::env::var(&self.database_url_env)
            .ok()
            .filter(|u| !u.trim().is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
}

/// Pingora's own server settings, with container-friendly defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// After SIGTERM: stop accepting, then wait at most this long for in-flight requests.
    pub grace_period_s: u64,
    /// Idle upstream connections kept per process.
    pub upstream_keepalive_pool_size: usize,
    /// Unix socket over which `run --upgrade` receives the listening sockets of the running
    /// instance (after it gets SIGQUIT). Unset: `upgrade.sock` in a private runtime directory
    /// (see [`upgrade_sock`]).
    pub upgrade_sock: Option<PathBuf>,
    /// Pass backends' ORCA `endpoint-load-metrics` headers on to clients (they are read
    /// either way, and removed by default: they describe the backend, not the response).
    pub forward_load_reports: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            grace_period_s: DEFAULT_GRACE_PERIOD_S,
            upstream_keepalive_pool_size: DEFAULT_KEEPALIVE_POOL_SIZE,
            upgrade_sock: None,
            forward_load_reports: false,
        }
    }
}

/// How the proxy treats what clients send: whom it believes about forwarding headers, how the
/// path is normalised before routing, and how long it waits on a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Peers (IPs or CIDRs) whose `X-Forwarded-*` and `X-Request-Id` are believed. Default
    /// none, as Envoy: every client could write them. As written in the file; `parse` turns
    /// it into `trusted_proxies`, so that each bad entry is an error at its own line.
    #[serde(rename = "trusted_proxies")]
    pub trusted_proxies_text: Vec<String>,
    #[serde(skip)]
    pub trusted_proxies: Vec<Cidr>,
    pub request_id: RequestIdMode,
    /// Route and forward the normalised path (see `path.rs`); false: the raw path.
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
    pub client_timeouts: ClientTimeouts,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            trusted_proxies_text: Vec::new(),
            trusted_proxies: Vec::new(),
            request_id: RequestIdMode::Generate,
            normalize_path: true,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Reject,
            client_timeouts: ClientTimeouts::default(),
        }
    }
}

/// Whose `X-Request-Id` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RequestIdMode {
    /// Kept from trusted proxies only; every other request gets a new id.
    #[default]
    Generate,
    /// A valid client id is kept from any peer.
    Keep,
}

/// `%2F` (and `%5C`, `\`) in a path, which backends may read as a separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400: the safest, and Envoy's recommendation.
    #[default]
    Reject,
    /// Left encoded: opaque to routing and dot-segment removal.
    Keep,
    /// Become `/` before dot segments are resolved (as nginx does).
    Decode,
}

/// nginx's client-side timeouts, with nginx's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTimeouts {
    /// `client_header_timeout`: the longest wait for the first byte of a new connection's
    /// request and between reads of a request header.
    pub header_read_ms: u64,
    /// `client_body_timeout`: the longest wait between two reads of a request body.
    pub body_read_ms: u64,
    /// `send_timeout`: the longest a write to the client may wait (a client that stops
    /// reading).
    pub send_ms: u64,
    /// `keepalive_timeout`: how long an idle keep-alive connection waits for its next request.
    pub keepalive_ms: u64,
}

pub const DEFAULT_HEADER_READ_MS: u64 = 60_000;
pub const DEFAULT_BODY_READ_MS: u64 = 60_000;
pub const DEFAULT_SEND_MS: u64 = 60_000;
pub const DEFAULT_KEEPALIVE_MS: u64 = 75_000;

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            header_read_ms: DEFAULT_HEADER_READ_MS,
            body_read_ms: DEFAULT_BODY_READ_MS,
            send_ms: DEFAULT_SEND_MS,
            keepalive_ms: DEFAULT_KEEPALIVE_MS,
        }
    }
}

fn default_threads() -> usize {
    DEFAULT_THREADS
}

fn parse_const_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8090)))
}

impl ServerSettings {
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_s)
    }
}

impl MainConfig {
    /// Parses and validates the main file; `upstreams_file` is resolved against `base_dir`.
    pub fn parse(file: &str, text: &str, base_dir: &Path) -> Result<Self, ConfigErrors> {
        let mut cfg: MainConfig = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
        if cfg.upstreams_file.is_relative() {
            cfg.upstreams_file = base_dir.join(&cfg.upstreams_file);
        }
        if let Some(f) = cfg.storage.request_log_file.as_mut().filter(|f| f.is_relative()) {
            *f = base_dir.join(&*f);
        }
        let mut c = Collector::duplicate_keys(file, text)?;
        if cfg.threads == 0 || cfg.threads > 256 {
            c.err("threads", "must be 1..=256");
        }
        if listeners_overlap(cfg.admin.listen, cfg.listen) {
            c.err(
                "admin.listen",
                format!(
                    "overlaps `listen: {}`: the admin API never shares the proxy port (same port on the same or a wildcard address)",
                    cfg.listen
                ),
            );
        }
        cfg.ml.validate(&mut c);
        let st = &cfg.storage;
        for (key, v) in [
            ("storage.flush_interval_ms", st.flush_interval_ms),
            ("storage.snapshot_interval_ms", st.snapshot_interval_ms),
        ] {
            check_max_ms(&mut c, key, v);
        }
        if st.batch_size == 0 {
            c.err("storage.batch_size", "must be at least 1");
        }
        if st.queue_capacity < st.batch_size {
            c.err("storage.queue_capacity", "must be at least storage.batch_size");
        }
        if st.flush_interval_ms == 0 {
            c.err("storage.flush_interval_ms", "must be positive");
        }
        if st.request_log_max_bytes < 4096 {
            c.err("storage.request_log_max_bytes", "must be at least 4096");
        }
        if cfg.server.grace_period_s == 0 {
            c.err("server.grace_period_s", "must be at least 1");
        }
        let mut nets = Vec::new();
        for (i, text) in cfg.http.trusted_proxies_text.iter().enumerate() {
            match text.parse::<Cidr>() {
                Ok(n) => nets.push(n),
                Err(e) => c.err(format!("http.trusted_proxies.{i}"), e),
            }
        }
        cfg.http.trusted_proxies = nets;
        let t = &cfg.http.client_timeouts;
        for (key, v) in [
            ("header_read_ms", t.header_read_ms),
            ("body_read_ms", t.body_read_ms),
            ("send_ms", t.send_ms),
            ("keepalive_ms", t.keepalive_ms),
        ] {
            if !(1..=MAX_MS).contains(&v) {
                c.err(format!("http.client_timeouts.{key}"), format!("must be 1..={MAX_MS}"));
            }
        }
        if !cfg.http.normalize_path && (cfg.http.merge_slashes || cfg.http.escaped_slashes != EscapedSlashes::Reject) {
            c.err(
                "http.normalize_path",
                "is false, so merge_slashes and escaped_slashes would have no effect",
            );
        }
        c.finish(cfg)
    }
}

/// Reports a `*_ms` value above [`MAX_MS`].
pub(crate) fn check_max_ms(c: &mut Collector<'_>, key: &str, v: u64) {
    if v > MAX_MS {
        c.err(key, format!("must be at most {MAX_MS} (one day)"));
    }
}

/// Whether two listening addresses would compete for the same socket: the same port on the
/// same IP, or on a wildcard address that covers the other one. A v4-mapped IPv6 address is
/// the IPv4 address it maps, and `[::]` covers IPv4 too (Linux binds it dual-stack by
/// default). Port 0 (any free port) never overlaps.
pub fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    use std::net::IpAddr;
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (x, y) = (canon(a.ip()), canon(b.ip()));
    let covers = |w: IpAddr, other: IpAddr| w.is_unspecified() && (w.is_ipv6() || other.is_ipv4());
    x == y || covers(x, y) || covers(y, x)
}

/// Both files, loaded and validated together, with their raw text's digest.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub main_path: PathBuf,
    pub main: MainConfig,
    pub upstreams: UpstreamsConfig,
    /// sha256 over both files' bytes: the config version shown by the admin API.
    pub hash: String,
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| file_error(&path.display().to_string(), format!("cannot read: {e}")))
}

/// Reads both files. Errors of the main file stop there (the upstreams path may be wrong);
/// otherwise every error of the upstreams file is returned.
/// The configuration version shown by the admin API and compared by the file watcher:
/// sha256 over both files' bytes, first 8 bytes in hex.
pub fn digest(main: &[u8], upstreams: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(main);
    h.update([0u8]);
    h.update(upstreams);
    hex::encode(&h.finalize()[..8])
}

pub fn load(main_path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let main_text = read(main_path)?;
    let base = main_path.parent().unwrap_or(Path::new("."));
    let main_name = main_path.display().to_string();
    let main = MainConfig::parse(&main_name, &main_text, base)?;
    let up_text = read(&main.upstreams_file)?;
    let mut upstreams = UpstreamsConfig::parse(&main.upstreams_file.display().to_string(), &up_text)?;
    // The `ml` strategy's decision parameters are the main file's; each pool carries them so
    // that they reach its strategy parameters with the rest of the pool's settings.
    for pool in upstreams.pools.values_mut() {
        pool.ml = main.ml.params();
    }
    let hash = digest(main_text.as_bytes(), up_text.as_bytes());
    Ok(LoadedConfig {
        main_path: main_path.to_path_buf(),
        main,
        upstreams,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_main_file_gets_defaults() {
        let c = MainConfig::parse(
            "m.yaml",
            "listen: 0.0.0.0:8080\nupstreams_file: up.yaml\n",
            Path::new("/etc/nb"),
        )
        .expect("valid");
        assert_eq!(c.threads, DEFAULT_THREADS);
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.upstreams_file, Path::new("/etc/nb/up.yaml"));
        assert_eq!(c.ml.fallback, StrategyKind::P2cEwma);
        assert_eq!(c.telemetry.log_format, LogFormat::Json);
        assert_eq!(c.http, HttpConfig::default());
        assert!(c.http.normalize_path && c.http.trusted_proxies.is_empty());
    }

    #[test]
    fn http_section_parses_and_every_bad_value_is_reported() {
        let c = MainConfig::parse(
            "m.yaml",
            "listen: 0.0.0.0:8080\nupstreams_file: u\nhttp:\n  trusted_proxies: [10.0.0.0/8, \"::1\"]\n  request_id: keep\n  merge_slashes: true\n  escaped_slashes: decode\n  client_timeouts: { header_read_ms: 300 }\n",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(c.http.trusted_proxies.len(), 2);
        assert!(c.http.trusted_proxies[1].contains("::1".parse().expect("ip")));
        assert_eq!(c.http.request_id, RequestIdMode::Keep);
        assert_eq!(c.http.escaped_slashes, EscapedSlashes::Decode);
        assert_eq!(c.http.client_timeouts.header_read_ms, 300);
        assert_eq!(c.http.client_timeouts.keepalive_ms, DEFAULT_KEEPALIVE_MS);

        let e = MainConfig::parse(
            "m.yaml",
            "listen: 0.0.0.0:8080\nupstreams_file: u\nhttp:\n  trusted_proxies:\n    - 10.0.0.0/33\n    - 10.0.0.0/8\n    - example.com\n",
            Path::new("."),
        )
        .expect_err("bad cidr");
        assert_eq!(
            e.to_string(),
            "m.yaml:5: http.trusted_proxies.0: `10.0.0.0/33`: prefix length must be 0..=32\n\
             m.yaml:7: http.trusted_proxies.2: `example.com` is not an IP address or CIDR (10.0.0.0/8, ::1)"
        );

        let e = MainConfig::parse(
            "m.yaml",
            "listen: 0.0.0.0:8080\nupstreams_file: u\nhttp:\n  normalize_path: false\n  escaped_slashes: keep\n  client_timeouts:\n    send_ms: 0\n    keepalive_ms: 86400001\n",
            Path::new("."),
        )
        .expect_err("bad values");
        let text = e.to_string();
        assert_eq!(e.0.len(), 3, "{text}");
        assert!(
            text.contains("m.yaml:7: http.client_timeouts.send_ms: must be 1..=86400000"),
            "{text}"
        );
        assert!(text.contains("m.yaml:8: http.client_timeouts.keepalive_ms: "), "{text}");
        assert!(text.contains("m.yaml:4: http.normalize_path: "), "{text}");
    }

    fn main_errs(text: &str) -> Vec<String> {
        match MainConfig::parse("m.yaml", text, Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn overlapping_listeners_are_an_error() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        for (x, y) in [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("127.0.0.1:80", "0.0.0.0:80"),
            ("[::1]:80", "[::]:80"),
            ("127.0.0.1:80", "[::]:80"),
            ("0.0.0.0:80", "[::]:80"),
            ("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
        ] {
            assert!(listeners_overlap(a(x), a(y)), "{x} {y}");
            assert!(listeners_overlap(a(y), a(x)), "{y} {x}");
        }
        for (x, y) in [
            ("127.0.0.1:80", "127.0.0.1:81"),
            ("127.0.0.1:80", "127.0.0.2:80"),
            ("[::1]:80", "0.0.0.0:80"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            assert!(!listeners_overlap(a(x), a(y)), "{x} {y}");
        }
        let e = main_errs("listen: 127.0.0.1:8080\nupstreams_file: u\nadmin:\n  listen: 0.0.0.0:8080\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("m.yaml:4: admin.listen: overlaps"), "{e:?}");
    }

    #[test]
    fn ms_values_are_bounded() {
        let e = main_errs("listen: 127.0.0.1:8080\nupstreams_file: u\nml:\n  refresh_ms: 86400001\nstorage:\n  flush_interval_ms: 18446744073709551615\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("m.yaml:4: ml.refresh_ms: must be at most 86400000"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("m.yaml:6: storage.flush_interval_ms: must be at most"),
            "{e:?}"
        );
        assert!(main_errs("listen: 127.0.0.1:8080\nupstreams_file: u\nml:\n  refresh_ms: 86400000\n").is_empty());
    }

    #[test]
    fn ml_section_defaults_every_key_and_its_decision_parameters() {
        let c =
            MainConfig::parse("m.yaml", "listen: 0.0.0.0:8080\nupstreams_file: u\n", Path::new(".")).expect("valid");
        let ml = &c.ml;
        assert_eq!(ml.endpoint, DEFAULT_ML_ENDPOINT);
        assert_eq!((ml.refresh_ms, ml.timeout_ms), (100, 50));
        assert_eq!(ml.fallback, StrategyKind::P2cEwma);
        assert_eq!((ml.explore, ml.tie, ml.orca), (0.02, 0.30, true));
        assert_eq!((ml.circuit_failures, ml.circuit_open_ms), (3, 1000));
        assert_eq!(ml.stale_ms, None);
        assert_eq!(ml.stale_ms(), MIN_ML_STALE_MS, "10 x 100 ms");
        assert_eq!(ml.params(), MlParams::default(), "the same defaults as the strategy's");

        let text = "listen: 0.0.0.0:8080\nupstreams_file: u\nml:\n  endpoint: http://scorer.internal:9000/nb/\n  refresh_ms: 500\n  timeout_ms: 80\n  fallback: prequal\n  explore: 0.05\n  tie: 0.2\n  orca: false\n  circuit_failures: 5\n  circuit_open_ms: 2000\n";
        let c = MainConfig::parse("m.yaml", text, Path::new(".")).expect("valid");
        let ml = &c.ml;
        assert_eq!(ml.base_url(), "http://scorer.internal:9000/nb");
        assert_eq!((ml.refresh_ms, ml.timeout_ms, ml.orca), (500, 80, false));
        assert_eq!((ml.circuit_failures, ml.circuit_open_ms), (5, 2000));
        assert_eq!(ml.stale_ms(), 5000, "10 x refresh_ms when that is above a second");
        assert_eq!(
            ml.params(),
            MlParams {
                explore: 0.05,
                tie: 0.2,
                fallback: StrategyKind::Prequal,
                orca: false,
            }
        );
        let c = MainConfig::parse(
            "m.yaml",
            "listen: 0.0.0.0:8080\nupstreams_file: u\nml: { stale_ms: 250 }\n",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(c.ml.stale_ms(), 250);
    }

    #[test]
    fn ml_errors_name_their_line_and_key() {
        let base = "listen: 127.0.0.1:8080\nupstreams_file: u\nml:\n";
        let cases = [
            (
                "  fallback: ml\n",
                "m.yaml:4: ml.fallback: must be a classic strategy, not `ml`",
            ),
            (
                "  fallback: fastest\n",
                "m.yaml:4: ml.fallback: unknown variant `fastest`",
            ),
            ("  explore: 0.9\n", "m.yaml:4: ml.explore: must be between 0 and 0.5"),
            ("  tie: -1\n", "m.yaml:4: ml.tie: must be between 0 and 1"),
            (
                "  circuit_failures: 0\n",
                "m.yaml:4: ml.circuit_failures: must be at least 1",
            ),
            (
                "  circuit_open_ms: 0\n",
                "m.yaml:4: ml.circuit_open_ms: must be positive",
            ),
            ("  timeout_ms: 0\n", "m.yaml:4: ml.timeout_ms: must be positive"),
            ("  refresh_ms: 0\n", "m.yaml:4: ml.refresh_ms: must be positive"),
            (
                "  refresh_ms: 200\n  stale_ms: 250\n",
                "m.yaml:5: ml.stale_ms: must be at least ml.refresh_ms + 2 × ml.timeout_ms",
            ),
            (
                "  stale_ms: 86400001\n",
                "m.yaml:4: ml.stale_ms: must be at most 86400000",
            ),
            (
                "  endpoint: https://127.0.0.1:8081\n",
                "m.yaml:4: ml.endpoint: https is not supported",
            ),
            (
                "  endpoint: 127.0.0.1:8081\n",
                "m.yaml:4: ml.endpoint: must be an http:// URL with a host",
            ),
            (
                "  endpoint: \"http://127.0.0.1:8081/?x=1\"\n",
                "m.yaml:4: ml.endpoint: must not carry a query",
            ),
            ("  endpoint: \"http://a b\"\n", "m.yaml:4: ml.endpoint: not a URL"),
            ("  orca: maybe\n", "m.yaml:4: ml.orca: invalid type"),
            (
                "  endpont: http://127.0.0.1:8081\n",
                "m.yaml:4: ml: unknown field `endpont`",
            ),
        ];
        for (section, want) in cases {
            let e = main_errs(&format!("{base}{section}"));
            assert_eq!(e.len(), 1, "{section}: {e:?}");
            assert!(e[0].starts_with(want), "{section}: got {e:?}, want {want}");
        }
        // Every error of the section at once.
        let e = main_errs(&format!("{base}  fallback: ml\n  explore: 1\n  circuit_failures: 0\n"));
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn every_pool_carries_the_ml_decision_parameters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("nb.yaml");
        std::fs::write(
            &main,
            "listen: 127.0.0.1:8080\nupstreams_file: up.yaml\nml: { explore: 0.1, tie: 0.3, fallback: least_connections }\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("up.yaml"),
            "pools:\n  a: { strategy: ml, servers: [ { id: x, address: 127.0.0.1:1 } ] }\n  b: { servers: [ { id: y, address: 127.0.0.1:2 } ] }\nroutes:\n  - { pool: a }\n",
        )
        .expect("write");
        let loaded = load(&main).expect("valid");
        for pool in loaded.upstreams.pools.values() {
            assert_eq!(
                pool.ml,
                MlParams {
                    explore: 0.1,
                    tie: 0.3,
                    fallback: StrategyKind::LeastConnections,
                    orca: true,
                }
            );
        }
    }

    #[test]
    fn unknown_and_bad_keys_are_errors_with_lines() {
        let e = MainConfig::parse(
            "m.yaml",
            "listen: 0.0.0.0:8080\nupstreams_file: u\nthreds: 4\n",
            Path::new("."),
        )
        .expect_err("unknown key");
        assert!(e.to_string().starts_with("m.yaml:3:"), "{e}");
        assert!(e.to_string().contains("threds"), "{e}");
        let e = MainConfig::parse("m.yaml", "listen: nope\nupstreams_file: u\n", Path::new(".")).expect_err("bad addr");
        assert!(e.to_string().starts_with("m.yaml:1:"), "{e}");
    }
}
