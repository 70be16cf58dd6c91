//! Tallying request outcomes into a [`Report`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadSpec;

/// Largest latency the histogram tells apart (larger ones saturate): an hour.
const MAX_MICROS: u64 = 3_600_000_000;

/// What became of one request.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// When its task actually started (for the achieved rate).
    pub(crate) dispatched: Instant,
    /// How late that was.
    pub(crate) lag: Duration,
    /// From the intended send time to the end of the body, or the deadline.
    pub(crate) latency: Duration,
    /// Whether its intended send time is in the measured window.
    pub(crate) measured: bool,
    pub(crate) kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// A complete response within the deadline.
    Response { status: u16, backend: Option<String> },
    /// Not answered within the deadline.
    Timeout,
    /// Connect, write or read failure before the deadline.
    Failed(String),
}

/// Latency percentiles of the measured requests, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The result of one [`run`](super::run); serialises to the `--json` output.
///
/// Counts cover the requests whose intended send time fell in the measured
/// window. `sent = ok + errors`; errors are non-2xx responses, `timeouts`
/// and `failures` (connection errors). Latencies of timeouts are recorded as
/// the deadline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Name of the run in tables; [`run`](super::run) sets the URL.
    pub label: String,
    pub url: String,
    /// The requested mean rate.
    pub target_rps: f64,
    /// Rate of the schedule drawn for the measured window (`sent / duration`).
    pub offered_rps: f64,
    /// Requests actually dispatched during the measured window, per second.
    pub achieved_rps: f64,
    /// 2xx responses within the deadline per second.
    pub goodput_rps: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub deadline_ms: f64,
    pub seed: u64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// `errors / sent` (0 when nothing was sent).
    pub error_rate: f64,
    pub timeouts: u64,
    pub failures: u64,
    /// The first connection error's message, if any.
    pub first_failure: Option<String>,
    pub latency_ms: LatencySummary,
    /// How late requests were started after their intended send time (part
    /// of their latency): the generator's own delay, which should stay far
    /// below the latencies measured.
    pub dispatch_lag_ms: LatencySummary,
    /// Fraction of the responses (any status) that each `x-backend-id` served.
    pub share: BTreeMap<String, f64>,
    /// Responses per status code.
    pub status_counts: BTreeMap<String, u64>,
}

/// Running totals of a run.
pub(crate) struct Tally {
    window: (Instant, Instant),
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    dispatched: u64,
    sent: u64,
    ok: u64,
    timeouts: u64,
    failures: u64,
    first_failure: Option<String>,
    backends: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
}

impl Tally {
    /// Totals for the measured window `[start, end)`.
    pub(crate) fn new(start: Instant, end: Instant) -> Self {
        Self {
            window: (start, end),
            hist: histogram(),
            lag: histogram(),
            dispatched: 0,
            sent: 0,
            ok: 0,
            timeouts: 0,
            failures: 0,
            first_failure: None,
            backends: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, o: Outcome) {
        if (self.window.0..self.window.1).contains(&o.dispatched) {
            self.dispatched += 1;
        }
        if !o.measured {
            return;
        }
        self.sent += 1;
        self.hist.saturating_record(micros(o.latency));
        self.lag.saturating_record(micros(o.lag));
        match o.kind {
            Kind::Response { status, backend } => {
                self.ok += u64::from((200..300).contains(&status));
                *self.statuses.entry(status).or_default() += 1;
                if let Some(id) = backend {
                    *self.backends.entry(id).or_default() += 1;
                }
            }
            Kind::Timeout => self.timeouts += 1,
            Kind::Failed(msg) => {
                self.failures += 1;
                self.first_failure.get_or_insert(msg);
            }
        }
    }

    /// The report; `offered` is the number of scheduled requests in the window.
    pub(crate) fn into_report(self, spec: &LoadSpec, offered: u64) -> Report {
        let secs = spec.duration.as_secs_f64();
        let answered: u64 = self.backends.values().sum();
        let errors = self.sent - self.ok;
        Report {
            label: spec.url.to_string(),
            url: spec.url.to_string(),
            target_rps: spec.rate,
            offered_rps: offered as f64 / secs,
            achieved_rps: self.dispatched as f64 / secs,
            goodput_rps: self.ok as f64 / secs,
            duration_s: secs,
            warmup_s: spec.warmup.as_secs_f64(),
            deadline_ms: spec.deadline.as_secs_f64() * 1000.0,
            seed: spec.seed,
            sent: self.sent,
            ok: self.ok,
            errors,
            error_rate: ratio(errors, self.sent),
            timeouts: self.timeouts,
            failures: self.failures,
            first_failure: self.first_failure,
            latency_ms: LatencySummary::of(&self.hist),
            dispatch_lag_ms: LatencySummary::of(&self.lag),
            share: self
                .backends
                .into_iter()
                .map(|(id, n)| (id, ratio(n, answered)))
                .collect(),
            status_counts: self
                .statuses
                .into_iter()
                .map(|(code, n)| (code.to_string(), n))
                .collect(),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LatencySummary {
    /// Summary of a histogram of microseconds (all zero when it is empty).
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

fn ratio(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

impl Report {
    /// Sets the label shown in tables and JSON.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn resp(status: u16, backend: &str) -> Kind {
        let backend = Some(backend.to_owned());
        Kind::Response { status, backend }
    }

    #[test]
    fn tally_counts_the_measured_window_and_formats_it() {
        let t0 = Instant::now();
        let spec = LoadSpec::new("http://h:1/".parse().expect("url"), 10.0, ms(1000));
        let mut tally = Tally::new(t0 + ms(1000), t0 + ms(2000));
        let outcomes = [
            (500, 5, false, resp(200, "a")), // warm-up: not reported
            (1100, 2, true, resp(200, "a")),
            (1200, 4, true, resp(200, "b")),
            (1300, 100, true, Kind::Timeout),
            (1400, 1, true, resp(503, "b")),
            (1500, 1, true, Kind::Failed("refused".into())),
        ];
        for (at, latency, measured, kind) in outcomes {
            let (dispatched, lag, latency) = (t0 + ms(at), Duration::ZERO, ms(latency));
            tally.add(Outcome {
                dispatched,
                lag,
                latency,
                measured,
                kind,
            });
        }
        let r = tally.into_report(&spec, 5).with_label("x");
        assert_eq!((r.sent, r.ok, r.errors, r.timeouts, r.failures), (5, 2, 3, 1, 1));
        assert_eq!(r.first_failure.as_deref(), Some("refused"));
        assert_eq!((r.offered_rps, r.achieved_rps, r.goodput_rps), (5.0, 5.0, 2.0));
        assert_eq!(r.error_rate, 0.6);
        assert_eq!(r.status_counts, [("200".to_owned(), 2), ("503".to_owned(), 1)].into());
        assert!((r.share["b"] - 2.0 / 3.0).abs() < 1e-12, "{:?}", r.share);
        assert!((99.9..=100.1).contains(&r.latency_ms.max), "{:?}", r.latency_ms);

        let table = crate::bench::format_table(&[r]);
        let lines: Vec<_> = table.lines().collect();
        assert!(lines[0].starts_with("label          sent    ok      errors  err%   achieved/offered  p50"));
        assert!(lines[1].starts_with("x              5       2       3       60.00  5.0/5.0           2.00ms"));
        assert_eq!(lines[2], "share per backend: a 33.3%  b 66.7%");
    }
}
