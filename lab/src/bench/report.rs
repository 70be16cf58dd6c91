//! Tallying request outcomes into a [`Report`].
//!
//! [`Recorder`] is the public face of the tally: [`run`](super::run) feeds it
//! from the network, and a model (the discrete-event simulation behind
//! `nb-bench --simulate`) can feed it simulated requests, so that both report
//! with exactly the same rules (measured window, deadline, windows, shares).
//!
//! # What the figures mean
//!
//! * **Headline latency** (`latency_ms`, the timeline, the per-class figures): every
//!   request of the measured window, every failure (a non-2xx answer, a refused or reset
//!   connection, a timeout) counted *at the deadline*. A strategy cannot lower its p99 by
//!   failing fast: a 503 in 1 ms weighs as much as a request that never came back. Every
//!   ratio of the lab uses this figure.
//! * **Success latency** (`success_latency_ms`): the 2xx answers only, what a user whose
//!   request worked waited; read it beside the error rate.
//! * **Queueing delay** (`queueing_ms`): latency minus the request's own service time, which
//!   the backend reports in `server-timing: service;dur=…`: the waiting (in the proxy, on the
//!   network, in the backend's queue) that a load balancer controls. Over the 2xx answers
//!   that carried the header (a fast rejection is not a short wait).
//! * **Generator lag** (`dispatch_lag_ms`): how late requests were sent. A run whose lag p99
//!   exceeds [`LAG_P99_LIMIT_MS`] is flagged (`lagging`): its latencies include the
//!   generator's own delay.
//! * **Shares**: `share` counts routing *decisions* per backend (set by the lab from the
//!   backends' own counts, or by the model at each pick), timeouts included;
//!   `response_share` counts answers by their `x-backend-id`, which loses every request that
//!   timed out.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency the histogram tells apart (larger ones saturate): an hour.
const MAX_MICROS: u64 = 3_600_000_000;

/// A run whose generator lag p99 exceeds this (ms) is flagged as lagging.
pub const LAG_P99_LIMIT_MS: f64 = 5.0;

/// Width of the windows of [`Report::timeline`].
pub const WINDOW: Duration = Duration::from_secs(1);

/// What became of one request.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Intended send time, from the start of the load (warm-up included).
    pub(crate) at: Duration,
    /// When its task actually started, from the start of the load.
    pub(crate) dispatched: Duration,
    /// Index of its class (0 when the run has none).
    pub(crate) class: usize,
    /// From the intended send time to the end of the body, or the deadline.
    pub(crate) latency: Duration,
    pub(crate) answer: Answer,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A complete response (any status) within the deadline; `backend` is the
    /// `x-backend-id` it carried.
    Response {
        /// HTTP status code.
        status: u16,
        /// The backend that served it, if known.
        backend: Option<String>,
        /// The request's own service time, if the backend said (`server-timing`).
        service: Option<Duration>,
    },
    /// Not answered within the deadline.
    Timeout,
    /// Connect, write or read failure before the deadline.
    Failed(String),
}

/// Latency percentiles of the measured requests, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The requests of one class (see [`RequestClass`](super::RequestClass)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    pub sent: u64,
    pub ok: u64,
    /// `(sent - ok) / sent`.
    pub error_rate: f64,
    /// Headline: failures at the deadline.
    pub latency_ms: LatencySummary,
    /// 2xx answers only.
    #[serde(default)]
    pub success_latency_ms: LatencySummary,
}

/// One [`WINDOW`] of the measured window, by intended send time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowReport {
    /// Start of the window, in seconds from the start of the load (warm-up
    /// included): the clock that scenario phases use.
    pub t_s: f64,
    pub sent: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The result of one [`run`](super::run) (or one simulated run); serialises
