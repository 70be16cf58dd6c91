//! `neurabalancer check`: exit 0 and `ok` on the shipped `conf/`, exit 1 with
//! line-numbered reasons on each broken example under `tests/fixtures/broken/`.
//!
//! Each broken example is a directory with its own `neurabalancer.yaml` and
//! `upstreams.yaml` and an `expected.txt` of two lines: the `file:line:` the error must
//! name, and a substring of its reason.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONF_MAIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/neurabalancer.yaml");
const CONF_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf");
const BROKEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/broken");

/// The kinds of broken example the acceptance names; each must have a directory.
const KINDS: [&str; 14] = [
    "health-check-host",
    "syntax",
    "unknown-key",
    "bad-address",
    "duplicate-id",
    "empty-pool",
    "missing-pool",
    "main-file-unknown-key",
    "listen-overlap",
    "route-host-port",
    "duplicate-route",
    "ms-overflow",
    "url-address",
    "bad-trusted-proxy",
];

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neurabalancer"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run neurabalancer check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn shipped_conf_is_ok() {
    let o = check(Path::new(CONF_MAIN));
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(text(&o.stdout).trim(), "ok", "{}", describe(&o));
    assert!(text(&o.stderr).trim().is_empty(), "{}", describe(&o));
}

struct Expected {
    /// `upstreams.yaml:20:`
    at: String,
    /// A substring of the reason.
    reason: String,
}

fn expected(dir: &Path) -> Expected {
    let path = dir.join("expected.txt");
    let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
    let at = lines
        .next()
        .unwrap_or_else(|| panic!("{}: no `file:line:` line", path.display()))
        .to_string();
    let reason = lines
        .next()
        .unwrap_or_else(|| panic!("{}: no reason line", path.display()))
        .to_string();
    let (file, line) = at
        .strip_suffix(':')
        .and_then(|s| s.rsplit_once(':'))
        .unwrap_or_else(|| panic!("{}: first line must be `file:line:`, got {at:?}", path.display()));
    assert!(
        !file.is_empty() && !file.contains('/'),
        "{}: want a file basename, got {file:?}",
        path.display()
    );
    assert!(
        line.parse::<usize>().is_ok_and(|l| l > 0),
        "{}: bad line number in {at:?}",
        path.display()
    );
    Expected { at, reason }
}

fn broken_examples() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(BROKEN_DIR)
        .expect("fixtures/broken exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_kind_of_broken_example_exists() {
    let have: BTreeSet<String> = broken_examples()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let want: BTreeSet<String> = KINDS.iter().map(|s| s.to_string()).collect();
    assert_eq!(have, want);
    for dir in broken_examples() {
        for f in ["neurabalancer.yaml", "upstreams.yaml", "expected.txt"] {
            assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
        }
    }
}

