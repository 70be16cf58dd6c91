use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use model_server::{Config, Server, DEFAULT_LISTEN, DEFAULT_MODEL};

/// NeuraBalancer's model server: scores backends with the learned latency model.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// The ONNX model file; watched, and hot-swapped when it changes. It may appear later.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// How often the model file is checked for a change, in milliseconds.
    #[arg(long, default_value_t = 250)]
    watch_interval_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("model-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, model = %args.model.display(), "model-server listening");
    let server = Server::new(Config {
        model_path: args.model,
        watch_interval: Duration::from_millis(args.watch_interval_ms.max(1)),
    });
    tokio::select! {
        r = server.run(listener) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => { eprintln!("model-server: {e}"); ExitCode::FAILURE }
        },
        () = shutdown_signal() => ExitCode::SUCCESS,
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
