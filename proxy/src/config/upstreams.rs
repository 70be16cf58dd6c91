//! `upstreams.yaml`: pools of servers, their strategy and health checks, and the routes that
//! lead to them. Hot-reloaded; a file that fails any check is rejected whole.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check_max_ms;
use super::error::{yaml_error, Collector, ConfigErrors};
use crate::strategy::{MlParams, PrequalParams, StrategyKind};

pub const DEFAULT_STRATEGY: StrategyKind = StrategyKind::P2cEwma;
pub const DEFAULT_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 1000;
pub const DEFAULT_MAX_RETRIES: u32 = 2;
pub use crate::strategy::{DEFAULT_DECAY_MS as DEFAULT_EWMA_DECAY_MS, DEFAULT_FAILURE_PENALTY_MS};
pub const DEFAULT_HC_PATH: &str = "/health";
pub const DEFAULT_HC_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_HC_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_HC_HOST: &str = "localhost";
pub const DEFAULT_HC_RISE: u32 = 2;
pub const DEFAULT_HC_FALL: u32 = 2;
pub const MIN_HC_INTERVAL_MS: u64 = 50;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Any 5xx in a row: off by default, since any client can make a handler answer 500.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 0;
pub const DEFAULT_CONSECUTIVE_GATEWAY_FAILURES: u32 = 5;
pub const DEFAULT_CONSECUTIVE_CONNECT_FAILURES: u32 = 1;
/// Envoy's `max_ejection_percent` default; one server may always be ejected, never the last.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's `healthy_panic_threshold` default.
pub const DEFAULT_PANIC_THRESHOLD_PERCENT: u32 = 50;
/// How long servers removed by a reload keep serving while their replacements are checked.
pub const DEFAULT_REMOVED_DRAIN_MS: u64 = 10_000;
pub const MAX_REMOVED_DRAIN_MS: u64 = 3_600_000;
pub const DEFAULT_BASE_EJECTION_MS: u64 = 1_000;
pub const DEFAULT_MAX_EJECTION_MS: u64 = 30_000;

/// The whole upstreams file, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsConfig {
    pub pools: BTreeMap<String, PoolConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_strategy")]
    pub strategy: StrategyKind,
    /// Active HTTP checks; absent means servers are trusted until passive checks eject them.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// Extra attempts on another server after a connect failure (or, for idempotent
    /// requests, a reset before any response byte).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Decay time of the peak-EWMA latency estimate used by `p2c_ewma`, `orca_least_delay`
    /// and `prequal`.
    #[serde(default = "default_ewma_decay_ms")]
    pub ewma_decay_ms: u64,
    /// What a failed attempt (5xx, reset, timeout, refused connection) counts as in that
    /// latency estimate, so that a fast failure never looks like a fast answer.
    #[serde(default = "default_failure_penalty_ms")]
    pub failure_penalty_ms: u64,
    /// `prequal`'s parameters (read only by that strategy).
    #[serde(default)]
    pub prequal: PrequalParams,
    /// When fewer than this share of the pool's servers are healthy, route across every
    /// checked server that is not ejected, healthy or not (Envoy's panic threshold): a broken
    /// health path must not take a pool down whose servers still answer. 0 = never.
    #[serde(default = "default_panic_threshold_percent")]
    pub panic_threshold_percent: u32,
    /// Servers a reload removes keep serving until every server of the pool is healthy or
    /// this time passes, so replacing a pool's servers leaves no gap. 0 = leave at once.
    #[serde(default = "default_removed_drain_ms")]
    pub removed_drain_ms: u64,
    pub servers: Vec<ServerConfig>,
    /// The `ml` strategy's decision parameters: not a key of this file but the main file's
    /// `ml` section, copied into every pool by [`crate::config::load`].
    #[serde(skip)]
    pub ml: MlParams,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub id: String,
    /// `ip:port` or `host:port`; host names are resolved when the file is loaded.
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The resolved address, filled in by validation.
    #[serde(skip_deserializing, default = "unspecified_addr")]
    pub resolved: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default = "default_hc_path")]
    pub path: String,
    #[serde(default = "default_hc_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_hc_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive passes that make an unhealthy server healthy.
    #[serde(default = "default_hc_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy server unhealthy.
    #[serde(default = "default_hc_fall")]
    pub fall: u32,
    /// `Host` header of the check request; [`DEFAULT_HC_HOST`] when absent.
    #[serde(default)]
    pub host: Option<String>,
}

