//! Parses the ORCA load report a backend attaches to its responses.
//!
//! ORCA (xds `OrcaLoadReport`) travels over HTTP/1 in the `endpoint-load-metrics` response
//! header, as Envoy and gRPC define it, in one of three encodings:
//!
//! ```text
//! endpoint-load-metrics: TEXT cpu_utilization=0.42, rps_fractional=120, named_metrics.queue=3
//! endpoint-load-metrics: JSON {"cpu_utilization": 0.42, "rps_fractional": 120, "named_metrics": {"queue": 3}}
//! ```
//!
//! We read the fields our features use and ignore the rest, as Envoy does. `BIN` (a
//! base64 protobuf) is not read. A report that cannot be read is ignored: the proxy never
//! depends on a backend reporting.

/// Response header carrying the report.
pub const HEADER: &str = "endpoint-load-metrics";

/// The fields of a load report the proxy uses; `None` when the backend did not send it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReport {
    pub cpu_utilization: Option<f64>,
    pub rps_fractional: Option<f64>,
    /// `named_metrics.queue`: requests waiting at the backend.
    pub queue: Option<f64>,
}

impl LoadReport {
    fn set(&mut self, key: &str, v: f64) {
        if !v.is_finite() || v < 0.0 {
            return;
        }
        match key {
            "cpu_utilization" => self.cpu_utilization = Some(v),
            "rps_fractional" => self.rps_fractional = Some(v),
            "named_metrics.queue" => self.queue = Some(v),
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        *self == LoadReport::default()
    }
}

/// Parses a header value; `None` when it is not a readable `TEXT` or `JSON` report or has
/// none of the fields we use.
pub fn parse(value: &[u8]) -> Option<LoadReport> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let mut r = LoadReport::default();
    if let Some(text) = value.strip_prefix("TEXT ") {
        for pair in text.split(',') {
            let Some((k, v)) = pair.split_once('=') else { continue };
            if let Ok(v) = v.trim().parse::<f64>() {
                r.set(k.trim(), v);
            }
        }
    } else if let Some(json) = value.strip_prefix("JSON ") {
        let doc: serde_json::Value = serde_json::from_str(json).ok()?;
        let obj = doc.as_object()?;
        for key in ["cpu_utilization", "rps_fractional"] {
            if let Some(v) = obj.get(key).and_then(|v| v.as_f64()) {
                r.set(key, v);
            }
        }
        if let Some(v) = obj
            .get("named_metrics")
            .and_then(|m| m.get("queue"))
            .and_then(|v| v.as_f64())
        {
            r.set("named_metrics.queue", v);
        }
    } else {
        return None;
    }
    (!r.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_encoding() {
        let r = parse(b"TEXT cpu_utilization=0.42, rps_fractional=120.5, named_metrics.queue=3").expect("report");
        assert_eq!(r.cpu_utilization, Some(0.42));
        assert_eq!(r.rps_fractional, Some(120.5));
        assert_eq!(r.queue, Some(3.0));
    }

    #[test]
    fn json_encoding() {
        let r = parse(br#"JSON {"cpu_utilization": 0.5, "mem_utilization": 0.1, "named_metrics": {"queue": 7}}"#)
            .expect("report");
        assert_eq!(r.cpu_utilization, Some(0.5));
        assert_eq!(r.rps_fractional, None);
        assert_eq!(r.queue, Some(7.0));
    }

    #[test]
    fn partial_and_unknown_fields() {
        let r = parse(b"TEXT mem_utilization=0.3, cpu_utilization=0.9, junk").expect("report");
        assert_eq!(r.cpu_utilization, Some(0.9));
        assert_eq!(r.queue, None);
    }

    #[test]
    fn unreadable_reports_are_ignored() {
        for v in [
            &b"BIN CgQIARAB"[..],
            b"cpu_utilization=0.4",
            b"TEXT mem_utilization=0.2",
            b"TEXT cpu_utilization=-1, rps_fractional=NaN",
            b"JSON {not json",
            b"JSON [1,2]",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(v), None, "{}", String::from_utf8_lossy(v));
        }
    }
}
