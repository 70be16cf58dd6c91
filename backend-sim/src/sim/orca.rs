//! The ORCA load report a backend attaches to its responses.
//!
//! ORCA (Open Request Cost Aggregation, xds `OrcaLoadReport`) lets a backend
//! tell its load balancer how loaded it is on every response, which is what
//! load-aware strategies want to consume. Over HTTP/1 the report travels in
//! the `endpoint-load-metrics` header; of its encodings (`BIN`, `JSON`,
//! `TEXT`) we send the one Envoy and gRPC parse natively and a human can
//! read:
//!
//! ```text
//! endpoint-load-metrics: TEXT cpu_utilization=0.42, rps_fractional=120.5, named_metrics.queue=3
//! ```
//!
//! A simulated backend has no CPU, so `cpu_utilization` is the slot
//! utilisation EWMA (0..=1); `rps_fractional` is the recent completion rate
//! (exponentially decaying, tau 1 s); `named_metrics.queue` is the number of
//! requests waiting for a slot when the response was sent.

use std::time::Instant;

use super::slots::EWMA_TAU_S;

/// Response header carrying the ORCA load report.
pub const ORCA_HEADER: &str = "endpoint-load-metrics";

/// The fields of an ORCA load report this simulator sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrcaReport {
    pub cpu_utilization: f64,
    pub rps_fractional: f64,
    /// `named_metrics.queue`.
    pub queue: f64,
}

impl OrcaReport {
    /// The header value, in the `TEXT` encoding.
    pub fn to_text(&self) -> String {
        format!(
            "TEXT cpu_utilization={:.4}, rps_fractional={:.2}, named_metrics.queue={}",
            self.cpu_utilization.clamp(0.0, 1.0),
            self.rps_fractional.max(0.0),
            self.queue
        )
    }

    /// Parses a `TEXT` header value. Unknown keys are ignored (as Envoy does);
    /// a missing field, a malformed pair or a non-`TEXT` encoding is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix("TEXT ")?;
        let (mut cpu, mut rps, mut queue) = (None, None, None);
        for pair in rest.split(',') {
            let (key, val) = pair.trim().split_once('=')?;
            let val: f64 = val.trim().parse().ok()?;
            match key.trim() {
                "cpu_utilization" => cpu = Some(val),
                "rps_fractional" => rps = Some(val),
                "named_metrics.queue" => queue = Some(val),
                _ => {}
            }
        }
        Some(Self {
            cpu_utilization: cpu?,
            rps_fractional: rps?,
            queue: queue?,
        })
    }
}

/// An exponentially decaying event rate (events per second).
///
/// Each event adds `1/tau` and the sum decays as `e^(-t/tau)`, so for a
/// steady stream of `r` events per second the value converges to `r`, and
/// it falls back towards 0 when events stop, without a sampling interval.
#[derive(Debug)]
pub(crate) struct Rate {
    value: f64,
    at: Instant,
}

impl Rate {
    pub(crate) fn new() -> Self {
        Self {
            value: 0.0,
            at: Instant::now(),
        }
    }

    pub(crate) fn record(&mut self) {
        self.value = self.read() + 1.0 / EWMA_TAU_S;
        self.at = Instant::now();
    }

    pub(crate) fn read(&self) -> f64 {
        let dt = self.at.elapsed().as_secs_f64();
        self.value * (-dt / EWMA_TAU_S).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_rejects_garbage() {
        let r = OrcaReport {
            cpu_utilization: 0.42,
            rps_fractional: 120.5,
            queue: 3.0,
        };
        let text = r.to_text();
        assert_eq!(
            text,
            "TEXT cpu_utilization=0.4200, rps_fractional=120.50, named_metrics.queue=3"
        );
        assert_eq!(OrcaReport::parse(&text), Some(r));
        assert_eq!(
            OrcaReport::parse("TEXT cpu_utilization=1,rps_fractional=2,named_metrics.queue=0,mem_utilization=0.1"),
            Some(OrcaReport {
                cpu_utilization: 1.0,
                rps_fractional: 2.0,
                queue: 0.0
            })
        );
        assert_eq!(OrcaReport::parse("JSON {}"), None);
        assert_eq!(OrcaReport::parse("TEXT cpu_utilization=x"), None);
        assert_eq!(OrcaReport::parse("TEXT cpu_utilization=0.1"), None);
    }

    #[test]
    fn rate_counts_and_decays() {
        let mut r = Rate::new();
        for _ in 0..100 {
            r.record();
        }
        let v = r.read();
        assert!((95.0..=100.0).contains(&v), "{v}");
        r.at =
            r.at.checked_sub(std::time::Duration::from_secs(3))
                .expect("3 s after boot");
        assert!(r.read() < 100.0 * (-2.9f64).exp(), "{}", r.read());
    }
}
