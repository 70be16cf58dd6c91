//! The accept loop shared by backends and the echo server.
//!
//! Why not `hyper_util`'s graceful server: the point of a simulated backend is
//! to misbehave on command. A stop must look like a crash to the proxy — the
//! listener closes *and* every open connection, including ones with a request
//! in flight, is dropped at once. So the accept loop owns all connection tasks
//! in a [`JoinSet`]; on shutdown it drops the listener and aborts the set, and
//! [`Running::stop`] returns only when all of that has happened.
//!
//! Dropping a [`Running`] (e.g. with the last handle) drops the shutdown
//! sender, which the loop treats like a stop, so nothing is leaked.
//!
//! While a backend is down its port stays *reserved*: [`reserve`] binds a
//! socket without listening on it, so connections are refused (as with a
//! crash) but no other process can take the port before the backend comes
//! back, and a backend that joins late knows its address from the start.
//!
//! A handler may also end a connection without answering ([`HangUp`]): that
//! is how a simulated hang finally gives up.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Response body type of every handler: boxed so that fixed bodies and
/// streamed ones (echo) share one connection driver.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Answers requests of one server. A handler that cannot answer (e.g. the
/// client vanished while its body was read) simply returns a response that
/// hyper will fail to deliver; [`HangUp`] closes the connection unanswered.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Result<Response<Body>, HangUp>> + Send;
}

/// Returned by a handler to close the connection without a response.
#[derive(Debug, thiserror::Error)]
#[error("closed without answering")]
pub(crate) struct HangUp;

/// Listen backlog of every server.
const BACKLOG: u32 = 1024;

/// Binds `addr` with `SO_REUSEADDR`, so that a restarted backend gets the same
/// port back even while connections of its previous life sit in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    reserve(addr)?.listen(BACKLOG)
}

/// Binds `addr` (`SO_REUSEADDR`) without listening: the port is ours, but
/// connecting to it is refused until [`listen`] is called.
pub(crate) fn reserve(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Starts listening on a socket from [`reserve`].
pub(crate) fn listen(socket: TcpSocket) -> io::Result<TcpListener> {
    socket.listen(BACKLOG)
}

/// A server task running on a bound listener.
#[derive(Debug)]
pub(crate) struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Starts serving `listener` with `handler`.
    pub(crate) fn start<H: Handler>(listener: TcpListener, handler: Arc<H>) -> Self {
        let (shutdown, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, handler, rx));
        Self { shutdown, task }
    }

    /// Closes the listener and drops every open connection; returns when done.
    pub(crate) async fn stop(self) {
        // The loop may already be gone (it only ends on shutdown); either way
        // awaiting the task below is what guarantees everything is closed.
        let _ = self.shutdown.send(());
        if let Err(err) = self.task.await {
            if err.is_panic() {
                tracing::error!("server task panicked: {err}");
            }
        }
    }
}

async fn accept_loop<H: Handler>(listener: TcpListener, handler: Arc<H>, mut shutdown: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // Ok: stop() was called; Err: the Running was dropped. Same thing.
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&handler)));
                }
                Err(err) => {
                    // Typically EMFILE under extreme load: back off instead of
                    // spinning, keep the listener.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection<H: Handler>(stream: TcpStream, handler: Arc<H>) {
    // Best effort: a failure only costs latency.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let handler = Arc::clone(&handler);
        async move { handler.handle(req).await }
    });
    if let Err(err) = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("connection ended with error: {err}");
    }
}
