//! `nb-bench`: offer open-loop Poisson load to a URL and summarise latency.
//!
//! Kept thin on purpose: the method lives in [`backend_sim::bench`].
//! Exit status: 0 when the run completed (even with errors), 1 when the URL is
//! unreachable at the start or the JSON file cannot be written, 2 for bad
//! arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backend_sim::bench::{self, BenchError, LoadSpec};
use clap::Parser;
use hyper::Uri;

/// Open-loop HTTP load generator for NeuraBalancer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Target of every GET request (plain http).
    #[arg(long)]
    url: Uri,
    /// Mean request rate, in requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Measured duration, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unreported warm-up before the measured duration, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request deadline from the intended send time, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    deadline_ms: u64,
    /// Seed of the arrival schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name of the run in the summary (default: the URL).
    #[arg(long)]
    label: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let spec = match spec(&args) {
        Ok(spec) => spec,
        Err(msg) => return fail(&msg, 2),
    };
    let report = match bench::run(&spec).await {
        Ok(report) => report,
        Err(err @ BenchError::InvalidSpec(_)) => return fail(&err.to_string(), 2),
        Err(err) => return fail(&err.to_string(), 1),
    };
    let report = match args.label {
        Some(label) => report.with_label(label),
        None => report,
    };
    bench::print_table(std::slice::from_ref(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("a report serialises");
        if let Err(err) = std::fs::write(path, json + "\n") {
            return fail(&format!("cannot write {}: {err}", path.display()), 1);
        }
    }
    ExitCode::SUCCESS
}

fn spec(args: &Args) -> Result<LoadSpec, String> {
    let secs = |name: &str, value: f64| {
        Duration::try_from_secs_f64(value).map_err(|_| format!("--{name}: {value} is not a duration"))
    };
    Ok(LoadSpec {
        url: args.url.clone(),
        rate: args.rate,
        duration: secs("duration", args.duration)?,
        warmup: secs("warmup", args.warmup)?,
        deadline: Duration::from_millis(args.deadline_ms),
        seed: args.seed,
    })
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("nb-bench: error: {msg}");
    ExitCode::from(code)
}
