//! `backend-sim`: run simulated backends until SIGINT/SIGTERM.
//!
//! Kept thin on purpose: everything testable lives in the library.
//!
//! `--epoch-unix-ms` sets the origin of the fleet's phases, so that backends
//! started by another process (e.g. `nb-bench`) change on the load's clock;
//! by default phases count from the start of this process. `--seed` seeds the
//! random draws (over the fleet file's `seed:`), and `--stats-listen` serves
//! `GET /stats` for every backend at once, down ones included.

use std::error::Error;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use backend_sim::sim::epoch_from_unix_ms;
use backend_sim::{spawn, spawn_fleet_stats, spawn_profiles_seeded, BackendHandle, BackendSpec, FleetConfig};
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
    /// Origin of the fleet's phases, in Unix milliseconds (default: now).
    #[arg(long)]
    epoch_unix_ms: Option<u64>,
    /// Seed of the backends' random draws (default: the fleet file's `seed`, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Also serve `GET /stats` here: a JSON array of every backend's stats,
    /// answered even while a backend is down.
    #[arg(long)]
    stats_listen: Option<SocketAddr>,
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
    let epoch = match args.epoch_unix_ms {
        None => Instant::now(),
        Some(ms) => epoch_from_unix_ms(ms).ok_or_else(|| format!("--epoch-unix-ms {ms} lies before boot"))?,
    };
    let handles = match &args.fleet {
        Some(path) => {
            let cfg = FleetConfig::load(path)?;
            let seed = args.seed.unwrap_or(cfg.seed);
            spawn_profiles_seeded(&cfg.profiles(), epoch, seed).await?
        }
        None => {
            let spec = BackendSpec::new(args.id)
                .with_listen(args.listen)
                .with_delay(Duration::from_millis(args.delay_ms))
                .with_status(args.status)
                .with_body_bytes(args.body_bytes)
                .with_seed(args.seed.unwrap_or_default());
            vec![spawn(spec).await?]
        }
    };
    for h in &handles {
        log_start(h).await;
    }
    let stats = match args.stats_listen {
        Some(listen) => {
            let stats = spawn_fleet_stats(listen, &handles)
                .await
                .map_err(|err| format!("stats listener on {listen}: {err}"))?;
            tracing::info!(addr = %stats.addr(), backends = handles.len(), "fleet stats listening (GET /stats)");
            Some(stats)
        }
        None => None,
    };
    backend_sim::shutdown_signal().await?;
    tracing::info!("shutting down");
    if let Some(stats) = stats {
        stats.stop().await;
    }
    for h in &handles {
        h.stop().await;
    }
    Ok(())
}

/// One line per backend: where it is and what it simulates.
async fn log_start(h: &BackendHandle) {
    let p = h.profile();
    let state = if h.is_running().await {
        "backend listening"
    } else {
        "backend reserved its port, down until a phase brings it up"
    };
    tracing::info!(
        id = %h.id(),
        addr = %h.addr(),
        slots = p.slots,
        queue = p.queue,
        mean_service_ms = p.service.mean_ms(),
        classes = p.classes.len(),
        phases = p.phases.len(),
        joins_at_s = p.joined_at_s(),
        orca = p.orca,
        seed = h.seed(),
        "{state}"
    );
}
