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
use crate::strategy::StrategyKind;
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

/// Settings of the learned strategy; validated now so that files written for it stay valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    pub endpoint: String,
    pub refresh_ms: u64,
    pub timeout_ms: u64,
    pub fallback: StrategyKind,
}

impl Default for MlConfig {
    fn default() -> Self {
        MlConfig {
            endpoint: DEFAULT_ML_ENDPOINT.to_string(),
            refresh_ms: DEFAULT_ML_REFRESH_MS,
            timeout_ms: DEFAULT_ML_TIMEOUT_MS,
            fallback: StrategyKind::P2cEwma,
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
        if cfg.ml.refresh_ms == 0 {
            c.err("ml.refresh_ms", "must be positive");
        }
        if cfg.ml.timeout_ms == 0 {
            c.err("ml.timeout_ms", "must be positive");
        }
        let st = &cfg.storage;
        for (key, v) in [
            ("ml.refresh_ms", cfg.ml.refresh_ms),
            ("ml.timeout_ms", cfg.ml.timeout_ms),
            ("storage.flush_interval_ms", st.flush_interval_ms),
            ("storage.snapshot_interval_ms", st.snapshot_interval_ms),
        ] {
            check_max_ms(&mut c, key, v);
        }
        if !(cfg.ml.endpoint.starts_with("http://") || cfg.ml.endpoint.starts_with("https://")) {
            c.err("ml.endpoint", "must be an http:// or https:// URL");
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
    let upstreams = UpstreamsConfig::parse(&main.upstreams_file.display().to_string(), &up_text)?;
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
