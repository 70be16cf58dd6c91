//! Header rewriting between client and backend: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `X-Forwarded-*` family and request ids.

use http::header::{HeaderName, CONNECTION};
use pingora::http::{RequestHeader, ResponseHeader};
use rand::Rng;

pub const X_REQUEST_ID: &str = "x-request-id";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// Headers that describe one connection and never travel across a proxy. `transfer-encoding`
/// is handled by Pingora's framing and `upgrade` is kept for protocol upgrades.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Names listed in `Connection` (besides the hop-by-hop set) must also go.
fn connection_tokens(value: Option<&http::HeaderValue>) -> Vec<String> {
    value
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes hop-by-hop headers through `remove`; `upgrade` keeps `Upgrade` and `Connection`
/// for protocol upgrades.
fn strip_hop_by_hop(
    connection: Option<&http::HeaderValue>,
    upgrade: impl Fn(&[String]) -> bool,
    mut remove: impl FnMut(&str),
) {
    let tokens = connection_tokens(connection);
    for t in &tokens {
        if t != "upgrade" && t != "close" && t != "keep-alive" {
            remove(t);
        }
    }
    for h in HOP_BY_HOP {
        remove(h);
    }
    if !upgrade(&tokens) {
        remove("upgrade");
        remove(CONNECTION.as_str());
    }
}

pub fn strip_request_hop_by_hop(req: &mut RequestHeader) {
    let connection = req.headers.get(CONNECTION).cloned();
    strip_hop_by_hop(
        connection.as_ref(),
        |t| t.iter().any(|t| t == "upgrade"),
        |h| {
            req.remove_header(h);
        },
    );
}

pub fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    let connection = resp.headers.get(CONNECTION).cloned();
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(
        connection.as_ref(),
        |_| switching,
        |h| {
            resp.remove_header(h);
        },
    );
}

/// A client-sent request id is kept when it is short printable ASCII; otherwise we make one.
pub const TRACEPARENT: &str = "traceparent";

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); `None`
/// when absent, malformed or all zeros (invalid per the spec).
pub fn trace_id(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && (version != "00" || parts.next().is_none());
    valid.then(|| trace.to_string())
}

pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

/// A random UUIDv4 in its canonical text form.
pub fn new_request_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Appends the client address to `X-Forwarded-For` (keeping what earlier proxies wrote) and
/// sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(req: &mut RequestHeader, client_ip: Option<std::net::IpAddr>, proto: &str) -> pingora::Result<()> {
    if let Some(ip) = client_ip {
        let xff = match req.headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{}, {ip}", prev.trim()),
            _ => ip.to_string(),
        };
        req.insert_header(X_FORWARDED_FOR, xff)?;
    }
    req.insert_header(X_FORWARDED_PROTO, proto)?;
    if req.headers.get(X_FORWARDED_HOST).is_none() {
        if let Some(host) = req.headers.get(http::header::HOST).cloned() {
            req.insert_header(HeaderName::from_static(X_FORWARDED_HOST), host)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn traceparent_trace_ids() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(ok).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-kept", "yes"),
        ] {
            req.append_header(k, v).expect("hdr");
        }
        strip_request_hop_by_hop(&mut req);
        for h in ["connection", "keep-alive", "x-secret", "te"] {
            assert!(req.headers.get(h).is_none(), "{h}");
        }
        assert_eq!(req.headers.get("x-kept").expect("kept"), "yes");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.insert_header("x-forwarded-for", "10.0.0.1").expect("hdr");
        set_forwarded(&mut req, Some("127.0.0.1".parse().expect("ip")), "http").expect("set");
        assert_eq!(req.headers.get("x-forwarded-for").expect("xff"), "10.0.0.1, 127.0.0.1");
        assert_eq!(req.headers.get("x-forwarded-proto").expect("proto"), "http");
    }

    #[test]
    fn request_ids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_request_id());
        assert!(valid_request_id(id.as_bytes()));
        assert!(!valid_request_id(b"has space"));
    }
}
