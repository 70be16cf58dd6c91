//! The records the proxy stores, as rows of named, typed columns.
//!
//! A record turns into a fixed list of [`Cell`]s, one per column. The PostgreSQL writer
//! sends the cells with binary `COPY`; the JSONL sink and `export-training` write the same
//! cells as one JSON object per line through [`write_json`]. One column list and one
//! encoder for both is what keeps the file sink and the database export identical.

use std::borrow::Cow;
use std::error::Error;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Row;

use crate::features::Features;

/// A column's SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Time,
    Text,
    Int2,
    Int4,
    Int8,
    Real,
    Bool,
}

impl Kind {
    pub fn sql_type(self) -> Type {
        match self {
            Kind::Time => Type::TIMESTAMPTZ,
            Kind::Text => Type::TEXT,
            Kind::Int2 => Type::INT2,
            Kind::Int4 => Type::INT4,
            Kind::Int8 => Type::INT8,
            Kind::Real => Type::FLOAT4,
            Kind::Bool => Type::BOOL,
        }
    }
}

pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// One value. Integers of every width travel as `i64`; the column's [`Kind`] picks the
/// width on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    /// Microseconds since the Unix epoch.
    Time(i64),
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
    Real(Option<f32>),
    Bool(Option<bool>),
}

fn text<'a>(v: Option<&'a str>) -> Cell<'a> {
    Cell::Text(v.map(Cow::Borrowed))
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Cell::Time(us) => unix_us_to_time(*us).to_sql(ty, out),
            Cell::Text(v) => v.as_deref().to_sql(ty, out),
            Cell::Int(None) | Cell::Real(None) | Cell::Bool(None) => Ok(IsNull::Yes),
            Cell::Int(Some(v)) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Cell::Real(Some(v)) => v.to_sql(ty, out),
            Cell::Bool(Some(v)) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::TIMESTAMPTZ | Type::TEXT | Type::INT2 | Type::INT4 | Type::INT8 | Type::FLOAT4 | Type::BOOL
        )
    }

    to_sql_checked!();
}

pub fn unix_us_to_time(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

pub fn time_to_unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

pub fn now_unix_us() -> i64 {
    time_to_unix_us(SystemTime::now())
}

/// Reads column `i` of a database row as a cell of `kind`.
pub fn cell_from_row(row: &Row, i: usize, kind: Kind) -> Result<Cell<'static>, tokio_postgres::Error> {
    Ok(match kind {
        Kind::Time => Cell::Time(time_to_unix_us(row.try_get::<_, SystemTime>(i)?)),
        Kind::Text => Cell::Text(row.try_get::<_, Option<String>>(i)?.map(Cow::Owned)),
        Kind::Int2 => Cell::Int(row.try_get::<_, Option<i16>>(i)?.map(i64::from)),
        Kind::Int4 => Cell::Int(row.try_get::<_, Option<i32>>(i)?.map(i64::from)),
        Kind::Int8 => Cell::Int(row.try_get::<_, Option<i64>>(i)?),
        Kind::Real => Cell::Real(row.try_get::<_, Option<f32>>(i)?),
        Kind::Bool => Cell::Bool(row.try_get::<_, Option<bool>>(i)?),
    })
}