/// to the `--json` output.
///
/// Counts cover the requests whose intended send time fell in the measured
/// window. `sent = ok + errors`; errors are non-2xx responses, `timeouts`
/// and `failures` (connection errors). In `latency_ms` every error is recorded
/// at the deadline (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Name of the run in tables; [`run`](super::run) sets the URL.
    pub label: String,
    pub url: String,
    /// The requested mean rate over the measured window.
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
    /// Headline latency: every failure at the deadline.
    pub latency_ms: LatencySummary,
    /// Latency of the 2xx answers only.
    #[serde(default)]
    pub success_latency_ms: LatencySummary,
    /// Latency minus the request's own service time, over the 2xx answers that reported it.
    #[serde(default)]
    pub queueing_ms: LatencySummary,
    /// 2xx answers that reported their service time (the population of `queueing_ms`).
    #[serde(default)]
    pub queueing_count: u64,
    /// How late requests were started after their intended send time (part
    /// of their latency): the generator's own delay, which should stay far
    /// below the latencies measured.
    pub dispatch_lag_ms: LatencySummary,
    /// `dispatch_lag_ms.p99` exceeded [`LAG_P99_LIMIT_MS`].
    #[serde(default)]
    pub lagging: bool,
    /// Fraction of the measured routing decisions that went to each backend (timeouts
    /// included); empty when nobody counted them (a plain `--url` run).
    pub share: BTreeMap<String, f64>,
    /// Measured routing decisions per backend (the counts behind `share`).
    #[serde(default)]
    pub decisions: BTreeMap<String, u64>,
    /// Fraction of the responses (any status) that each `x-backend-id` served.
    #[serde(default)]
    pub response_share: BTreeMap<String, f64>,
    /// The headline latency histogram as (µs, count) pairs, so that repetitions can be
    /// pooled for p99.9 and max.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub histogram_us: Vec<(u64, u64)>,
    /// Responses per status code.
    pub status_counts: BTreeMap<String, u64>,
    /// Per request class, when the run had named classes.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassReport>,
    /// Per [`WINDOW`] of the measured window, in order (p99 over time).
    #[serde(default)]
    pub timeline: Vec<WindowReport>,
}

/// What a [`Report`] says about the run besides its outcomes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// Name in tables.
    pub label: String,
    /// Target (informational).
    pub url: String,
    /// Requested mean rate over the measured window.
    pub target_rps: f64,
    pub warmup: Duration,
    pub duration: Duration,
    pub deadline: Duration,
    pub seed: u64,
}

/// Running totals of a run, turned into a [`Report`] by [`Recorder::finish`].
///
/// Times are offsets from the start of the load (warm-up included). Requests
/// whose intended send time is outside `[warmup, warmup + duration)` are
/// ignored, except that their dispatch counts towards the achieved rate if it
/// happened inside the window.
pub struct Recorder {
    info: RunInfo,
    class_names: Vec<String>,
    hist: Histogram<u64>,
    ok_hist: Histogram<u64>,
    queueing: Histogram<u64>,
    lag: Histogram<u64>,
    decisions: BTreeMap<String, u64>,
    dispatched: u64,
    sent: u64,
    ok: u64,
    timeouts: u64,
    failures: u64,
    first_failure: Option<String>,
    backends: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    classes: Vec<ClassTally>,
    windows: Vec<WindowTally>,
}

struct ClassTally {
    hist: Histogram<u64>,
    ok_hist: Histogram<u64>,
    sent: u64,
    ok: u64,
}

#[derive(Default)]
struct WindowTally {
    hist: Option<Histogram<u64>>,
    sent: u64,
    errors: u64,
}

impl Recorder {
    /// An empty tally. `classes` names the request classes by index (empty:
    /// one unnamed class, and no per-class section in the report).
    pub fn new(info: RunInfo, classes: &[String]) -> Self {
        let n_windows = (info.duration.as_secs_f64() / WINDOW.as_secs_f64()).ceil() as usize;
        Self {
            class_names: classes.to_vec(),
            hist: histogram(),
            ok_hist: histogram(),
            queueing: histogram(),
            lag: histogram(),
            decisions: BTreeMap::new(),
            dispatched: 0,
            sent: 0,
            ok: 0,
            timeouts: 0,
            failures: 0,
            first_failure: None,
            backends: BTreeMap::new(),
            statuses: BTreeMap::new(),
            classes: classes
                .iter()
                .map(|_| ClassTally {
                    hist: histogram(),
                    ok_hist: histogram(),
                    sent: 0,
                    ok: 0,
                })
                .collect(),
            windows: (0..n_windows).map(|_| WindowTally::default()).collect(),
            info,
        }
    }

