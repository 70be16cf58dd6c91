//! Runtime upstreams: pools and the routing table, published as one immutable snapshot.

mod backend;
mod pool;

use std::collections::HashMap;
use std::sync::Arc;

pub use backend::{BackendStats, Failure, Health, Membership, ReportedLoad, Slot, NO_SLOT};
pub use pool::{Ejection, Leaving, Members, Pool, PoolIter, PoolSelector, PoolShared};

use crate::config::{RouteConfig, UpstreamsConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    fn parse(h: &str) -> Self {
        if h == "*" {
            HostMatch::Any
        } else if let Some(rest) = h.strip_prefix('*') {
            HostMatch::Suffix(rest.to_ascii_lowercase())
        } else {
            HostMatch::Exact(h.to_ascii_lowercase())
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Suffix(s) => host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s),
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Exact(h) => (2, h.len()),
            HostMatch::Suffix(s) => (1, s.len()),
            HostMatch::Any => (0, 0),
        }
    }
}

/// One routing rule: requests whose Host matches and whose path starts with `prefix`.
pub struct Route {
    host: HostMatch,
    /// Also the request's route class in records (bounded by the configuration).
    pub prefix: Arc<str>,
    pub pool: Arc<Pool>,
}

/// One published version of the upstreams: every request works on the snapshot it loaded.
pub struct Upstreams {
    pub pools: HashMap<String, Arc<Pool>>,
    routes: Vec<Route>,
}

/// Strips the port and a trailing dot from a Host header value.
fn host_only(host: &str) -> &str {
    let h = if host.starts_with('[') {
        // [v6]:port
        host.split_once(']').map(|(a, _)| &host[..a.len() + 1]).unwrap_or(host)
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    h.strip_suffix('.').unwrap_or(h)
}

impl Upstreams {
    /// Builds the snapshot for `cfg`, reusing (and updating in place) the pools of `prev`
    /// with the same name so their live state carries over. Returns the snapshot and the
    /// servers that are new (the health checker probes them before they take traffic).
    pub fn build(cfg: &UpstreamsConfig, prev: Option<&Upstreams>) -> (Upstreams, Vec<Arc<BackendStats>>) {
        let mut added = Vec::new();
        let mut pools = HashMap::new();
        for (name, pc) in &cfg.pools {
            let pool = match prev.and_then(|p| p.pools.get(name)) {
                Some(existing) => {
                    added.extend(existing.apply(pc));
                    existing.clone()
                }
                None => {
                    let p = Pool::new(name, pc);
                    if pc.health_check.is_some() {
                        added.extend(p.members().list.iter().cloned());
                    }
                    p
                }
            };
            pools.insert(name.clone(), pool);
        }
        if let Some(prev) = prev {
            for (name, p) in &prev.pools {
                if !pools.contains_key(name) {
                    for s in p.members().all() {
                        s.set_membership(Membership::Gone);
                    }
                }
            }
        }
        let mut routes: Vec<Route> = cfg
            .routes
            .iter()
            .filter_map(|r: &RouteConfig| {
                Some(Route {
                    host: HostMatch::parse(&r.host),
                    prefix: r.path_prefix.as_str().into(),
                    pool: pools.get(&r.pool)?.clone(),
                })
            })
            .collect();
        // Most specific first: exact host, then the longest wildcard suffix, then `*`; within
        // a host, the longest path prefix. The sort is stable, so equal routes keep file order.
        routes.sort_by(|a, b| {
            b.host
                .rank()
                .cmp(&a.host.rank())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        (Upstreams { pools, routes }, added)
    }

    /// The route (and so the pool) for a request, by Host header (port ignored) and path.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let host = host_only(host);
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path.starts_with(&*r.prefix))
    }

    /// Names of pools that at least one route leads to.
    pub fn routed_pools(&self) -> Vec<&Arc<Pool>> {
        let mut seen: Vec<&Arc<Pool>> = Vec::new();
        for r in &self.routes {
            if !seen.iter().any(|p| Arc::ptr_eq(p, &r.pool)) {
                seen.push(&r.pool);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_route_wins() {
        let text = "pools:\n  a: { servers: [ { id: x, address: 127.0.0.1:1 } ] }\n  b: { servers: [ { id: x, address: 127.0.0.1:2 } ] }\n  c: { servers: [ { id: x, address: 127.0.0.1:3 } ] }\n  d: { servers: [ { id: x, address: 127.0.0.1:4 } ] }\nroutes:\n  - { pool: a }\n  - { path_prefix: /api, pool: b }\n  - { host: \"*.example.com\", pool: c }\n  - { host: api.example.com, path_prefix: /v2, pool: d }\n";
        let cfg = UpstreamsConfig::parse("t", text).expect("valid");
        let (u, _) = Upstreams::build(&cfg, None);
        let name = |h: &str, p: &str| u.route(h, p).map(|r| r.pool.name.to_string()).unwrap_or_default();
        assert_eq!(name("other", "/x"), "a");
        assert_eq!(name("other:8080", "/api/x"), "b");
        assert_eq!(name("www.Example.com", "/api"), "c");
        assert_eq!(name("api.example.com:443", "/v2/q"), "d");
        assert_eq!(name("api.example.com", "/v1"), "c");
        assert_eq!(name("example.com", "/"), "a");
        assert_eq!(host_only("[::1]:8080"), "[::1]");
    }
}