/// Passive checks: failures seen on real traffic eject a server for a back-off period that
/// doubles with each consecutive ejection (Envoy's outlier detection, nginx's `max_fails`).
/// A threshold of 0 turns its rule off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Gateway failures in a row: 502, 503, 504, resets and timeouts after the request was sent.
    pub consecutive_gateway_failures: u32,
    /// Any 5xx in a row, application 500s included (off by default).
    pub consecutive_5xx: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// At most this share of the pool's servers is ejected at once; one server may always be
    /// ejected in a pool of two or more, the last one never.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_gateway_failures: DEFAULT_CONSECUTIVE_GATEWAY_FAILURES,
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            consecutive_connect_failures: DEFAULT_CONSECUTIVE_CONNECT_FAILURES,
            base_ejection_ms: DEFAULT_BASE_EJECTION_MS,
            max_ejection_ms: DEFAULT_MAX_EJECTION_MS,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    pub connect_ms: u64,
    /// Longest wait for the next bytes of the response.
    pub read_ms: u64,
    pub write_ms: u64,
    /// How long an idle upstream keep-alive connection stays in the pool.
    pub idle_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            read_ms: DEFAULT_READ_TIMEOUT_MS,
            write_ms: DEFAULT_WRITE_TIMEOUT_MS,
            idle_ms: DEFAULT_IDLE_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `*`, an exact host name, or `*.example.com`.
    #[serde(default = "default_route_host")]
    pub host: String,
    #[serde(default = "default_route_prefix")]
    pub path_prefix: String,
    pub pool: String,
}

fn default_strategy() -> StrategyKind {
    DEFAULT_STRATEGY
}
fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}
fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
fn default_ewma_decay_ms() -> u64 {
    DEFAULT_EWMA_DECAY_MS
}
fn default_failure_penalty_ms() -> u64 {
    DEFAULT_FAILURE_PENALTY_MS
}
fn default_panic_threshold_percent() -> u32 {
    DEFAULT_PANIC_THRESHOLD_PERCENT
}
fn default_removed_drain_ms() -> u64 {
    DEFAULT_REMOVED_DRAIN_MS
}
fn default_hc_path() -> String {
    DEFAULT_HC_PATH.to_string()
}
fn default_hc_interval_ms() -> u64 {
    DEFAULT_HC_INTERVAL_MS
}
fn default_hc_timeout_ms() -> u64 {
    DEFAULT_HC_TIMEOUT_MS
}
fn default_hc_rise() -> u32 {
    DEFAULT_HC_RISE
}
fn default_hc_fall() -> u32 {
    DEFAULT_HC_FALL
}
fn default_route_host() -> String {
    "*".to_string()
}
fn default_route_prefix() -> String {
    "/".to_string()
}
fn unspecified_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

impl OutlierConfig {
    /// How many of `n` servers may be ejected at once.
    pub fn max_ejected(&self, n: usize) -> usize {
        let share = n * self.max_ejection_percent as usize / 100;
        share.max(1).min(n.saturating_sub(1))
    }
}

