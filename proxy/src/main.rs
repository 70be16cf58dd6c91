use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// NeuraBalancer: a self-optimising HTTP load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, default_value = "conf/neurabalancer.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running instance (Pingora graceful upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the configuration files (like `nginx -t`): prints `ok` or the errors.
    Check {
        #[arg(long, default_value = "conf/neurabalancer.yaml")]
        config: PathBuf,
    },
    /// Apply the database migrations (the proxy also does this when it starts recording).
    Migrate {
        #[arg(long, default_value = "conf/neurabalancer.yaml")]
        config: PathBuf,
    },
    /// Write recent request records (the training_requests view) as JSONL, with the
    /// columns of the JSONL request log.
    ExportTraining {
        #[arg(long, default_value = "conf/neurabalancer.yaml")]
        config: PathBuf,
        /// How far back, e.g. `90s`, `30m`, `24h`, `7d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Output file; `-` for standard output.
        #[arg(long)]
        out: PathBuf,
    },
}

fn report<T>(r: Result<T, impl std::fmt::Display>, ok: impl FnOnce(T)) -> ExitCode {
    match r {
        Ok(v) => {
            ok(v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use neurabalancer::server;
    match cli.command {
        Command::Check { config } => report(server::check(&config), |_| println!("ok")),
        Command::Run { config, upgrade } => report(server::run(&config, upgrade), |()| {}),
        Command::Migrate { config } => report(server::migrate(&config), |applied| {
            println!("ok: {} migration(s) applied", applied.len())
        }),
        Command::ExportTraining { config, since, out } => report(server::export_training(&config, since, &out), |n| {
            eprintln!("exported {n} rows")
        }),
    }
}