#[test]
fn each_broken_example_fails_with_its_line_and_reason() {
    let mut problems = Vec::new();
    let examples = broken_examples();
    assert!(!examples.is_empty());
    for dir in &examples {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let want = expected(dir);
        let o = check(&dir.join("neurabalancer.yaml"));
        let stderr = text(&o.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        // The error names the file by the path `check` resolved (the directory given, then
        // the basename), then the line.
        let at = format!("{}/{} ", dir.display(), want.at);
        if o.status.code() != Some(1) {
            problems.push(format!("{name}: want exit 1\n{}", describe(&o)));
        } else if text(&o.stdout).contains("ok") {
            problems.push(format!("{name}: printed ok\n{}", describe(&o)));
        } else if errors.len() != 1 {
            // Each example has exactly one defect, so a second error means it is broken in
            // an unintended way (or the checker reports spurious errors).
            problems.push(format!("{name}: want exactly one error\n{}", describe(&o)));
        } else if !(errors[0].starts_with(&at) && errors[0].contains(&want.reason)) {
            problems.push(format!("{name}: want `{at}...{}...`, got:\n{}", want.reason, errors[0]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The example whose main file is broken has a valid upstreams file, so the main file's
/// error is the one reported, not hidden behind another.
#[test]
fn main_file_example_has_a_valid_upstreams_file() {
    let path = Path::new(BROKEN_DIR).join("main-file-unknown-key/upstreams.yaml");
    let body = std::fs::read_to_string(&path).expect("read");
    neurabalancer::config::UpstreamsConfig::parse(&path.display().to_string(), &body).expect("valid upstreams file");
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every file in `conf/` is the main file, the upstreams file it names, or a backend-sim
/// fleet file under `conf/sim/` whose backends are servers of that upstreams file (same id,
/// same address), and together the fleets serve every configured server.
#[test]
fn every_conf_file_is_referenced_and_valid() {
    let conf = Path::new(CONF_DIR).canonicalize().expect("conf/");
    let loaded = neurabalancer::config::load(Path::new(CONF_MAIN)).unwrap_or_else(|e| panic!("conf/ is invalid:\n{e}"));
    let main = Path::new(CONF_MAIN).canonicalize().expect("main file");
    let ups = loaded
        .main
        .upstreams_file
        .canonicalize()
        .expect("the upstreams file named by the main file exists");
    assert!(
        ups.starts_with(&conf),
        "upstreams file {} is outside conf/",
        ups.display()
    );

    let servers: BTreeSet<(String, SocketAddr)> = loaded
        .upstreams
        .pools
        .values()
        .flat_map(|p| p.servers.iter().map(|s| (s.id.clone(), s.resolved)))
        .collect();
    assert!(!servers.is_empty());
    for r in &loaded.upstreams.routes {
        assert!(loaded.upstreams.pools.contains_key(&r.pool), "route to {}", r.pool);
    }

    let mut files = Vec::new();
    files_under(&conf, &mut files);
    files.sort();
    let sim = conf.join("sim");
    // Benchmark scenarios are validated by backend-sim's lab tests.
    let scenarios = conf.join("scenarios");
    let mut served = BTreeSet::new();
    let mut fleets = 0;
    for f in &files {
        let f = f.canonicalize().expect("canonical path");
        if f == main || f == ups || f.starts_with(&scenarios) {
            continue;
        }
        assert!(
            f.starts_with(&sim) && f.extension().is_some_and(|e| e == "yaml"),
            "{} is neither the main file, its upstreams file nor a fleet file under conf/sim/",
            f.display()
        );
        let fleet = backend_sim::FleetConfig::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!fleet.backends.is_empty(), "{}: no backends", f.display());
        for b in &fleet.backends {
            let key = (b.id.clone(), b.listen);
            assert!(
                servers.contains(&key),
                "{}: backend {} on {} is not a server of {}",
                f.display(),
                b.id,
                b.listen,
                ups.display()
            );
            served.insert(key);
        }
        fleets += 1;
    }
    assert!(fleets >= 1, "no fleet file under conf/sim/");
    let missing: Vec<_> = servers.difference(&served).collect();
    assert!(missing.is_empty(), "no fleet file serves {missing:?}");
}

#[test]
fn missing_files_fail_and_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("neurabalancer.yaml");
    let o = check(&main);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains(&format!("{}: cannot read", main.display())),
        "{}",
        describe(&o)
    );

    std::fs::write(
        &main,
        "listen: 127.0.0.1:18080\nupstreams_file: nowhere.yaml\nadmin: { listen: 127.0.0.1:18090 }\n",
    )
    .expect("write");
    let o = check(&main);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let ups = dir.path().join("nowhere.yaml");
    assert!(
        text(&o.stderr).contains(&format!("{}: cannot read", ups.display())),
        "{}",
        describe(&o)
    );
}

/// `check` only reads the files, so it can validate a change beside a running proxy that
/// holds the configured ports.
#[test]
fn check_does_not_bind_the_configured_ports() {
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("neurabalancer.yaml");
    std::fs::write(
        &main,
        format!(
            "listen: {}\nupstreams_file: upstreams.yaml\nadmin: {{ listen: {} }}\n",
            proxy.local_addr().expect("addr"),
            admin.local_addr().expect("addr")
        ),
    )
    .expect("write");
    std::fs::copy(
        Path::new(CONF_DIR).join("upstreams.yaml"),
        dir.path().join("upstreams.yaml"),
    )
    .expect("copy");
    let o = check(&main);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(text(&o.stdout).trim(), "ok");
}
