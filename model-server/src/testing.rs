//! Helpers for tests and benchmarks, of this crate and of others (the proxy's ML client, the
//! lab): the model files of the repository and a model server on a free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{Config, Server};

/// How often a test server checks its model file: short, so reload tests run fast.
pub const TEST_WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// The shipped model, `model-server/models/scorer.onnx`.
pub fn shipped_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/scorer.onnx")
}

/// A second real model of the same contract and another version,
/// `model-server/tests/fixtures/scorer-previous.onnx`.
pub fn previous_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scorer-previous.onnx")
}

/// Starts a model server for `model_path` (which need not exist yet) on `127.0.0.1:0`,
/// watching the file every [`TEST_WATCH_INTERVAL`]. Returns once the model is loaded (or
/// failed to), with the bound address and the task serving it; abort the task to stop it.
pub async fn spawn_model_server(
    model_path: impl Into<PathBuf>,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let config = Config {
        model_path: model_path.into(),
        watch_interval: TEST_WATCH_INTERVAL,
    };
    Server::new(config).spawn(SocketAddr::from(([127, 0, 0, 1], 0))).await
}