    fn in_window(&self, t: Duration) -> bool {
        t >= self.info.warmup && t < self.info.warmup + self.info.duration
    }

    /// Records one request sent at `at` (from the start of the load) and
    /// dispatched with no lag: what a model reports. A latency beyond the
    /// deadline is recorded as a timeout at the deadline.
    pub fn record(&mut self, at: Duration, class: usize, latency: Duration, answer: Answer) {
        self.add(Outcome {
            at,
            dispatched: at,
            class,
            latency,
            answer,
        });
    }

    /// Records that a request sent at `at` was routed to `backend` (each attempt counts).
    pub fn decision(&mut self, at: Duration, backend: &str) {
        if self.in_window(at) {
            match self.decisions.get_mut(backend) {
                Some(n) => *n += 1,
                None => {
                    self.decisions.insert(backend.to_owned(), 1);
                }
            }
        }
    }

    pub(crate) fn add(&mut self, o: Outcome) {
        if self.in_window(o.dispatched) {
            self.dispatched += 1;
        }
        if !self.in_window(o.at) {
            return;
        }
        let deadline = self.info.deadline;
        let (answer, latency) = match o.answer {
            _ if o.latency > deadline => (Answer::Timeout, deadline),
            Answer::Timeout => (Answer::Timeout, deadline),
            answer => (answer, o.latency),
        };
        let ok = matches!(answer, Answer::Response { status, .. } if (200..300).contains(&status));
        // Headline: a failure weighs as much as a request that never came back.
        let us = micros(if ok { latency } else { deadline });
        self.sent += 1;
        self.ok += u64::from(ok);
        self.hist.saturating_record(us);
        if ok {
            self.ok_hist.saturating_record(us);
        }
        if let (
            true,
            Answer::Response {
                service: Some(service), ..
            },
        ) = (ok, &answer)
        {
            self.queueing
                .saturating_record(micros(latency.saturating_sub(*service)));
        }
        self.lag.saturating_record(micros(o.dispatched.saturating_sub(o.at)));
        if let Some(c) = self.classes.get_mut(o.class) {
            c.sent += 1;
            c.ok += u64::from(ok);
            c.hist.saturating_record(us);
            if ok {
                c.ok_hist.saturating_record(us);
            }
        }
        let index = ((o.at - self.info.warmup).as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        if let Some(w) = self.windows.get_mut(index) {
            w.sent += 1;
            w.errors += u64::from(!ok);
            w.hist.get_or_insert_with(histogram).saturating_record(us);
        }
        match answer {
            Answer::Response { status, backend, .. } => {
                *self.statuses.entry(status).or_default() += 1;
                if let Some(id) = backend {
                    *self.backends.entry(id).or_default() += 1;
                }
            }
            Answer::Timeout => self.timeouts += 1,
            Answer::Failed(msg) => {
                self.failures += 1;
                self.first_failure.get_or_insert(msg);
            }
        }
    }

    /// The report; `offered` is the number of scheduled requests in the
    /// window (`None`: the number recorded).
    pub fn finish(self, offered: Option<u64>) -> Report {
        let info = self.info;
        let secs = info.duration.as_secs_f64();
        let answered: u64 = self.backends.values().sum();
        let errors = self.sent - self.ok;
        let offered = offered.unwrap_or(self.sent);
        let warmup_s = info.warmup.as_secs_f64();
        let lag = LatencySummary::of(&self.lag);
        let mut report = Report {
            label: info.label,
            url: info.url,
            target_rps: info.target_rps,
            offered_rps: offered as f64 / secs,
            achieved_rps: self.dispatched as f64 / secs,
            goodput_rps: self.ok as f64 / secs,
            duration_s: secs,
            warmup_s,
            deadline_ms: info.deadline.as_secs_f64() * 1000.0,
            seed: info.seed,
            sent: self.sent,
            ok: self.ok,
            errors,
            error_rate: ratio(errors, self.sent),
            timeouts: self.timeouts,
            failures: self.failures,
            first_failure: self.first_failure,
            latency_ms: LatencySummary::of(&self.hist),
            success_latency_ms: LatencySummary::of(&self.ok_hist),
            queueing_ms: LatencySummary::of(&self.queueing),
            queueing_count: self.queueing.len(),
            lagging: lag.p99 > LAG_P99_LIMIT_MS,
            dispatch_lag_ms: lag,
            share: BTreeMap::new(),
            decisions: BTreeMap::new(),
            response_share: self
                .backends
                .into_iter()
                .map(|(id, n)| (id, ratio(n, answered)))
                .collect(),
            histogram_us: self
                .hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            status_counts: self
                .statuses
                .into_iter()
                .map(|(code, n)| (code.to_string(), n))
                .collect(),
            classes: self
                .class_names
                .into_iter()
                .zip(self.classes)
                .map(|(name, c)| {
                    let report = ClassReport {
                        sent: c.sent,
                        ok: c.ok,
                        error_rate: ratio(c.sent - c.ok, c.sent),
                        latency_ms: LatencySummary::of(&c.hist),
                        success_latency_ms: LatencySummary::of(&c.ok_hist),
                    };
                    (name, report)
                })
                .collect(),
            timeline: self
                .windows
                .into_iter()
                .enumerate()
                .map(|(i, w)| {
                    let l = w.hist.as_ref().map(LatencySummary::of).unwrap_or_default();
                    WindowReport {
                        t_s: warmup_s + i as f64 * WINDOW.as_secs_f64(),
                        sent: w.sent,
                        errors: w.errors,
                        p50_ms: l.p50,
                        p99_ms: l.p99,
                        max_ms: l.max,
                    }
                })
                .collect(),
        };
        report.set_decisions(self.decisions);
        report
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A histogram of the (µs, count) pairs of [`Report::histogram_us`] of several runs
/// (pooled repetitions).
pub fn pooled_histogram<'a>(parts: impl IntoIterator<Item = &'a [(u64, u64)]>) -> Histogram<u64> {
    let mut h = histogram();
    for part in parts {
        for &(us, n) in part {
            let _ = h.record_n(us.min(MAX_MICROS), n);
        }
    }
    h
}

impl LatencySummary {
    /// Summary of a histogram of microseconds (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
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
    /// Sets the routing decisions per backend (and `share` from them); empty counts leave
    /// both empty.
    pub fn set_decisions(&mut self, decisions: BTreeMap<String, u64>) {
        let total: u64 = decisions.values().sum();
        self.share = decisions.iter().map(|(b, n)| (b.clone(), ratio(*n, total))).collect();
        self.decisions = decisions;
    }

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

    fn resp(status: u16, backend: &str) -> Answer {
        let backend = Some(backend.to_owned());
        Answer::Response {
            status,
            backend,
            service: None,
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            label: "x".into(),
            url: "http://h:1/".into(),
            target_rps: 10.0,
            warmup: ms(1000),
            duration: ms(1000),
            deadline: ms(100),
            seed: 1,
        }
    }

    #[test]
    fn tally_counts_the_measured_window_and_formats_it() {
        let mut tally = Recorder::new(info(), &[]);
        let outcomes = [
            (500, 5, resp(200, "a")), // warm-up: not reported
            (1100, 2, resp(200, "a")),
            (1200, 4, resp(200, "b")),
            (1300, 100, Answer::Timeout),
            (1400, 1, resp(503, "b")),
            (1500, 1, Answer::Failed("refused".into())),
            (2000, 1, resp(200, "a")), // after the window: not reported
        ];
        for (at, latency, answer) in outcomes {
            tally.record(ms(at), 0, ms(latency), answer);
        }
        let r = tally.finish(Some(5));
        assert_eq!((r.sent, r.ok, r.errors, r.timeouts, r.failures), (5, 2, 3, 1, 1));
        assert_eq!(r.first_failure.as_deref(), Some("refused"));
        assert_eq!((r.offered_rps, r.achieved_rps, r.goodput_rps), (5.0, 5.0, 2.0));
        assert_eq!(r.error_rate, 0.6);
        assert_eq!(r.status_counts, [("200".to_owned(), 2), ("503".to_owned(), 1)].into());
        assert!(
            (r.response_share["b"] - 2.0 / 3.0).abs() < 1e-12,
            "{:?}",
            r.response_share
        );
        assert!(r.share.is_empty() && r.decisions.is_empty());
        // The 503 and the refused connection sit at the deadline; successes took 2 and 4 ms.
        assert!((99.9..=100.1).contains(&r.latency_ms.p50), "{:?}", r.latency_ms);
        assert!(
            (3.9..=4.1).contains(&r.success_latency_ms.max),
            "{:?}",
            r.success_latency_ms
        );
        assert!((99.9..=100.1).contains(&r.latency_ms.max), "{:?}", r.latency_ms);
        assert!(r.classes.is_empty());
        assert_eq!(r.timeline.len(), 1);
        assert_eq!(
            (r.timeline[0].t_s, r.timeline[0].sent, r.timeline[0].errors),
            (1.0, 5, 3)
        );

        let table = crate::bench::format_table(&[r]);
        let lines: Vec<_> = table.lines().collect();
        assert!(lines[0].starts_with("label          sent    ok      errors  err%   achieved/offered  p50"));
        assert!(
            lines[1].starts_with("x              5       2       3       60.00  5.0/5.0           100ms    100ms    100ms    100ms    100ms    4.00ms   -        "),
            "{}",
            lines[1]
        );
        assert!(lines[0].ends_with("ok-p99   queue-p99 lag-p99"), "{}", lines[0]);
        assert_eq!(lines[2], "responses per backend: a 33.3%  b 66.7%");
    }

    #[test]
    fn late_answers_count_at_the_deadline_and_classes_and_windows_split() {
        let mut i = info();
        i.duration = ms(3000);
        let names = ["cheap".to_owned(), "heavy".to_owned()];
        let mut tally = Recorder::new(i, &names);
        tally.record(ms(1100), 0, ms(3), resp(200, "a"));
        tally.record(ms(2500), 1, ms(250), resp(200, "a")); // past the 100 ms deadline
        tally.record(ms(3900), 0, ms(7), resp(200, "b"));
        let r = tally.finish(None);
        assert_eq!((r.sent, r.ok, r.timeouts), (3, 2, 1));
        assert_eq!(r.offered_rps, 1.0);
        assert_eq!(r.classes["cheap"].sent, 2);
        assert_eq!(r.classes["heavy"].error_rate, 1.0);
        assert!((99.9..=100.1).contains(&r.classes["heavy"].latency_ms.max));
        let t: Vec<(f64, u64, u64)> = r.timeline.iter().map(|w| (w.t_s, w.sent, w.errors)).collect();
        assert_eq!(t, [(1.0, 1, 0), (2.0, 1, 1), (3.0, 1, 0)]);
        assert!((6.9..=7.1).contains(&r.timeline[2].p99_ms), "{:?}", r.timeline);
    }

    fn measured(tally: &mut Recorder, n: u64, latency_ms: u64, answer: &Answer) {
        for i in 0..n {
            tally.record(
                Duration::from_micros(1_000_000 + i * 900_000 / n),
                0,
                ms(latency_ms),
                answer.clone(),
            );
        }
    }

    #[test]
    fn a_fast_failing_backend_raises_never_lowers_the_headline_p99() {
        // 100 requests at 50 ms; then the same load with a fast-failing backend taking a
        // tenth of them and answering 503 in 1 ms.
        let mut healthy = Recorder::new(info_with_deadline(1000), &[]);
        measured(&mut healthy, 100, 50, &resp(200, "a"));
        let healthy = healthy.finish(None);
        let mut sinkhole = Recorder::new(info_with_deadline(1000), &[]);
        measured(&mut sinkhole, 90, 50, &resp(200, "a"));
        measured(&mut sinkhole, 10, 1, &resp(503, "sink"));
        let sinkhole = sinkhole.finish(None);
        assert!(
            (49.9..=50.1).contains(&healthy.latency_ms.p99),
            "{:?}",
            healthy.latency_ms
        );
        assert!(sinkhole.latency_ms.p99 >= healthy.latency_ms.p99);
        assert!(
            (999.0..=1001.0).contains(&sinkhole.latency_ms.p99),
            "{:?}",
            sinkhole.latency_ms
        );
        // The fast failures do not flatter the success-only figure either: it ignores them.
        assert!((49.9..=50.1).contains(&sinkhole.success_latency_ms.p50));
        assert_eq!(sinkhole.error_rate, 0.1);
    }

    fn info_with_deadline(deadline_ms: u64) -> RunInfo {
        RunInfo {
            deadline: ms(deadline_ms),
            ..info()
        }
    }

    #[test]
    fn queueing_delay_is_latency_minus_service_and_decisions_make_the_share() {
        let mut tally = Recorder::new(info(), &[]);
        let served = |service_ms: u64| Answer::Response {
            status: 200,
            backend: Some("a".into()),
            service: Some(ms(service_ms)),
        };
        tally.record(ms(1100), 0, ms(30), served(10));
        tally.record(ms(1200), 0, ms(12), served(10));
        tally.record(ms(1300), 0, ms(100), Answer::Timeout);
        for (at, b) in [
            (500, "b"),
            (1100, "a"),
            (1200, "a"),
            (1300, "b"),
            (1400, "b"),
            (2500, "a"),
        ] {
            tally.decision(ms(at), b);
        }
        let r = tally.finish(None);
        assert_eq!(r.queueing_count, 2);
        assert!((1.99..=2.01).contains(&r.queueing_ms.p50), "{:?}", r.queueing_ms);
        assert!((19.9..=20.1).contains(&r.queueing_ms.max), "{:?}", r.queueing_ms);
        // Only the measured window's decisions, the timed-out request's included.
        assert_eq!(r.decisions, [("a".to_owned(), 2), ("b".to_owned(), 2)].into());
        assert_eq!(r.share["b"], 0.5);
        assert_eq!(r.response_share["a"], 1.0);
    }

    #[test]
    fn a_lagging_generator_is_flagged_and_histograms_pool() {
        let mut tally = Recorder::new(info(), &[]);
        for i in 0..100u64 {
            let at = ms(1000 + i * 5);
            let lag = if i < 5 { ms(20) } else { Duration::ZERO };
            tally.add(Outcome {
                at,
                dispatched: at + lag,
                class: 0,
                latency: ms(10),
                answer: resp(200, "a"),
            });
        }
        let lagging = tally.finish(None);
        assert!(lagging.lagging, "{:?}", lagging.dispatch_lag_ms);
        let mut calm = Recorder::new(info(), &[]);
        measured(&mut calm, 100, 30, &resp(200, "a"));
        let calm = calm.finish(None);
        assert!(!calm.lagging);
        let pooled = pooled_histogram([lagging.histogram_us.as_slice(), calm.histogram_us.as_slice()]);
        assert_eq!(pooled.len(), 200);
        let summary = LatencySummary::of(&pooled);
        assert!(
            (29.9..=30.1).contains(&summary.max) && (9.9..=10.1).contains(&summary.p50),
            "{summary:?}"
        );
    }
}
