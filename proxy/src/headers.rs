//! Header rewriting between client and backend: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `X-Forwarded-*` family and request ids.
//!
//! One trust rule governs everything a client could forge (as Envoy's trusted CIDRs): only a
//! peer in `http.trusted_proxies` is believed about `X-Forwarded-*` and `X-Request-Id`; from
//! any other peer they are replaced. The client address derived here ([`client_ip`]) is
//! computed once per request and is the one every consumer (logs, records) uses.

use std::net::IpAddr;

use http::header::{HeaderName, CONNECTION};
use pingora::http::{RequestHeader, ResponseHeader};
use rand::Rng;

use crate::cidr::{self, Cidr};

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

/// A client-sent request id is kept (when trusted) if it is short printable ASCII.
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

/// Other headers that claim to describe the client or the original request (RFC 7239
/// `Forwarded`, and the de facto ones that frameworks honour): believed only from trusted
/// proxies, removed otherwise, since the proxy does not write them itself.
const OTHER_FORWARDING: &[&str] = &["forwarded", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip"];

/// The `X-Forwarded-For` entries of a request, left to right: every header line, split on
/// commas, trimmed, empty entries dropped. A line that is not text counts as one entry that
/// is not an address (which ends the walk in [`client_ip`]).
fn forwarded_for(req: &RequestHeader) -> Vec<&str> {
    req.headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

/// An `X-Forwarded-For` entry as an address: `1.2.3.4`, `::1`, or with a port
/// (`1.2.3.4:80`, `[::1]:80`).
fn entry_ip(e: &str) -> Option<IpAddr> {
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(cidr::canonical)
}

/// The address of the client a request is for: the peer itself unless it is a trusted proxy;
/// then `X-Forwarded-For` walked from the right past trusted addresses, to the first
/// untrusted one (the leftmost when all are trusted). An entry that is not an address ends
/// the walk at the hop that passed it on: nothing left of it can be believed.
pub fn client_ip(req: &RequestHeader, peer: Option<IpAddr>, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer.map(cidr::canonical)?;
    if !cidr::any_contains(trusted, peer) {
        return Some(peer);
    }
    let mut last = peer;
    for e in forwarded_for(req).iter().rev() {
        let Some(ip) = entry_ip(e) else {
            return Some(last);
        };
        if !cidr::any_contains(trusted, ip) {
            return Some(ip);
        }
        last = ip;
    }
    Some(last)
}

/// Whether the peer is one of `trusted` (a peer that is not on IP, such as a Unix socket,
/// never is).
pub fn peer_trusted(peer: Option<IpAddr>, trusted: &[Cidr]) -> bool {
    peer.is_some_and(|p| cidr::any_contains(trusted, p))
}

/// The request id to use: a valid one the client sent when `keep` says so, else a new one.
pub fn request_id(req: &RequestHeader, keep: bool) -> String {
    match req.headers.get(X_REQUEST_ID) {
        Some(v) if keep && valid_request_id(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        _ => new_request_id(),
    }
}

/// Sets the forwarding headers of a request going upstream. From a trusted proxy, what it
/// wrote is kept: `X-Forwarded-For` gets the peer appended (all its lines joined, in order),
/// `X-Forwarded-Host`/`-Proto` are set only when absent. From anyone else, what the client
/// wrote is replaced: `X-Forwarded-For` is the peer, `X-Forwarded-Host` the `Host`,
/// `X-Forwarded-Proto` the listener's scheme.
pub fn set_forwarded(req: &mut RequestHeader, peer: Option<IpAddr>, trusted: bool, proto: &str) -> pingora::Result<()> {
    let prev = if trusted {
        forwarded_for(req).join(", ")
    } else {
        String::new()
    };
    req.remove_header(X_FORWARDED_FOR);
    let xff = match (peer.map(cidr::canonical), prev.is_empty()) {
        (Some(ip), true) => Some(ip.to_string()),
        (Some(ip), false) => Some(format!("{prev}, {ip}")),
        (None, false) => Some(prev),
        (None, true) => None,
    };
    if let Some(xff) = xff {
        req.insert_header(X_FORWARDED_FOR, xff)?;
    }
    if !trusted {
        for h in OTHER_FORWARDING {
            req.remove_header(*h);
        }
    }
    if !trusted || req.headers.get(X_FORWARDED_PROTO).is_none() {
        req.insert_header(X_FORWARDED_PROTO, proto)?;
    }
    if !trusted || req.headers.get(X_FORWARDED_HOST).is_none() {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        req.remove_header(X_FORWARDED_HOST);
        if let Some(host) = host {
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

    fn req_with(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("hdr");
        }
        req
    }

    fn all(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_string())
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    #[test]
    fn untrusted_peers_forwarding_headers_are_replaced() {
        let mut req = req_with(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "10.0.0.1"),
        ]);
        set_forwarded(&mut req, Some(ip("203.0.113.7")), false, "http").expect("set");
        assert_eq!(all(&req, "x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(all(&req, "x-forwarded-host"), ["shop.example"]);
        assert_eq!(all(&req, "x-forwarded-proto"), ["http"]);
        for h in ["forwarded", "x-forwarded-prefix", "x-forwarded-port", "x-real-ip"] {
            assert!(all(&req, h).is_empty(), "{h} from an untrusted client must not pass");
        }
    }

    #[test]
    fn trusted_peers_forwarding_headers_are_kept_and_appended() {
        let mut req = req_with(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
            ("x-forwarded-host", "www.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/shop"),
        ]);
        set_forwarded(&mut req, Some(ip("10.0.0.1")), true, "http").expect("set");
        assert_eq!(all(&req, "x-forwarded-prefix"), ["/shop"]);
        assert_eq!(all(&req, "x-forwarded-for"), ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"]);
        assert_eq!(all(&req, "x-forwarded-host"), ["www.example"]);
        assert_eq!(all(&req, "x-forwarded-proto"), ["https"]);
        // Absent ones are set.
        let mut req = req_with(&[("host", "shop.example")]);
        set_forwarded(&mut req, Some(ip("10.0.0.1")), true, "http").expect("set");
        assert_eq!(all(&req, "x-forwarded-for"), ["10.0.0.1"]);
        assert_eq!(all(&req, "x-forwarded-host"), ["shop.example"]);
        assert_eq!(all(&req, "x-forwarded-proto"), ["http"]);
    }

    #[test]
    fn client_ip_walks_forwarded_for_from_the_right_past_trusted_hops() {
        let trusted = nets(&["10.0.0.0/8", "::1"]);
        let xff = |v: &str| req_with(&[("x-forwarded-for", v)]);
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_ip(&xff("1.1.1.1"), Some(ip("203.0.113.7")), &trusted),
            Some(ip("203.0.113.7"))
        );
        // A trusted peer: the first untrusted entry from the right.
        let r = xff("6.6.6.6, 1.1.1.1, 10.0.0.2");
        assert_eq!(client_ip(&r, Some(ip("10.0.0.1")), &trusted), Some(ip("1.1.1.1")));
        assert_eq!(client_ip(&r, Some(ip("::1")), &trusted), Some(ip("1.1.1.1")));
        // All trusted: the leftmost.
        let r = xff("10.9.9.9, 10.0.0.2");
        assert_eq!(client_ip(&r, Some(ip("10.0.0.1")), &trusted), Some(ip("10.9.9.9")));
        // No header: the peer.
        assert_eq!(
            client_ip(&req_with(&[]), Some(ip("10.0.0.1")), &trusted),
            Some(ip("10.0.0.1"))
        );
        // Several lines are one list; ports and brackets are understood.
        let r = req_with(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "[2001:db8::1]:443, 10.0.0.3:80"),
        ]);
        assert_eq!(client_ip(&r, Some(ip("10.0.0.1")), &trusted), Some(ip("2001:db8::1")));
        // Garbage stops the walk at the hop that passed it on.
        let r = xff("1.1.1.1, unknown, 10.0.0.2");
        assert_eq!(client_ip(&r, Some(ip("10.0.0.1")), &trusted), Some(ip("10.0.0.2")));
        assert_eq!(client_ip(&r, None, &trusted), None);
    }

    #[test]
    fn client_request_ids_are_kept_only_when_asked_and_valid() {
        let r = req_with(&[("x-request-id", "client-42")]);
        assert_eq!(request_id(&r, true), "client-42");
        assert_ne!(request_id(&r, false), "client-42");
        let bad = req_with(&[("x-request-id", "has space")]);
        assert_eq!(request_id(&bad, true).len(), 36);
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
