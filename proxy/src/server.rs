//! Assembles the Pingora server: the proxy service, the admin service and the control
//! background service, with Pingora's settings taken from our configuration.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{self, ConfigErrors, LoadedConfig, LogFormat};
use crate::control::Control;
use crate::proxy::Proxy;
use crate::state::Shared;

/// Runtime shutdown timeout after the grace period (Pingora's default is 5 s as well).
const RUNTIME_SHUTDOWN_TIMEOUT_S: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// `neurabalancer check`: validates both files.
pub fn check(main: &Path) -> Result<LoadedConfig, ConfigErrors> {
    config::load(main)
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Fails early with a clear message when a port is taken, instead of a panic deep inside
/// Pingora's listener setup.
fn probe_listen(addr: SocketAddr, what: &'static str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Listen { addr, what, source })
}

/// `neurabalancer run`: loads the configuration, then serves until a signal ends the process.
pub fn run(main: &Path, upgrade: bool) -> Result<(), StartError> {
    let loaded = config::load(main)?;
    init_tracing(loaded.main.telemetry.log_format);
    let m = loaded.main.clone();
    if !upgrade {
        probe_listen(m.listen, "proxy listener")?;
        probe_listen(m.admin.listen, "admin listener")?;
    }
    let token = std::env::var(&m.admin.token_env).ok().filter(|t| !t.is_empty());
    let shared = Shared::new(loaded, token);

    let conf = ServerConf {
        threads: m.threads,
        grace_period_seconds: Some(m.server.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_TIMEOUT_S),
        upstream_keepalive_pool_size: m.server.upstream_keepalive_pool_size,
        upgrade_sock: m.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, Proxy::new(shared.clone()), "proxy");
    proxy.add_tcp(&m.listen.to_string());

    let mut admin = Service::new("admin".to_string(), Admin::new(shared.clone()));
    admin.add_tcp(&m.admin.listen.to_string());
    admin.threads = Some(1);

    let control = background_service(
        "control",
        Control {
            shared: shared.clone(),
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(control);
    tracing::info!(listen = %m.listen, admin = %m.admin.listen, threads = m.threads, "neurabalancer starting");
    server.run_forever()
}
