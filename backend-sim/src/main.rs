//! `backend-sim`: run simulated backends until SIGINT/SIGTERM.
//!
//! Kept thin on purpose: everything testable lives in the library.

use std::error::Error;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backend_sim::{spawn, spawn_fleet, BackendSpec, FleetConfig};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Simulated HTTP backends for NeuraBalancer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Start the backends of this YAML fleet file (instead of a single one).
    #[arg(long, conflicts_with_all = ["listen", "id", "delay_ms", "status", "body_bytes"])]
    fleet: Option<PathBuf>,
    /// Listen address of the single backend.
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// Id of the single backend.
    #[arg(long, default_value = "backend-1")]
    id: String,
    /// Per-request delay of the single backend, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Status code of the single backend's responses.
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Padding bytes added to the single backend's response bodies.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let handles = match &args.fleet {
        Some(path) => spawn_fleet(&FleetConfig::load(path)?).await?,
        None => {
            let spec = BackendSpec::new(args.id)
                .with_listen(args.listen)
                .with_delay(Duration::from_millis(args.delay_ms))
                .with_status(args.status)
                .with_body_bytes(args.body_bytes);
            vec![spawn(spec).await?]
        }
    };
    for h in &handles {
        tracing::info!(id = h.id(), addr = %h.addr(), "backend listening");
    }
    backend_sim::shutdown_signal().await?;
    tracing::info!("shutting down");
    for h in &handles {
        h.stop().await;
    }
    Ok(())
}
