//! The files the lab writes for each proxy pass that proxy's own check, for every scenario
//! and both `passive_health` values: `neurabalancer check`, `nginx -t` and `haproxy -c`, real
//! executables on real files. A proxy that is not installed (or not built) is skipped with a
//! printed note.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nb_lab::lab::procs::TempDir;
use nb_lab::lab::{self, configs, Target};
use nb_lab::scenario::{PassiveHealth, Scenario};

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf/scenarios")
}

/// Every scenario of `conf/scenarios`, each with `passive_health` on and off.
fn variants() -> Vec<Scenario> {
    let mut out = Vec::new();
    for (_, s) in lab::load_scenarios(&[scenarios_dir()]).expect("scenarios") {
        for passive in [PassiveHealth::On, PassiveHealth::Off] {
            let mut s = s.clone();
            s.passive_health = passive;
            out.push(s);
        }
    }
    out
}

/// (id, address) for each backend of `s`, on ports nothing listens on (the checks do not
/// connect).
fn servers(s: &Scenario) -> Vec<(String, SocketAddr)> {
    s.profiles()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p.id, SocketAddr::from(([127, 0, 0, 1], 9001 + i as u16))))
        .collect()
}

fn front() -> SocketAddr {
    "127.0.0.1:8000".parse().expect("addr")
}

fn describe(what: &str, s: &Scenario, out: &Output) -> String {
    format!(
        "{what} rejects the file for {} (passive_health {:?}): {}\n{}{}",
        s.name,
        s.passive_health,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `neurabalancer` next to `nb-bench` (as cargo builds them), if built.
fn neurabalancer() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_nb-bench")).parent()?;
    Some(dir.join("neurabalancer")).filter(|p| p.is_file())
}

#[test]
fn neurabalancer_accepts_its_files_with_passive_health_on_and_off() {
    let Some(bin) = neurabalancer() else {
        eprintln!("note: neurabalancer is not built next to nb-bench; its check is skipped");
        return;
    };
    for s in variants() {
        let dir = TempDir::new("nb-lab-fair").expect("temp dir");
        let upstreams = configs::neurabalancer_upstreams("round_robin", &s, &servers(&s));
        std::fs::write(dir.path().join("upstreams.yaml"), &upstreams).expect("write");
        let admin = "127.0.0.1:8001".parse().expect("addr");
        let main = dir.path().join("neurabalancer.yaml");
        std::fs::write(&main, configs::neurabalancer_main(front(), admin, dir.path())).expect("write");
        let out = Command::new(&bin)
            .arg("check")
            .arg("--config")
            .arg(&main)
            .output()
            .expect("run neurabalancer check");
        assert!(out.status.success(), "{}", describe("neurabalancer", &s, &out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        let off = upstreams.contains("consecutive_connect_failures: 0");
        assert_eq!(off, s.passive_health == PassiveHealth::Off, "{upstreams}");
    }
}

#[test]
fn nginx_accepts_its_files_with_passive_health_on_and_off() {
    let Some(bin) = Target::Nginx("least_conn".into()).peer_binary() else {
        eprintln!("note: nginx is not installed; nginx -t is skipped");
        return;
    };
    for s in variants() {
        for method in ["least_conn", "random_two"] {
            let dir = TempDir::new("nb-lab-fair").expect("temp dir");
            let conf = dir.path().join("nginx.conf");
            let text = configs::nginx_conf(method, front(), &servers(&s), dir.path(), &s);
            std::fs::write(&conf, &text).expect("write");
            let out = Command::new(&bin)
                .arg("-t")
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf)
                .output()
                .expect("run nginx -t");
            assert!(out.status.success(), "{}\n{text}", describe("nginx -t", &s, &out));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("[warn]"), "{}", describe("nginx -t warns", &s, &out));
        }
    }
}

#[test]
fn haproxy_accepts_its_files_with_passive_health_on_and_off() {
    let Some(bin) = Target::Haproxy("leastconn".into()).peer_binary() else {
        eprintln!("note: haproxy is not installed; haproxy -c is skipped");
        return;
    };
    for s in variants() {
        let dir = TempDir::new("nb-lab-fair").expect("temp dir");
        let cfg = dir.path().join("haproxy.cfg");
        let text = configs::haproxy_cfg("leastconn", front(), &servers(&s), &s);
        std::fs::write(&cfg, &text).expect("write");
        let out = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .expect("run haproxy -c");
        assert!(out.status.success(), "{}\n{text}", describe("haproxy -c", &s, &out));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("WARNING"),
            "{}\n{text}",
            describe("haproxy -c warns", &s, &out)
        );
    }
}
