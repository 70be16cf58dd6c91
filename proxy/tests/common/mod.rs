//! Integration-test harness: runs the real `neurabalancer` binary on free loopback ports
//! with configuration files in a temporary directory, and kills it when dropped.
#![allow(dead_code)]

pub mod model;
pub mod pg;
pub mod raw;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend_sim::{spawn, spawn_echo, BackendHandle, BackendSpec};

/// Runs the future `make` returns on a new thread, with a current-thread runtime of its own:
/// for work that must not wait on the caller's runtime (a `Drop`, a timed client kept apart
/// from the load) or that may panic without taking the caller down.
pub fn on_own_thread<F, Fut>(make: F) -> std::thread::JoinHandle<Fut::Output>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future,
    Fut::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(make())
    })
}

/// A port that was free a moment ago (the kernel does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Two distinct loopback addresses with ports that were free a moment ago: both are held
/// until both are chosen, so they cannot be the same port.
pub fn free_addrs() -> [SocketAddr; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("free port");
    [a.local_addr().expect("addr"), b.local_addr().expect("addr")]
}

pub struct Server<'a> {
    pub id: &'a str,
    pub addr: SocketAddr,
    pub weight: u32,
}

/// An upstreams file with one pool `api` routed from everywhere.
pub fn upstreams(strategy: &str, servers: &[Server<'_>], pool_extra: &str) -> String {
    let mut s = format!("pools:\n  api:\n    strategy: {strategy}\n{pool_extra}    servers:\n");
    for sv in servers {
        s.push_str(&format!(
            "      - {{ id: {}, address: \"{}\", weight: {} }}\n",
            sv.id, sv.addr, sv.weight
        ));
    }
    s.push_str("routes:\n  - { host: \"*\", path_prefix: /, pool: api }\n");
    s
}

pub fn servers(backends: &[BackendHandle]) -> Vec<Server<'_>> {
    backends
        .iter()
        .map(|b| Server {
            id: b.id(),
            addr: b.addr(),
            weight: 1,
        })
        .collect()
}

/// A fast active health check for tests.
pub const FAST_HC: &str = "    health_check: { path: /health, interval_ms: 100, timeout_ms: 300, rise: 2, fall: 2 }\n";

pub async fn backends(n: usize, delay: Duration) -> Vec<BackendHandle> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(
            spawn(BackendSpec::new(format!("backend-{i}")).with_delay(delay))
                .await
                .expect("backend"),
        );
    }
    v
}

pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub main_path: PathBuf,
    pub upstreams_path: PathBuf,
    pub log_path: PathBuf,
    pub client: reqwest::Client,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_neurabalancer")
}

impl Proxy {
    pub async fn start(upstreams_yaml: &str) -> Proxy {
        Self::start_with(upstreams_yaml, "", &[]).await
    }

    /// `main_extra` is appended to the main file; `env` is set for the process.
    pub async fn start_with(upstreams_yaml: &str, main_extra: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_under(&[], upstreams_yaml, main_extra, env).await
    }

