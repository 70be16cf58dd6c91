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
//! * **Time-varying rates and request classes.** A rate that changes over
//!   time ([`LoadSpec::ramp_to`]) is drawn by thinning (Lewis and Shedler):
//!   arrivals at the peak rate, each kept with probability `rate(t) / peak`,
//!   which is an exact non-homogeneous Poisson process. Each request picks its
//!   class ([`LoadSpec::classes`], a path) at random by weight.
//! * **Over time.** Besides the whole window, each [`WINDOW`] (one second) of
//!   the measured window gets its own percentiles ([`Report::timeline`]), so a
//!   phase change or a ramp shows as a line rather than a blur.
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
use hyper::header::HeaderValue;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use report::Outcome;
pub use report::{
    pooled_histogram, Answer, ClassReport, LatencySummary, Recorder, Report, RunInfo, WindowReport, LAG_P99_LIMIT_MS,
    WINDOW,
};
pub use table::{format_table, print_table};

use crate::arrivals::{Arrival, Schedule};
use backend_sim::backend::{
    parse_service_ms, BACKEND_ID_HEADER, MEASURED_HEADER, REQUEST_INDEX_HEADER, SERVER_TIMING_HEADER,
};

/// How long the reachability check before the warm-up may take at least (the
/// deadline is used if it is longer): a slow backend is not an unreachable one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A kind of request: its path, and how often it is sent relative to the
/// other classes.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestClass {
    /// Name in reports.
    pub name: String,
    /// Path (and query) appended to the authority of [`LoadSpec::url`].
    pub path: String,
    /// Relative frequency (positive).
    pub weight: f64,
}

/// What load to offer, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    /// Target of every request (`GET`, plain `http://` only); with classes,
    /// only its scheme and authority are used.
    pub url: Uri,
    /// Mean arrival rate of the Poisson schedule, in requests per second (at
    /// the start of the measured window if [`ramp_to`](Self::ramp_to) is set).
    pub rate: f64,
    /// If set, the rate changes linearly from [`rate`](Self::rate) at the
    /// start of the measured window to this at its end; the warm-up runs at
    /// `rate`.
    pub ramp_to: Option<f64>,
    /// Request classes, picked at random by weight; empty: every request goes
    /// to `url`.
    pub classes: Vec<RequestClass>,
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
    /// A spec with a constant rate, no classes, a 2 s warm-up, a 1 s deadline
    /// and seed 1.
    pub fn new(url: Uri, rate: f64, duration: Duration) -> Self {
        Self {
            url,
            rate,
            ramp_to: None,
            classes: Vec::new(),
            duration,
            warmup: Duration::from_secs(2),
            deadline: Duration::from_secs(1),
            seed: 1,
        }
    }

    /// Checks the spec; [`run`] calls this first.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |msg: String| Err(BenchError::InvalidSpec(msg));
        for rate in std::iter::once(self.rate).chain(self.ramp_to) {
            if !(rate.is_finite() && rate > 0.0) {
                return bad(format!("rate must be a positive number, got {rate}"));
            }
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
        for c in &self.classes {
            if !(c.weight.is_finite() && c.weight > 0.0 && c.path.starts_with('/')) {
                return bad(format!(
                    "class {}: needs a positive weight and a path starting with '/'",
                    c.name
                ));
            }
            if self.class_url(&c.path).is_none() {
                return bad(format!("class {}: {:?} does not make a valid URL", c.name, c.path));
            }
        }
        Ok(())
    }

    /// The rate (requests per second) at `t` from the start of the load.
    pub fn rate_at(&self, t: Duration) -> f64 {
        match self.ramp_to {
            None => self.rate,
            Some(to) => {
                let x = (t.saturating_sub(self.warmup).as_secs_f64() / self.duration.as_secs_f64()).clamp(0.0, 1.0);
                self.rate + (to - self.rate) * x
            }
        }
    }

    /// The mean requested rate over the measured window.
    pub fn mean_rate(&self) -> f64 {
        (self.rate + self.ramp_to.unwrap_or(self.rate)) / 2.0
    }

    fn class_url(&self, path: &str) -> Option<Uri> {
        let authority = self.url.authority()?;
        format!("http://{authority}{path}").parse().ok()
    }

    /// The URL of each class, in order (just `url` without classes).
    fn urls(&self) -> Vec<Uri> {
        if self.classes.is_empty() {
            return vec![self.url.clone()];
        }
        self.classes
            .iter()
            .map(|c| self.class_url(&c.path).unwrap_or_else(|| self.url.clone()))
            .collect()
    }

    fn run_info(&self) -> RunInfo {
        RunInfo {
            label: self.url.to_string(),
            url: self.url.to_string(),
            target_rps: self.mean_rate(),
            warmup: self.warmup,
            duration: self.duration,
            deadline: self.deadline,
            seed: self.seed,
        }
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
    run_from(spec, None).await
}

