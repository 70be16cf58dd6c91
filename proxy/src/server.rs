//! Assembles the Pingora server: the proxy service, the admin service, the control and
//! `ml` scorer background services and (when recording) the store's, with Pingora's settings
//! taken from our configuration.

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
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("upgrade socket: {0} (or set server.upgrade_sock)")]
    UpgradeSock(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0} is not set: name the database in it (storage.database_url_env)")]
    NoDatabase(String),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Migrate(#[from] crate::store::migrate::MigrateError),
    #[error("{0}")]
    Export(#[from] crate::store::export::ExportError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs a database command of the CLI on a small runtime of its own.
fn with_database<T>(main: &Path, f: impl AsyncFnOnce(String) -> Result<T, CliError>) -> Result<T, CliError> {
    let loaded = config::load(main)?;
    let st = &loaded.main.storage;
    let url = st
        .database_url()
        .ok_or_else(|| CliError::NoDatabase(st.database_url_env.clone()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(f(url))
}

/// `neurabalancer migrate`: applies the migrations; returns the versions applied.
pub fn migrate(main: &Path) -> Result<Vec<i32>, CliError> {
    with_database(main, async |url| {
        let client = crate::store::pg_connect(&url).await?;
        Ok(crate::store::migrate::apply(&client).await?)
    })
}

/// `neurabalancer export-training`: returns the number of rows written.
pub fn export_training(main: &Path, since: std::time::Duration, out: &Path) -> Result<u64, CliError> {
    with_database(main, async |url| {
        Ok(crate::store::export::export_training(&url, since, out).await?)
    })
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

/// Fails early with a clear message when an address cannot be bound, instead of a panic
/// deep inside Pingora's listener setup. All addresses are held at once, so two of ours that
/// collide (which `check` also rejects) fail here too; they are released just before Pingora
/// binds them, and [`exit_on_listener_failure`] covers whoever takes one in between.
fn probe_listen(addrs: &[(SocketAddr, &'static str)]) -> Result<(), StartError> {
    let mut held = Vec::with_capacity(addrs.len());
    for &(addr, what) in addrs {
        held.push(TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, what, source })?);
    }
    Ok(())
}

/// Whether a panic is Pingora failing to bind a service's listeners
/// (`services/listening.rs`: `.expect("Failed to build listeners")`).
fn is_listener_failure(msg: &str, file: &str) -> bool {
    msg.starts_with("Failed to build listeners") && file.contains("pingora-core") && file.ends_with("listening.rs")
}

/// Pingora binds each service's listeners inside that service's thread and panics there
/// when it cannot; the other services would keep running, leaving a process that looks alive
/// but does not serve. This hook turns exactly that panic into an exit with status 1; every
/// other panic (a request handler's included) goes to the previous hook as before.
fn exit_on_listener_failure() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let file = info.location().map(|l| l.file()).unwrap_or("");
        if is_listener_failure(msg, file) {
            eprintln!("cannot listen, exiting: {msg}");
            std::process::exit(1);
        }
        previous(info);
    }));
}

/// `neurabalancer run`: loads the configuration, then serves until a signal ends the process.
pub fn run(main: &Path, upgrade: bool) -> Result<(), StartError> {
    let loaded = config::load(main)?;
    init_tracing(loaded.main.telemetry.log_format);
    let m = loaded.main.clone();
    if !upgrade {
        probe_listen(&[(m.listen, "proxy listener"), (m.admin.listen, "admin listener")])?;
    }
    let upgrade_sock = config::upgrade_sock(&m.server).map_err(StartError::UpgradeSock)?;
    let token = std::env::var(&m.admin.token_env).ok().filter(|t| !t.is_empty());
    let (recorder, store) = crate::store::build(&m.storage)?;
    let shared = Shared::new(loaded, token, recorder);

    let conf = ServerConf {
        threads: m.threads,
        grace_period_seconds: Some(m.server.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_TIMEOUT_S),
        upstream_keepalive_pool_size: m.server.upstream_keepalive_pool_size,
        upgrade_sock: upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = crate::downstream::proxy_service(
        &server.configuration,
        Proxy::new(shared.clone()),
        &m.http.client_timeouts,
        "proxy",
    );
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

    let scorer = background_service("ml-scorer", crate::ml::Scorer { shared: shared.clone() });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(control);
    server.add_service(scorer);
    if let Some(store) = store {
        store.attach(shared.clone());
        server.add_service(background_service("store", store));
    }
    exit_on_listener_failure();
    tracing::info!(
        listen = %m.listen,
        admin = %m.admin.listen,
        threads = m.threads,
        recording = shared.recorder.is_on(),
        "neurabalancer starting"
    );
    server.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pingoras_listener_panic_is_recognised() {
        let file = "/root/.cargo/registry/src/index/pingora-core-0.9.1/src/services/listening.rs";
        assert!(is_listener_failure(
            "Failed to build listeners: BindError context: bind() failed on 127.0.0.1:1",
            file
        ));
        assert!(!is_listener_failure(
            "Failed to build listeners: x",
            "proxy/src/proxy.rs"
        ));
        assert!(!is_listener_failure("index out of bounds", file));
    }

    #[test]
    fn probe_holds_every_address_at_once() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = held.local_addr().expect("addr");
        let e = probe_listen(&[(taken, "proxy listener")]).expect_err("taken");
        let msg = e.to_string();
        assert!(msg.contains(&taken.to_string()) && msg.contains("os error"), "{msg}");
        drop(held);
        // Free, but named twice: the second bind meets the first.
        let e = probe_listen(&[(taken, "proxy listener"), (taken, "admin listener")]).expect_err("twice");
        assert!(e.to_string().contains("admin listener"), "{e}");
    }
}