    /// [`Proxy::start_with`], run by `wrapper` (a command that execs its arguments, such as
    /// `setsid` or `taskset -c 0`), so the pid is still the proxy's.
    pub async fn start_under(wrapper: &[&str], upstreams_yaml: &str, main_extra: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let [addr, admin] = free_addrs();
        let main_path = dir.path().join("neurabalancer.yaml");
        let upstreams_path = dir.path().join("upstreams.yaml");
        let log_path = dir.path().join("proxy.log");
        std::fs::write(&upstreams_path, upstreams_yaml).expect("write upstreams");
        std::fs::write(
            &main_path,
            format!(
                "listen: {addr}\nupstreams_file: upstreams.yaml\nadmin: {{ listen: {admin} }}\nthreads: 1\ntelemetry: {{ log_format: text }}\nserver: {{ upgrade_sock: \"{}\" }}\n{main_extra}",
                dir.path().join("upgrade.sock").display()
            ),
        )
        .expect("write main");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&main_path)
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env_remove("NEURABALANCER_ADMIN_TOKEN");
        // Recording only where a test asks for it (a DATABASE_URL set for the test run names
        // the server the PostgreSQL tests create their databases on).
        cmd.env_remove("DATABASE_URL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn neurabalancer");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        let p = Proxy {
            child: Some(child),
            addr,
            admin,
            dir,
            main_path,
            upstreams_path,
            log_path,
            client,
        };
        p.wait_live().await;
        p
    }

    async fn wait_live(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(self.admin_url("/health/live")).send().await {
                if r.status() == 200 && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("proxy did not start; log:\n{}", self.log());
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.admin_get("/health/ready").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("proxy not ready; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        match self.client.get(self.admin_url(path)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => panic!("admin GET {path}: {e}"),
        }
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let (_, body) = self.admin_get(path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    pub async fn reload(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.client.post(self.admin_url("/api/v1/reload"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("reload call");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// Replaces the upstreams file atomically (write + rename, as editors do).
    pub fn write_upstreams(&self, yaml: &str) {
        let tmp = self.dir.path().join(".upstreams.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write tmp");
        std::fs::rename(&tmp, &self.upstreams_path).expect("rename");
    }

    /// Starts a second process with `run --upgrade` on the same configuration; it takes over
    /// the listeners when this one gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> KillOnDrop {
        let log = std::fs::File::create(self.dir.path().join("upgrade.log")).expect("log file");
        Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&self.main_path)
            .arg("--upgrade")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .expect("spawn upgrade")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(st);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// One GET through the proxy: (status, x-backend-id).
    pub async fn get(&self, path: &str) -> (u16, String) {
        match self.client.get(self.url(path)).send().await {
            Ok(r) => {
                let id = backend_id(&r);
                let st = r.status().as_u16();
                let _ = r.bytes().await;
                (st, id)
            }
            Err(e) => (0, format!("error: {e}")),
        }
    }

    /// The servers list from the admin API.
    pub async fn servers(&self) -> Vec<serde_json::Value> {
        self.admin_json("/api/v1/servers")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn server(&self, id: &str) -> Option<serde_json::Value> {
        self.servers().await.into_iter().find(|s| s["id"] == id)
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }
}

/// A child process that is killed when the test ends, also when it fails.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes; returns the time it took.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The `x-backend-id` of a response ("" when absent).
pub fn backend_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-backend-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Asserts that every result of a load run is a 200.
pub fn assert_all_ok(results: &[(u16, String)]) {
    let failed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed, e.g. {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
}

/// Counts backend ids in a batch of responses.
pub fn tally(ids: &[(u16, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, id) in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// Runs `concurrency` client loops sending GETs until `stop` is set; returns every result.
pub fn load(
    proxy_url: String,
    concurrency: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u16, String)>> {
    load_opts(proxy_url, concurrency, stop, None)
}

/// Runs `concurrency` client loops against `url` for `secs` seconds; returns every result.
pub async fn run_for(url: String, concurrency: usize, secs: u64) -> Vec<(u16, String)> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = load(url, concurrency, stop.clone());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    run.await.expect("load")
}

/// One GET: (status, backend id), or (0, the error) when it failed at the transport level.
pub async fn get_once(client: &reqwest::Client, url: &str) -> (u16, String) {
    match client.get(url).send().await {
        Ok(r) => {
            let id = backend_id(&r);
            let st = r.status().as_u16();
            match r.bytes().await {
                Ok(_) => (st, id),
                Err(e) => (0, format!("body error: {e}")),
            }
        }
        Err(e) => (0, format!("error: {e}")),
    }
}

/// Like [`load`]; with `retries` set, a GET that failed at the transport level is sent once
/// more (as HTTP/1.1 clients may do for idempotent requests on a persistent connection the
/// server closed) and counted there.
pub fn load_opts(
    proxy_url: String,
    concurrency: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    retries: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
) -> tokio::task::JoinHandle<Vec<(u16, String)>> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .build()
            .expect("client");
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let client = client.clone();
            let url = proxy_url.clone();
            let stop = stop.clone();
            let retries = retries.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut r = get_once(&client, &url).await;
                    if let (0, Some(n)) = (r.0, retries.as_ref()) {
                        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        r = get_once(&client, &url).await;
                    }
                    out.push(r);
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("load task"));
        }
        all
    })
}

/// Sends signal `sig` (`STOP`, `CONT`, `HUP`, ...) to process `pid`.
pub fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}