/// [`run`], with the load starting at `start` (after the reachability
/// check) rather than at once: lets the caller line the load up with a clock
/// it shares with the backends. A `start` in the past counts as now.
pub async fn run_from(spec: &LoadSpec, start: Option<Instant>) -> Result<Report, BenchError> {
    spec.validate()?;
    let client = client();
    probe(&client, spec).await?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = start.unwrap_or_else(Instant::now).max(Instant::now());
    let scheduler = {
        let (spec, client) = (spec.clone(), client.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || schedule(&spec, start, &client, &runtime, tx))
    };

    let names: Vec<String> = spec.classes.iter().map(|c| c.name.clone()).collect();
    let mut tally = Recorder::new(spec.run_info(), &names);
    // Ends when the scheduler and every request task have dropped their sender.
    while let Some(outcome) = rx.recv().await {
        tally.add(outcome);
    }
    let offered = scheduler.await.map_err(|e| BenchError::Scheduler(e.to_string()))?;
    Ok(tally.finish(Some(offered)))
}

/// Sends the requests of the schedule ([`Schedule`]), each at its intended time on its
/// own task; returns how many fell in the measured window.
fn schedule(
    spec: &LoadSpec,
    start: Instant,
    client: &HttpClient,
    runtime: &tokio::runtime::Handle,
    tx: mpsc::UnboundedSender<Outcome>,
) -> u64 {
    let urls = spec.urls();
    let mut measured = 0;
    for arrival in Schedule::new(spec) {
        if tx.is_closed() {
            break;
        }
        let intended = start + arrival.at;
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        measured += u64::from(arrival.measured);
        runtime.spawn(request(
            client.clone(),
            urls[arrival.class].clone(),
            Sent { start, arrival },
            spec.deadline,
            tx.clone(),
        ));
    }
    measured
}

/// When and what a request of the schedule is.
struct Sent {
    start: Instant,
    arrival: Arrival,
}

/// One request of the schedule; reports its outcome on `tx`.
async fn request(client: HttpClient, url: Uri, sent: Sent, deadline: Duration, tx: mpsc::UnboundedSender<Outcome>) {
    let Arrival {
        index,
        at,
        class,
        measured,
    } = sent.arrival;
    let intended = sent.start + at;
    let now = Instant::now();
    let dispatched = now.saturating_duration_since(sent.start);
    let outcome = |latency, answer| Outcome {
        at,
        dispatched,
        class,
        latency,
        answer,
    };
    if now.saturating_duration_since(intended) >= deadline {
        // The generator is so far behind that this request is already late:
        // count it without spending CPU on it, so an overload can recover.
        let _ = tx.send(outcome(deadline, Answer::Timeout));
        return;
    }
    let due = tokio::time::Instant::from_std(intended + deadline);
    let req = get(url, Some((index, measured)));
    let answer = match tokio::time::timeout_at(due, exchange(&client, req)).await {
        Err(_elapsed) => Answer::Timeout,
        Ok(Err(err)) => Answer::Failed(err),
        Ok(Ok(answer)) => answer,
    };
    // A timer may fire a little late: the tally counts whatever ran out, or
    // came in after the deadline, as a timeout at the deadline.
    let latency = Instant::now().saturating_duration_since(intended);
    // The receiver is gone only if `run` was cancelled.
    let _ = tx.send(outcome(latency, answer));
}

/// A `GET` of `url`; with `tag`, the schedule's request index and whether it is measured,
/// for the backends ([`REQUEST_INDEX_HEADER`], [`MEASURED_HEADER`]).
fn get(url: Uri, tag: Option<(u64, bool)>) -> Request<Empty<Bytes>> {
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = url;
    if let Some((index, measured)) = tag {
        let headers = req.headers_mut();
        headers.insert(REQUEST_INDEX_HEADER, HeaderValue::from(index));
        if measured {
            headers.insert(MEASURED_HEADER, HeaderValue::from_static("1"));
        }
    }
    req
}

/// Sends one request and reads the whole response: its status, the backend that answered
/// and the service time it reported.
async fn exchange(client: &HttpClient, req: Request<Empty<Bytes>>) -> Result<Answer, String> {
    let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let backend = resp
        .headers()
        .get(BACKEND_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let service = resp
        .headers()
        .get_all(SERVER_TIMING_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_service_ms)
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| error_chain(&e))?;
    }
    Ok(Answer::Response {
        status,
        backend,
        service,
    })
}

async fn probe(client: &HttpClient, spec: &LoadSpec) -> Result<(), BenchError> {
    let limit = spec.deadline.max(PROBE_TIMEOUT);
    let url = spec.urls().swap_remove(0);
    let reason = match tokio::time::timeout(limit, exchange(client, get(url.clone(), None))).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(err)) => err,
        Err(_) => format!("no response within {limit:?}"),
    };
    Err(BenchError::Unreachable { url, reason })
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
