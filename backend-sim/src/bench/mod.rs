//! Open-loop load generation: the core of `nb-bench`.
//!
//! # Method
//!
//! * **Open loop, Poisson arrivals.** Send times are drawn up front from a
//!   Poisson process at [`LoadSpec::rate`]: exponential inter-arrival times
//!   from a ChaCha8 RNG seeded with [`LoadSpec::seed`], so the same seed gives
//!   the same schedule. Each request is started at its *intended* send time on
//!   its own task and never waits for an earlier one. A closed-loop client
//!   (N connections, each sending its next request when the previous answer
//!   arrives) slows down exactly when the server does, so it sends almost
//!   nothing while the server stalls and the stall vanishes from its
//!   percentiles ("coordinated omission"). Real users do not wait for each
//!   other; neither does this generator.
//! * **Latency from the intended send time.** If the generator itself falls
//!   behind (a late timer, a busy runtime), that lateness is part of what a
//!   user would have seen, so it is counted rather than hidden.
//! * **A deadline per request.** A request not fully answered within
//!   [`LoadSpec::deadline`] of its intended send time is dropped (its
//!   connection is closed) and counted as an error *at the deadline*: its
//!   latency is recorded as exactly the deadline. This bounds the number of
//!   requests in flight (about `rate × deadline`) and keeps a dead backend
//!   from stretching a run; the cost is that the latency tail is truncated at
//!   the deadline, which is why timeouts are reported separately.
//! * **Warm-up.** Requests whose intended send time falls in the first
//!   [`LoadSpec::warmup`] are sent (to open connections and warm caches) but
//!   not reported.
//! * **Offered vs achieved.** `offered_rps` is the rate of the schedule
//!   actually drawn for the measured window (it differs from the requested
//!   rate by Poisson noise, about `1/√n`); `achieved_rps` counts the requests
//!   that were really dispatched during that window. They differ only if the
//!   generator cannot keep up, which would make the run meaningless.
//!   `dispatch_lag_ms` shows how late requests were started: it is part of
//!   every latency and should stay far below them.
//!
//! The schedule runs on a blocking thread with `std::thread::sleep`, which
//! wakes within tens of microseconds, rather than on Tokio timers, which
//! round every wake-up up to the next millisecond and would add about 0.5 ms
//! of generator lateness to every measured latency.
//!
//! Responses are read to their end. The backend that served a request is read
//! from the `x-backend-id` header; non-2xx responses and connection errors
//! count as errors. The HTTP client is hyper's pooled client (HTTP/1.1,
//! keep-alive, no limit on idle connections per host), so concurrency grows to
//! whatever the open loop needs.

mod report;
mod table;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use report::{Kind, Outcome, Tally};
pub use report::{LatencySummary, Report};
pub use table::{format_table, print_table};

use crate::backend::BACKEND_ID_HEADER;

/// How long the reachability check before the warm-up may take at least (the
/// deadline is used if it is longer): a slow backend is not an unreachable one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// What load to offer, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// Target of every request (`GET`, plain `http://` only).
    pub url: Uri,
    /// Mean arrival rate of the Poisson schedule, in requests per second.
    pub rate: f64,
    /// Length of the measured window, after the warm-up.
    pub duration: Duration,
    /// Length of the unreported warm-up before the measured window.
    pub warmup: Duration,
    /// Per-request deadline, counted from the intended send time.
    pub deadline: Duration,
    /// Seed of the arrival schedule.
    pub seed: u64,
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The spec makes no sense (non-positive rate, zero duration, https, …).
    #[error("invalid load spec: {0}")]
    InvalidSpec(String),
    /// The check request before the warm-up got no HTTP response.
    #[error("{url} is unreachable: {reason}")]
    Unreachable {
        /// The target.
        url: Uri,
        /// What went wrong.
        reason: String,
    },
    /// The scheduler thread panicked.
    #[error("scheduler failed: {0}")]
    Scheduler(String),
}

impl LoadSpec {
    /// A spec with a 2 s warm-up, a 1 s deadline and seed 1.
    pub fn new(url: Uri, rate: f64, duration: Duration) -> Self {
        Self {
            url,
            rate,
            duration,
            warmup: Duration::from_secs(2),
            deadline: Duration::from_secs(1),
            seed: 1,
        }
    }

    /// Checks the spec; [`run`] calls this first.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |msg: String| Err(BenchError::InvalidSpec(msg));
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad(format!("rate must be a positive number, got {}", self.rate));
        }
        if self.duration.is_zero() {
            return bad("duration must be positive".into());
        }
        if self.deadline.is_zero() {
            return bad("deadline must be positive".into());
        }
        if self.url.scheme_str() != Some("http") || self.url.authority().is_none() {
            return bad(format!("url must be http://host[:port]/…, got {}", self.url));
        }
        Ok(())
    }
}