/// Appends one JSON object (`{"column": value, ...}`) and a newline. Times are RFC 3339
/// UTC with microseconds; a NULL is `null`, so every line has every column.
pub fn write_json(columns: &[Column], cells: &[Cell<'_>], out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (c, v)) in columns.iter().zip(cells).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(c.name, out);
        out.push(b':');
        match v {
            // RFC 3339 needs no escaping.
            Cell::Time(us) => {
                let _ = write!(out, "\"{}\"", humantime::format_rfc3339_micros(unix_us_to_time(*us)));
            }
            Cell::Text(Some(s)) => json_str(s, out),
            Cell::Int(Some(n)) => {
                let _ = write!(out, "{n}");
            }
            // serde_json writes the shortest text that reads back as the same f32.
            Cell::Real(Some(x)) if x.is_finite() => {
                let _ = serde_json::to_writer(&mut *out, x);
            }
            Cell::Bool(Some(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Cell::Text(None) | Cell::Int(None) | Cell::Real(_) | Cell::Bool(None) => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
}

fn json_str(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `requests` and the `training_requests` view: one proxied request. New columns go at the
/// end, as each migration re-creates the view with them last.
pub const REQUEST_COLUMNS: [Column; 30] = [
    col("time", Kind::Time),
    col("request_id", Kind::Text),
    col("trace_id", Kind::Text),
    col("pool", Kind::Text),
    col("route", Kind::Text),
    col("backend", Kind::Text),
    col("backend_address", Kind::Text),
    col("method", Kind::Text),
    col("status", Kind::Int2),
    col("error", Kind::Text),
    col("latency_us", Kind::Int8),
    col("upstream_latency_us", Kind::Int8),
    col("request_bytes", Kind::Int8),
    col("response_bytes", Kind::Int8),
    col("retries", Kind::Int2),
    col("strategy", Kind::Text),
    col("f_inflight", Kind::Real),
    col("f_latency_ewma_ms", Kind::Real),
    col("f_error_rate", Kind::Real),
    col("f_weight", Kind::Real),
    col("f_since_success_ms", Kind::Real),
    col("f_reported_cpu", Kind::Real),
    col("f_reported_queue", Kind::Real),
    col("f_reported_rps", Kind::Real),
    col("predicted_latency_us", Kind::Int8),
    col("client_addr", Kind::Text),
    col("f_failure_rate", Kind::Real),
    col("f_latency_rif_ms", Kind::Real),
    col("ml_decided", Kind::Bool),
    col("ml_fallback", Kind::Text),
];

/// One proxied request, built in the proxy's `logging` phase.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Arrival, µs since the Unix epoch.
    pub time_us: i64,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub pool: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub backend: Option<Arc<String>>,
    pub backend_address: Option<Arc<str>>,
    pub method: &'static str,
    /// 0 when no response was sent.
    pub status: u16,
    pub error: Option<&'static str>,
    pub latency_us: i64,
    pub upstream_latency_us: Option<i64>,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub retries: u32,
    pub strategy: Option<&'static str>,
    /// The chosen backend's features when it was chosen.
    pub features: Option<Features>,
    /// The chosen backend's predicted latency when the `ml` strategy's model chose it.
    pub predicted_latency_us: Option<i64>,
    /// Null outside `ml` pools; true when the model chose, false when the fallback did.
    pub ml_decided: Option<bool>,
    /// Why the fallback decided (`model_server_error`, `timeout`, `stale_scores`,
    /// `circuit_open`, `no_scores`).
    pub ml_fallback: Option<&'static str>,
    /// The client's address by the trust rule (`headers::client_ip`); rendered as text by
    /// the sinks, off the request path.
    pub client_addr: Option<IpAddr>,
}

impl RequestRecord {
    pub fn cells(&self) -> [Cell<'_>; 30] {
        let f = self.features.as_ref();
        let real = |get: fn(&Features) -> Option<f32>| Cell::Real(f.and_then(get));
        [
            Cell::Time(self.time_us),
            text(Some(&self.request_id)),
            text(self.trace_id.as_deref()),
            text(self.pool.as_deref()),
            text(self.route.as_deref()),
            text(self.backend.as_deref().map(|s| s.as_str())),
            text(self.backend_address.as_deref()),
            text(Some(self.method)),
            Cell::Int(Some(i64::from(self.status))),
            text(self.error),
            Cell::Int(Some(self.latency_us)),
            Cell::Int(self.upstream_latency_us),
            Cell::Int(Some(self.request_bytes)),
            Cell::Int(Some(self.response_bytes)),
            Cell::Int(Some(i64::from(self.retries.min(i16::MAX as u32)))),
            text(self.strategy),
            real(|f| Some(f.inflight)),
            real(|f| f.latency_ewma_ms),
            real(|f| Some(f.error_rate)),
            real(|f| Some(f.weight)),
            real(|f| f.since_success_ms),
            real(|f| f.reported_cpu),
            real(|f| f.reported_queue),
            real(|f| f.reported_rps),
            Cell::Int(self.predicted_latency_us),
            Cell::Text(self.client_addr.map(|a| Cow::Owned(a.to_string()))),
            real(|f| Some(f.failure_rate)),
            real(|f| f.latency_rif_ms),
            Cell::Bool(self.ml_decided),
            text(self.ml_fallback),
        ]
    }
}

/// `backend_snapshots`: one backend's state at one moment.
pub const SNAPSHOT_COLUMNS: [Column; 14] = [
    col("time", Kind::Time),
    col("pool", Kind::Text),
    col("backend", Kind::Text),
    col("address", Kind::Text),
    col("health", Kind::Text),
    col("ejected", Kind::Bool),
    col("weight", Kind::Int4),
    col("inflight", Kind::Int4),
    col("latency_ewma_ms", Kind::Real),
    col("error_rate", Kind::Real),
    col("requests", Kind::Int8),
    col("reported_cpu", Kind::Real),
    col("reported_queue", Kind::Real),
    col("reported_rps", Kind::Real),
];

#[derive(Debug, Clone)]
pub struct SnapshotRecord {
    pub time_us: i64,
    pub pool: Arc<str>,
    pub backend: Arc<String>,
    pub address: SocketAddr,
    pub health: &'static str,
    pub ejected: bool,
    pub requests: u64,
    pub features: Features,
}

impl SnapshotRecord {
    pub fn cells(&self) -> [Cell<'_>; 14] {
        let f = &self.features;
        [
            Cell::Time(self.time_us),
            text(Some(&self.pool)),
            text(Some(self.backend.as_str())),
            Cell::Text(Some(Cow::Owned(self.address.to_string()))),
            text(Some(self.health)),
            Cell::Bool(Some(self.ejected)),
            Cell::Int(Some(f.weight as i64)),
            Cell::Int(Some(f.inflight as i64)),
            Cell::Real(f.latency_ewma_ms),
            Cell::Real(Some(f.error_rate)),
            Cell::Int(Some(self.requests.min(i64::MAX as u64) as i64)),
            Cell::Real(f.reported_cpu),
            Cell::Real(f.reported_queue),
            Cell::Real(f.reported_rps),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            time_us: 1_764_000_000_123_456,
            request_id: "r\"1".into(),
            trace_id: None,
            pool: Some("api".into()),
            route: Some("/".into()),
            backend: Some(Arc::new("b1".into())),
            backend_address: Some("127.0.0.1:9".into()),
            method: "GET",
            status: 200,
            error: None,
            latency_us: 1500,
            upstream_latency_us: Some(1400),
            request_bytes: 0,
            response_bytes: 12,
            retries: 0,
            strategy: Some("p2c_ewma"),
            features: Some(Features {
                inflight: 2.0,
                latency_ewma_ms: Some(1.25),
                error_rate: 0.1,
                weight: 1.0,
                ..Features::default()
            }),
            predicted_latency_us: None,
            ml_decided: None,
            ml_fallback: None,
            client_addr: Some("2001:db8::7".parse().expect("ip")),
        }
    }

    #[test]
    fn json_line_has_every_column_in_order() {
        let mut out = Vec::new();
        write_json(&REQUEST_COLUMNS, &record().cells(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        let obj = v.as_object().expect("object");
        assert_eq!(obj.len(), REQUEST_COLUMNS.len());
        assert_eq!(v["time"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(v["request_id"], "r\"1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["f_error_rate"].to_string(), "0.1");
        assert_eq!(v["client_addr"], "2001:db8::7");
        assert!(v["trace_id"].is_null() && v["f_reported_cpu"].is_null());
        let text = String::from_utf8(out).expect("utf8");
        let keys: Vec<&str> = REQUEST_COLUMNS.iter().map(|c| c.name).collect();
        let mut at = 0;
        for k in keys {
            let pos = text[at..].find(&format!("\"{k}\":")).map(|p| p + at);
            at = pos.unwrap_or_else(|| panic!("column {k} missing or out of order in {text}"));
        }
    }

    #[test]
    fn a_request_without_backend_has_null_features() {
        let mut r = record();
        r.backend = None;
        r.backend_address = None;
        r.features = None;
        let mut out = Vec::new();
        write_json(&REQUEST_COLUMNS, &r.cells(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid json");
        assert!(v["f_inflight"].is_null() && v["backend"].is_null());
    }

    #[test]
    fn time_conversions_round_trip() {
        for us in [0, 1, 1_764_000_000_123_456, -5] {
            assert_eq!(time_to_unix_us(unix_us_to_time(us)), us);
        }
    }
}
