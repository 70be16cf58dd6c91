//! HTTP/1.1 by hand, for tests where the bytes matter: a request written verbatim on a fresh
//! connection, and the answer parsed without a client library's normalisation.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer as it came over the wire.
pub struct RawResponse {
    pub status: u16,
    /// In the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// Everything after the header, undecoded.
    pub body: String,
}

impl RawResponse {
    /// Parses a status line and headers, and takes what follows the blank line as the body.
    pub fn parse(bytes: &[u8]) -> RawResponse {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line: {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        RawResponse {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` verbatim on a new connection and reads until the server closes it
/// (send `Connection: close`); panics after `timeout`.
pub async fn exchange(addr: SocketAddr, request: &str, timeout: Duration) -> RawResponse {
    let talk = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        buf
    };
    let buf = tokio::time::timeout(timeout, talk)
        .await
        .unwrap_or_else(|_| panic!("no answer within {timeout:?}"));
    RawResponse::parse(&buf)
}