/// Runs the load described by `spec` and reports on the measured window.
///
/// Fails before sending any load if the spec is invalid or a first request
/// gets no HTTP response (any status will do). Once the load has started the
/// run always completes; errors are part of the report. Takes about
/// `warmup + duration + deadline`. Needs a Tokio runtime with the time and IO
/// drivers; a multi-threaded one is recommended at high rates.
pub async fn run(spec: &LoadSpec) -> Result<Report, BenchError> {
    spec.validate()?;
    let client = client();
    probe(&client, spec).await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let scheduler = {
        let (spec, client) = (spec.clone(), client.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || schedule(&spec, start, &client, &runtime, tx))
    };

    let window_start = start + spec.warmup;
    let mut tally = Tally::new(window_start, window_start + spec.duration);
    // Ends when the scheduler and every request task have dropped their sender.
    while let Some(outcome) = rx.recv().await {
        tally.add(outcome);
    }
    let offered = scheduler.await.map_err(|e| BenchError::Scheduler(e.to_string()))?;
    Ok(tally.into_report(spec, offered))
}

/// Sends the requests of the schedule, each at its intended time on its own
/// task; returns how many fell in the measured window.
fn schedule(
    spec: &LoadSpec,
    start: Instant,
    client: &HttpClient,
    runtime: &tokio::runtime::Handle,
    tx: mpsc::UnboundedSender<Outcome>,
) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let end = spec.warmup + spec.duration;
    let mut at = Duration::ZERO;
    let mut measured = 0;
    loop {
        // Inverse transform: 1 - u is in (0, 1], so the logarithm is finite.
        let u: f64 = rng.random();
        at += Duration::from_secs_f64(-(1.0 - u).ln() / spec.rate);
        if at >= end || tx.is_closed() {
            return measured;
        }
        let intended = start + at;
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let in_window = at >= spec.warmup;
        measured += u64::from(in_window);
        runtime.spawn(request(
            client.clone(),
            spec.url.clone(),
            intended,
            spec.deadline,
            in_window,
            tx.clone(),
        ));
    }
}

/// One request of the schedule; reports its outcome on `tx`.
async fn request(
    client: HttpClient,
    url: Uri,
    intended: Instant,
    deadline: Duration,
    measured: bool,
    tx: mpsc::UnboundedSender<Outcome>,
) {
    let dispatched = Instant::now();
    let lag = dispatched.saturating_duration_since(intended);
    if lag >= deadline {
        // The generator is so far behind that this request is already late:
        // count it without spending CPU on it, so an overload can recover.
        let _ = tx.send(Outcome {
            dispatched,
            lag,
            latency: deadline,
            measured,
            kind: Kind::Timeout,
        });
        return;
    }
    let due = tokio::time::Instant::from_std(intended + deadline);
    let kind = match tokio::time::timeout_at(due, exchange(&client, url)).await {
        Err(_elapsed) => Kind::Timeout,
        Ok(Err(err)) => Kind::Failed(err),
        Ok(Ok((status, backend))) => Kind::Response { status, backend },
    };
    let latency = Instant::now().saturating_duration_since(intended);
    let (kind, latency) = match kind {
        // A timer may fire a little late: whatever ran out counts at the deadline.
        Kind::Timeout => (Kind::Timeout, deadline),
        _ if latency > deadline => (Kind::Timeout, deadline),
        kind => (kind, latency),
    };
    // The receiver is gone only if `run` was cancelled.
    let _ = tx.send(Outcome {
        dispatched,
        lag,
        latency,
        measured,
        kind,
    });
}

/// Sends one `GET` and reads the whole response; returns its status and the
/// backend that answered.
async fn exchange(client: &HttpClient, url: Uri) -> Result<(u16, Option<String>), String> {
    let resp = client.get(url).await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let backend = resp
        .headers()
        .get(BACKEND_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| error_chain(&e))?;
    }
    Ok((status, backend))
}

async fn probe(client: &HttpClient, spec: &LoadSpec) -> Result<(), BenchError> {
    let limit = spec.deadline.max(PROBE_TIMEOUT);
    let reason = match tokio::time::timeout(limit, exchange(client, spec.url.clone())).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(err)) => err,
        Err(_) => format!("no response within {limit:?}"),
    };
    Err(BenchError::Unreachable {
        url: spec.url.clone(),
        reason,
    })
}

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// `err` and its sources, `: `-separated (hyper's own messages are terse).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}
