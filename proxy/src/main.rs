use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match neurabalancer::server::check(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, upgrade } => match neurabalancer::server::run(&config, upgrade) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