impl HealthCheckConfig {
    /// The `Host` header value of the probe.
    pub fn host_header(&self) -> &str {
        self.host.as_deref().unwrap_or(DEFAULT_HC_HOST)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Server ids become metric label values and log fields: keep them short and plain.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// A probe's `Host` header: a valid URI authority without user info (what Pingora's probe
/// request will carry), so a value that cannot be sent is refused at load, not at probe time.
fn valid_probe_host(host: &str) -> bool {
    !host.is_empty()
        && !host.contains('@')
        && http::HeaderValue::from_str(host).is_ok()
        && host.parse::<http::uri::Authority>().is_ok()
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A URL would otherwise reach the resolver as a host name and fail with a puzzling
    // "Name or service not known".
    if address.contains("://") {
        return Err(format!(
            "`{address}` is a URL: write host:port without a scheme (servers are spoken to in plain HTTP)"
        ));
    }
    if address.contains('/') {
        return Err(format!("`{address}` has a path: write host:port only"));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{address}` is not host:port with a port in 0..=65535"));
    }
    match address.to_socket_addrs() {
        Ok(mut it) => it.next().ok_or_else(|| format!("`{address}` resolves to no address")),
        Err(e) => Err(format!("cannot resolve `{address}`: {e}")),
    }
}

impl UpstreamsConfig {
    /// Parses and validates `text` (the contents of `file`).
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigErrors> {
        if text.trim().is_empty() {
            return Err(super::error::file_error(
                file,
                "empty file: `pools` and `routes` are required",
            ));
        }
        let mut cfg: UpstreamsConfig = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let mut c = Collector::duplicate_keys(file, text)?;
        cfg.validate(&mut c);
        c.finish(cfg)
    }

    fn validate(&mut self, c: &mut Collector<'_>) {
        if self.pools.is_empty() {
            c.err("pools", "at least one pool is required");
        }
        for (name, pool) in self.pools.iter_mut() {
            let at = format!("pools.{name}");
            if !valid_id(name) {
                c.err(&at, "pool names use letters, digits, '-', '_', '.', ':' (at most 64)");
            }
            pool.validate(&at, c);
        }
        if self.routes.is_empty() {
            c.err("routes", "at least one route is required");
        }
        // (host, path_prefix) -> index of the first route with it.
        let mut seen: HashMap<(String, &str), usize> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes.{i}");
            if !self.pools.contains_key(&r.pool) {
                c.err(format!("{at}.pool"), format!("route to missing pool `{}`", r.pool));
            }
            if !r.path_prefix.starts_with('/') {
                c.err(format!("{at}.path_prefix"), "must start with '/'");
            }
            if r.host.is_empty()
                || r.host.contains('/')
                || (r.host.contains('*') && r.host != "*" && !r.host.starts_with("*."))
            {
                c.err(format!("{at}.host"), "must be `*`, a host name or `*.domain`");
            } else if r.host.contains(':') {
                // Routing compares the Host header without its port, so this route could
                // never match.
                c.err(
                    format!("{at}.host"),
                    "must not include a port: routes match the host name only (ports are ignored)",
                );
            }
            // Host names compare case-insensitively, so differently-cased hosts collide too.
            match seen.entry((r.host.to_ascii_lowercase(), r.path_prefix.as_str())) {
                Entry::Occupied(e) => c.err(
                    at.clone(),
                    format!(
                        "duplicate of routes.{} (same host `{}` and path_prefix `{}`): only the first would ever match",
                        e.get(),
                        r.host,
                        r.path_prefix
                    ),
                ),
                Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
        }
    }
}

impl PoolConfig {
    fn validate(&mut self, at: &str, c: &mut Collector<'_>) {
        if self.servers.is_empty() {
            c.err(format!("{at}.servers"), "empty pool: at least one server is required");
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, s) in self.servers.iter_mut().enumerate() {
            let sat = format!("{at}.servers.{i}");
            if !valid_id(&s.id) {
                c.err(
                    format!("{sat}.id"),
                    "ids use letters, digits, '-', '_', '.', ':' (at most 64)",
                );
            } else if !ids.insert(s.id.clone()) {
                c.err(format!("{sat}.id"), format!("duplicate id `{}`", s.id));
            }
            match resolve(&s.address) {
                Ok(a) if a.port() == 0 => c.err(format!("{sat}.address"), "port 0 is not a valid server port"),
                Ok(a) => {
                    s.resolved = a;
                    if !addrs.insert(a) {
                        c.err(
                            format!("{sat}.address"),
                            format!("duplicate address `{a}` in this pool"),
                        );
                    }
                }
                Err(e) => c.err(format!("{sat}.address"), format!("bad address: {e}")),
            }
            if s.weight == 0 || s.weight > MAX_WEIGHT {
                c.err(format!("{sat}.weight"), format!("weight must be 1..={MAX_WEIGHT}"));
            }
        }
        if let Some(hc) = &self.health_check {
            let h = format!("{at}.health_check");
            if !hc.path.starts_with('/') {
                c.err(format!("{h}.path"), "must start with '/'");
            } else if hc.path.parse::<http::uri::PathAndQuery>().is_err() {
                c.err(
                    format!("{h}.path"),
                    "not a valid request path (spaces, control characters and '#' must be percent-encoded)",
                );
            }
            if let Some(host) = &hc.host {
                if !valid_probe_host(host) {
                    c.err(
                        format!("{h}.host"),
                        "must be a host name or address with an optional port, as in a Host header",
                    );
                }
            }
            if hc.interval_ms < MIN_HC_INTERVAL_MS {
                c.err(
                    format!("{h}.interval_ms"),
                    format!("must be at least {MIN_HC_INTERVAL_MS}"),
                );
            }
            if hc.timeout_ms == 0 {
                c.err(format!("{h}.timeout_ms"), "must be positive");
            }
            check_max_ms(c, &format!("{h}.interval_ms"), hc.interval_ms);
            check_max_ms(c, &format!("{h}.timeout_ms"), hc.timeout_ms);
            if hc.rise == 0 {
                c.err(format!("{h}.rise"), "must be at least 1");
            }
            if hc.fall == 0 {
                c.err(format!("{h}.fall"), "must be at least 1");
            }
        }
        let t = &self.timeouts;
        for (k, v) in [
            ("connect_ms", t.connect_ms),
            ("read_ms", t.read_ms),
            ("write_ms", t.write_ms),
            ("idle_ms", t.idle_ms),
        ] {
            if v == 0 {
                c.err(format!("{at}.timeouts.{k}"), "must be positive");
            }
            check_max_ms(c, &format!("{at}.timeouts.{k}"), v);
        }
        let o = &self.outlier_detection;
        if o.base_ejection_ms == 0 || o.max_ejection_ms < o.base_ejection_ms {
            c.err(
                format!("{at}.outlier_detection"),
                "need 0 < base_ejection_ms <= max_ejection_ms",
            );
        }
        if o.max_ejection_percent > 100 {
            c.err(
                format!("{at}.outlier_detection.max_ejection_percent"),
                "must be 0..=100",
            );
        }
        if self.panic_threshold_percent > 100 {
            c.err(format!("{at}.panic_threshold_percent"), "must be 0..=100");
        }
        if self.removed_drain_ms > MAX_REMOVED_DRAIN_MS {
            c.err(
                format!("{at}.removed_drain_ms"),
                format!("must be at most {MAX_REMOVED_DRAIN_MS} (one hour)"),
            );
        }
        check_max_ms(
            c,
            &format!("{at}.outlier_detection.base_ejection_ms"),
            o.base_ejection_ms,
        );
        check_max_ms(c, &format!("{at}.outlier_detection.max_ejection_ms"), o.max_ejection_ms);
        if self.ewma_decay_ms == 0 {
            c.err(format!("{at}.ewma_decay_ms"), "must be positive");
        }
        check_max_ms(c, &format!("{at}.ewma_decay_ms"), self.ewma_decay_ms);
        check_max_ms(c, &format!("{at}.failure_penalty_ms"), self.failure_penalty_ms);
        for (key, reason) in self.prequal.check() {
            c.err(format!("{at}.prequal.{key}"), reason);
        }
        if self.max_retries > 10 {
            c.err(format!("{at}.max_retries"), "must be 0..=10");
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.timeouts.connect_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_MS;

    const GOOD: &str = "pools:\n  api:\n    strategy: round_robin\n    servers:\n      - { id: a, address: 127.0.0.1:8001 }\n      - { id: b, address: 127.0.0.1:8002, weight: 2 }\nroutes:\n  - { host: \"*\", path_prefix: /, pool: api }\n";

    fn errs(text: &str) -> Vec<String> {
        match UpstreamsConfig::parse("u.yaml", text) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let c = UpstreamsConfig::parse("u.yaml", GOOD).expect("valid");
        let p = &c.pools["api"];
        assert_eq!(p.strategy, StrategyKind::RoundRobin);
        assert_eq!(p.servers[1].weight, 2);
        assert_eq!(p.servers[0].weight, 1);
        assert_eq!(p.servers[1].resolved, "127.0.0.1:8002".parse().expect("addr"));
        assert_eq!(p.max_retries, DEFAULT_MAX_RETRIES);
    }

    #[test]
    fn every_strategy_name_is_accepted_and_others_are_errors() {
        for kind in StrategyKind::ALL {
            let c = UpstreamsConfig::parse("u.yaml", &GOOD.replace("round_robin", kind.as_str()))
                .unwrap_or_else(|e| panic!("{kind}: {e:?}"));
            assert_eq!(c.pools["api"].strategy, kind);
        }
        let e = errs(&GOOD.replace("round_robin", "least_queue"));
        assert!(
            e.first()
                .is_some_and(|e| e.starts_with("u.yaml:3: ") && e.contains("orca_least_delay")),
            "{e:?}"
        );
    }

    #[test]
    fn each_kind_of_error_names_its_line() {
        let cases = [
            (
                GOOD.replace("strategy: round_robin", "strategy: round_robin\n    colour: red"),
                "u.yaml:4: ",
                "unknown field `colour`",
            ),
            (
                GOOD.replace("127.0.0.1:8002", "nowhere"),
                "u.yaml:6: pools.api.servers.1.address",
                "bad address",
            ),
            (
                GOOD.replace("id: b", "id: a"),
                "u.yaml:6: pools.api.servers.1.id",
                "duplicate id",
            ),
            (
                GOOD.replace("pool: api }", "pool: web }"),
                "u.yaml:8: routes.0.pool",
                "missing pool",
            ),
            (
                "pools:\n  api:\n    servers: []\nroutes:\n  - { pool: api }\n".to_string(),
                "u.yaml:3: pools.api.servers",
                "empty pool",
            ),
            (GOOD.replace("servers:\n", "servers:\n  - [\n"), "u.yaml:", ""),
            (
                GOOD.replace("weight: 2", "weight: 0"),
                "u.yaml:6: pools.api.servers.1.weight",
                "weight",
            ),
        ];
        for (text, prefix, needle) in cases {
            let e = errs(&text);
            assert!(!e.is_empty(), "expected an error for:\n{text}");
            assert!(
                e[0].starts_with(prefix) && e[0].contains(needle),
                "got {e:?}, want {prefix}..{needle}"
            );
        }
    }

    #[test]
    fn repeated_pools_are_an_error() {
        let text = GOOD.replace(
            "routes:",
            "  api:\n    servers: [ { id: z, address: 127.0.0.1:9 } ]\nroutes:",
        );
        let e = errs(&text);
        assert_eq!(e, vec!["u.yaml:7: pools.api: duplicate key".to_string()]);
    }

    #[test]
    fn health_check_host_and_path_must_be_sendable() {
        let with_hc = |hc: &str| {
            GOOD.replace(
                "strategy: round_robin",
                &format!("strategy: round_robin\n    health_check: {hc}"),
            )
        };
        assert_eq!(
            errs(&with_hc("{ path: /health, host: api.example.com:8080 }")),
            Vec::<String>::new()
        );
        let e = errs(&with_hc("{ path: /health, host: \"bad\\nhost\" }"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("u.yaml:4: pools.api.health_check.host: "), "{e:?}");
        let e = errs(&with_hc("{ path: \"/he alth\" }"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("u.yaml:4: pools.api.health_check.path: not a valid request path"),
            "{e:?}"
        );
    }

    #[test]
    fn shares_and_drain_time_are_bounded() {
        let with = |extra: &str| GOOD.replace("    servers:", &format!("    {extra}\n    servers:"));
        let cases = [
            (
                "outlier_detection: { max_ejection_percent: 101 }",
                "u.yaml:4: pools.api.outlier_detection.max_ejection_percent: must be 0..=100",
            ),
            (
                "panic_threshold_percent: 150",
                "u.yaml:4: pools.api.panic_threshold_percent: must be 0..=100",
            ),
            (
                "removed_drain_ms: 3600001",
                "u.yaml:4: pools.api.removed_drain_ms: must be at most 3600000",
            ),
        ];
        for (extra, want) in cases {
            let e = errs(&with(extra));
            assert_eq!(e.len(), 1, "{extra}: {e:?}");
            assert!(e[0].starts_with(want), "{extra}: {e:?}");
        }
        for ok in [
            "outlier_detection: { max_ejection_percent: 100 }",
            "panic_threshold_percent: 0",
            "removed_drain_ms: 0",
        ] {
            assert!(errs(&with(ok)).is_empty(), "{ok}");
        }
    }

    #[test]
    fn ejection_cap_keeps_one_server_and_allows_one_ejection() {
        let o = OutlierConfig::default();
        assert_eq!(o.max_ejected(1), 0, "never the last server");
        assert_eq!(o.max_ejected(2), 1);
        assert_eq!(o.max_ejected(3), 1);
        assert_eq!(o.max_ejected(25), 2);
        let all = OutlierConfig {
            max_ejection_percent: 100,
            ..o
        };
        assert_eq!(all.max_ejected(4), 3);
    }

    #[test]
    fn route_hosts_with_ports_and_duplicate_routes_are_errors() {
        let e = errs(&GOOD.replace("host: \"*\"", "host: \"h.example:28080\""));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("u.yaml:8: routes.0.host: must not include a port"),
            "{e:?}"
        );

        let text = format!("{GOOD}  - {{ host: \"*\", path_prefix: /, pool: api }}\n");
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("u.yaml:9: routes.1: duplicate of routes.0"), "{e:?}");
        // Same prefix on another host, or another prefix on the same host, is fine.
        let text = format!("{GOOD}  - {{ host: a.example, path_prefix: /, pool: api }}\n  - {{ host: \"*\", path_prefix: /v2, pool: api }}\n");
        assert!(errs(&text).is_empty());
    }

    #[test]
    fn ms_values_are_bounded_to_a_day() {
        let over = MAX_MS + 1;
        let cases = [
            ("timeouts:\n      read_ms: X\n", "pools.api.timeouts.read_ms"),
            ("ewma_decay_ms: X\n", "pools.api.ewma_decay_ms"),
            ("failure_penalty_ms: X\n", "pools.api.failure_penalty_ms"),
            (
                "health_check:\n      interval_ms: X\n",
                "pools.api.health_check.interval_ms",
            ),
            (
                "outlier_detection:\n      max_ejection_ms: X\n",
                "pools.api.outlier_detection.max_ejection_ms",
            ),
        ];
        for (extra, key) in cases {
            for v in [over.to_string(), u64::MAX.to_string()] {
                let text = GOOD.replace("    servers:", &format!("    {}    servers:", extra.replace('X', &v)));
                let e = errs(&text);
                assert_eq!(e.len(), 1, "{e:?}");
                assert!(e[0].contains(&format!("{key}: must be at most {MAX_MS}")), "{e:?}");
            }
            let text = GOOD.replace(
                "    servers:",
                &format!("    {}    servers:", extra.replace('X', &MAX_MS.to_string())),
            );
            assert!(errs(&text).is_empty(), "{text}");
        }
    }

    #[test]
    fn prequal_parameters_are_read_and_checked() {
        let with = |extra: &str| GOOD.replace("    servers:", &format!("    {extra}\n    servers:"));
        let text = with("prequal: { probes: 4, hot_quantile: 0.9, rif_window: 32, latency_window: 8 }");
        let cfg = UpstreamsConfig::parse("u.yaml", &text).expect("valid");
        let p = cfg.pools["api"].prequal;
        assert_eq!(
            (p.probes, p.hot_quantile, p.rif_window, p.latency_window),
            (4, 0.9, 32, 8)
        );
        assert_eq!(cfg.pools["api"].failure_penalty_ms, DEFAULT_FAILURE_PENALTY_MS);
        // Absent keys take the defaults.
        let cfg = UpstreamsConfig::parse("u.yaml", &with("prequal: { probes: 2 }")).expect("valid");
        assert_eq!(
            cfg.pools["api"].prequal,
            PrequalParams {
                probes: 2,
                ..PrequalParams::default()
            }
        );
        let e = errs(&with(
            "prequal: { probes: 0, hot_quantile: 0, rif_window: 1000, latency_window: 0 }",
        ));
        assert_eq!(e.len(), 4, "{e:?}");
        for key in ["probes", "hot_quantile", "rif_window", "latency_window"] {
            assert!(
                e.iter()
                    .any(|x| x.contains(&format!("pools.api.prequal.{key}: must be"))),
                "{key}: {e:?}"
            );
        }
        let e = errs(&with("prequal: { probe: 3 }"));
        assert!(e[0].contains("unknown field `probe`"), "{e:?}");
    }

    #[test]
    fn urls_as_server_addresses_name_the_mistake() {
        let e = errs(&GOOD.replace("127.0.0.1:8002", "http://127.0.0.1:8002"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("without a scheme"), "{e:?}");
        let e = errs(&GOOD.replace("127.0.0.1:8002", "127.0.0.1:8002/api"));
        assert!(e[0].contains("write host:port only"), "{e:?}");
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let text = GOOD.replace("id: b", "id: a").replace("pool: api }", "pool: web }");
        assert_eq!(errs(&text).len(), 2);
    }
}
