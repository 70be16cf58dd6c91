//! Client connections: the HTTP/1 connection loop around Pingora's proxy, so that nginx's
//! client-side timeouts can be kept.
//!
//! Pingora 0.9's own loop (`ServerApp for HttpServerApp`) waits for a new connection's
//! request with a fixed 60 s per read, and for the next request on a kept-alive connection
//! with no limit at all (reading a header turns keep-alive to "infinite" for HTTP/1.1); its
//! keep-alive timeout, when set, counts whole seconds. This loop replaces it for HTTP/1:
//!
//! - before each request it waits for the first byte: `header_read_ms` on a new connection
//!   (`client_header_timeout`), `keepalive_ms` on a kept-alive one (`keepalive_timeout`);
//!   when that passes, or the server shuts down, the connection is closed without a word;
//! - the header is then read with `header_read_ms` as the read timeout, which Pingora applies
//!   to each read, not to the header as a whole (a client trickling a byte at a time within
//!   the limit is not cut off);
//! - `body_read_ms` and `send_ms` are set on the session in `early_request_filter`
//!   (`proxy.rs`), once the header is read.
//!
//! Connections that negotiated another protocol (HTTP/2 by ALPN, once there is TLS) go to
//! Pingora's loop unchanged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;

use crate::config::ClientTimeouts;
use crate::proxy::Proxy;

pub struct Downstream {
    proxy: Arc<HttpProxy<Proxy>>,
    header_read: Duration,
    keepalive: Duration,
}

/// The proxy service: [`Proxy`] behind this connection loop.
pub fn proxy_service(
    conf: &Arc<ServerConf>,
    proxy: Proxy,
    timeouts: &ClientTimeouts,
    name: &str,
) -> Service<Downstream> {
    Service::new(
        name.to_string(),
        Downstream {
            proxy: Arc::new(http_proxy(conf, proxy)),
            header_read: Duration::from_millis(timeouts.header_read_ms),
            keepalive: Duration::from_millis(timeouts.keepalive_ms),
        },
    )
}

/// Waits until the client sends a byte (left unread) or closes; false when `wait` passes
/// first, the server shuts down or the connection is gone.
async fn first_byte(stream: &mut Stream, wait: Duration, shutdown: &ShutdownWatch) -> bool {
    let mut shutdown = shutdown.clone();
    if *shutdown.borrow() {
        return false;
    }
    let mut b = [0u8; 1];
    tokio::select! {
        // A one-byte `read_exact` either completes or has taken nothing: safe to cancel.
        r = tokio::time::timeout(wait, stream.try_peek(&mut b)) => matches!(r, Ok(Ok(_))),
        _ = shutdown.wait_for(|down| *down) => false,
    }
}

#[async_trait]
impl ServerApp for Downstream {
    async fn process_new(self: &Arc<Self>, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(alpn) if alpn != ALPN::H1) {
            return self.proxy.process_new(stream, shutdown).await;
        }
        let mut wait = self.header_read;
        let mut settings = None;
        loop {
            if !first_byte(&mut stream, wait, shutdown).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings.take() {
                pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session);
            }
            // With keep-alive off while the header is read, Pingora times each read with the
            // read timeout (else with the keep-alive one, in whole seconds). Reading the
            // header sets keep-alive again from the request (`Connection`, version), and
            // the proxy turns it off while draining.
            session.set_keepalive(None);
            session.set_read_timeout(Some(self.header_read));
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
            wait = self.keepalive;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
