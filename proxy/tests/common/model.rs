//! The real `model-server` binary as a child process, serving a copy of the shipped model
//! (`model-server/models/scorer.onnx`) on a free loopback port; killed when dropped.
//!
//! The binary is the one cargo builds next to `neurabalancer` (`target/<profile>/`):
//! `cargo test --workspace` builds it, since `model-server` has integration tests of its
//! own. When it is missing (`cargo test -p neurabalancer` alone), it is built here once with
//! the cargo running the tests, for the same profile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{bin, free_port};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the proxy crate sits in the workspace")
        .to_path_buf()
}

/// The model the model server loads: the shipped default.
pub fn shipped_model() -> PathBuf {
    workspace().join("model-server/models/scorer.onnx")
}

/// The `model-server` executable, built for this profile if it is not there yet.
pub fn model_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(bin()).parent().expect("target directory");
        let exe = dir.join("model-server");
        if exe.is_file() {
            return exe;
        }
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace())
            .args(["build", "--offline", "-p", "model-server", "--bin", "model-server"]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        eprintln!("building model-server ({profile}) for the ml tests: {cmd:?}");
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            ok && exe.is_file(),
            "model-server is not built at {} (cargo test --workspace builds it; or cargo build -p model-server)",
            exe.display()
        );
        exe
    })
    .clone()
}

/// Waits (up to two minutes) for the shipped model to exist: the training pipeline writes it.
fn wait_for_model() -> PathBuf {
    let model = shipped_model();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !model.is_file() {
        assert!(
            Instant::now() < deadline,
            "{} does not exist (scripts/train_model.sh writes it)",
            model.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    model
}

pub struct ModelServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The model file it serves (a copy of the shipped one).
    pub model: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl ModelServer {
    /// Starts it and waits until it has loaded the model.
    pub async fn start() -> ModelServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("scorer.onnx");
        std::fs::copy(wait_for_model(), &model).expect("copy the model");
        let mut m = ModelServer {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            model,
            log: dir.path().join("model-server.log"),
            dir,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
        };
        m.spawn().await;
        m
    }

    /// Starts the process (again) on the same address and waits until it serves the model.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(model_server_bin())
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--model")
            .arg(&self.model)
            .current_dir(workspace())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn model-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.client.get(format!("{}/health", self.url())).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("model-server did not load its model; log:\n{}", self.log());
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, sig: &str) {
        super::send_signal(self.pid(), sig);
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /version`, as JSON.
    pub async fn version(&self) -> serde_json::Value {
        let r = self
            .client
            .get(format!("{}/version", self.url()))
            .send()
            .await
            .expect("GET /version");
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON")
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill();
    }
}
