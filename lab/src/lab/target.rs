//! What `--strategies` names: one of our strategies, run by `neurabalancer`, or a peer
//! proxy (nginx, HAProxy) with one of its balancing methods.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Our strategies, as the proxy's `strategy:` key spells them.
pub const OUR_STRATEGIES: [&str; 8] = [
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "random",
    "p2c_ewma",
    "orca_least_delay",
    "prequal",
    "ml",
];

/// The model's reference that knows every backend's true queue and speed (greedy expected
/// completion); exists only in the discrete-event model.
pub const GREEDY: &str = "greedy";
/// The model's reference that also knows each request's service time at every backend.
pub const CLAIRVOYANT: &str = "clairvoyant";
/// The model's references, which no real proxy can run.
pub const REFERENCES: [&str; 2] = [GREEDY, CLAIRVOYANT];
/// Suffix of an ablation run: `STRATEGY@no_orca` runs `STRATEGY` with every backend's ORCA
/// load report turned off, so a strategy that reads reports shows what it owes them.
pub const NO_ORCA: &str = "@no_orca";
/// The model's former single reference (now [`GREEDY`]).
pub const ORACLE: &str = "oracle";

/// nginx's balancing methods that `--strategies` accepts, as `nginx:<method>`.
pub const NGINX_METHODS: [&str; 2] = ["least_conn", "random_two"];
/// HAProxy's balancing methods that `--strategies` accepts, as `haproxy:<method>`.
pub const HAPROXY_METHODS: [&str; 2] = ["leastconn", "roundrobin"];

/// One entry of `--strategies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `neurabalancer` with this pool strategy (or, in `--simulate`, the model's
    /// strategy of that name, the references included).
    Ours(String),
    /// nginx with `least_conn` or `random two least_conn`.
    Nginx(String),
    /// HAProxy with `balance leastconn` or `balance roundrobin`.
    Haproxy(String),
}

impl Target {
    /// The strategy name without an ablation suffix (`p2c_ewma` for `p2c_ewma@no_orca`).
    pub fn strategy(&self) -> &str {
        match self {
            Target::Ours(s) | Target::Nginx(s) | Target::Haproxy(s) => s.strip_suffix(NO_ORCA).unwrap_or(s),
        }
    }

    /// Whether the backends run with their ORCA load reports off (`@no_orca`).
    pub fn orca_off(&self) -> bool {
        matches!(self, Target::Ours(s) if s.ends_with(NO_ORCA))
    }

    /// Whether this is one of the model's references (`greedy`, `clairvoyant`).
    pub fn is_reference(&self) -> bool {
        matches!(self, Target::Ours(s) if REFERENCES.contains(&s.as_str()))
    }

    /// Whether this is a peer proxy rather than `neurabalancer`.
    pub fn is_peer(&self) -> bool {
        !matches!(self, Target::Ours(_))
    }

    /// The peer's executable, searched on `PATH` and in the sbin directories
    /// (where Debian installs nginx and HAProxy); `None` for our strategies or
    /// when it is not installed.
    pub fn peer_binary(&self) -> Option<PathBuf> {
        let name = match self {
            Target::Ours(_) => return None,
            Target::Nginx(_) => "nginx",
            Target::Haproxy(_) => "haproxy",
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ours(s) => f.write_str(s),
            Target::Nginx(m) => write!(f, "nginx:{m}"),
            Target::Haproxy(m) => write!(f, "haproxy:{m}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let check = |peer: &str, method: &str, known: &[&str]| {
            if known.contains(&method) {
                Ok(method.to_owned())
            } else {
                Err(format!(
                    "unknown {peer} method {method:?} (known: {})",
                    known.join(", ")
                ))
            }
        };
        match s.split_once(':') {
            Some(("nginx", m)) => check("nginx", m, &NGINX_METHODS).map(Target::Nginx),
            Some(("haproxy", m)) => check("haproxy", m, &HAPROXY_METHODS).map(Target::Haproxy),
            Some((peer, _)) => Err(format!("unknown peer {peer:?} (known: nginx, haproxy)")),
            None if s == ORACLE => Ok(Target::Ours(s.to_owned())),
            None if OUR_STRATEGIES.contains(&s.strip_suffix(NO_ORCA).unwrap_or(s)) || REFERENCES.contains(&s) => {
                Ok(Target::Ours(s.to_owned()))
            }
            None => Err(format!(
                "unknown strategy {s:?} (known: {}, each also as NAME{NO_ORCA}; {GREEDY} and {CLAIRVOYANT} \
                 (--simulate only); nginx:{}, haproxy:{})",
                OUR_STRATEGIES.join(", "),
                NGINX_METHODS.join("|"),
                HAPROXY_METHODS.join("|")
            )),
        }
    }
}

/// Parses a comma-separated `--strategies` list (duplicates are errors).
pub fn parse_list(s: &str) -> Result<Vec<Target>, String> {
    let mut out: Vec<Target> = Vec::new();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let t: Target = item.parse()?;
        if out.contains(&t) {
            return Err(format!("{t} is named twice"));
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err("no strategy named".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ours_and_peers_and_round_trips() {
        let list = parse_list("round_robin, p2c_ewma,nginx:random_two,haproxy:leastconn").expect("valid");
        let names: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["round_robin", "p2c_ewma", "nginx:random_two", "haproxy:leastconn"]
        );
        assert!(!list[0].is_peer() && list[2].is_peer());
        assert_eq!(list[0].peer_binary(), None);
        let ablation: Target = "p2c_ewma@no_orca".parse().expect("ablation");
        assert_eq!((ablation.strategy(), ablation.orca_off()), ("p2c_ewma", true));
        assert_eq!(ablation.to_string(), "p2c_ewma@no_orca");
        assert!(!list[1].orca_off() && !list[1].is_reference());
        assert!("clairvoyant".parse::<Target>().expect("reference").is_reference());
    }

    #[test]
    fn rejects_unknown_and_duplicate_names() {
        for bad in [
            "fastest",
            "nginx:ip_hash",
            "envoy:round_robin",
            "random,random",
            "",
            "greedy@no_orca",
            "nginx:least_conn@no_orca",
        ] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }
}
