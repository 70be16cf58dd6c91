//! A throwaway PostgreSQL server for integration tests.
//!
//! [`PgCluster::start`] creates a fresh cluster in a temporary directory (data dir, unix socket
//! dir and server log), starts it on a free `127.0.0.1` port with trust authentication and
//! durability switched off (`fsync`, `synchronous_commit`, `full_page_writes`), and waits until
//! it accepts connections. Each cluster has its own port and directories, so tests running on
//! parallel threads each get their own. [`PgCluster::create_database`] hands out uniquely named
//! empty databases; [`PgCluster::stop`] and [`PgCluster::restart`] take the server down and up
//! again on the same port with the same data, to test reconnect behaviour.
//!
//! Dropping the cluster stops the server (`pg_ctl -m immediate`) and deletes the directory, also
//! when the test panics. A watchdog process (`sh`, in its own process group) does the same if the
//! test process dies without dropping it (killed, aborted, `process::exit`): it waits for EOF on
//! a pipe whose other end only the test process holds. So no postgres is left behind.
//!
//! The server binaries are the newest `/usr/lib/postgresql/*/bin` (Debian layout) or the
//! directory in `PG_BINDIR`; `scripts/setup.sh` installs them. When we run as root (initdb
//! refuses to) they run as the `postgres` user via `runuser`. `initdb` runs once per machine and
//! major version: its result (about 40 MB) is kept as a template under cargo's
//! `CARGO_TARGET_TMPDIR` (`target/tmp/pg-template-*`; `cargo clean` removes it) and copied
//! for each cluster. The clusters live in `/dev/shm` when that is a roomy tmpfs, else in the
//! temp dir. A start then takes about 0.2 s (a first one, with initdb, about 0.7 s); most of it
//! is `pg_ctl -w` polling in 100 ms steps. `stop` and `restart` block for about 0.1 s each.
//!
//! **`DATABASE_URL` overrides all of this:** when it is set, no server is started and the
//! databases are created on that server (and dropped again when the `PgCluster` is dropped).
//! Such a server is not ours to stop, so [`PgCluster::can_restart`] is false there and
//! [`PgCluster::stop`] / [`PgCluster::restart`] panic; tests that need them check `can_restart()`
//! first and skip.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The user the server runs as when we are root.
const PG_USER: &str = "postgres";
/// Attempts at finding a port nobody else grabs between `free_port()` and the server's bind.
const PORT_ATTEMPTS: usize = 5;

pub struct PgCluster {
    kind: Kind,
}

enum Kind {
    Local(Local),
    External(External),
}

impl PgCluster {
    /// A fresh local cluster, or the server in `DATABASE_URL` when that is set (see the module
    /// docs). Panics with the reason (and the server log) when the server does not come up.
    ///
    /// The blocking work (copy, `pg_ctl`) runs on tokio's blocking pool, so the test's runtime
    /// keeps running meanwhile.
    pub async fn start() -> PgCluster {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("DATABASE_URL is set but connecting to it failed: {e}"));
            drop(conn);
            drop(client);
            return PgCluster {
                kind: Kind::External(External {
                    url,
                    created: Mutex::new(Vec::new()),
                }),
            };
        }
        Self::start_local(false).await
    }

    /// Like [`start`](Self::start) (and also overridden by `DATABASE_URL`), but with
    /// PostgreSQL's default durability and on disk: what benchmarks measure against.
    pub async fn start_durable() -> PgCluster {
        if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
            return Self::start().await;
        }
        Self::start_local(true).await
    }

    async fn start_local(durable: bool) -> PgCluster {
        match tokio::task::spawn_blocking(move || Local::start(durable)).await {
            Ok(local) => PgCluster {
                kind: Kind::Local(local),
            },
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("starting PostgreSQL: {e}"),
            },
        }
    }

    /// URL of the `postgres` database, for administrative statements.
    pub fn admin_url(&self) -> String {
        match &self.kind {
            Kind::Local(l) => l.url("postgres"),
            Kind::External(x) => x.url.clone(),
        }
    }

    /// Creates an empty database whose name starts with `nbt_` and a cleaned-up `name_hint`
    /// and is unique per process and call (it contains the pid, a per-process random tag and a
    /// counter), and returns its URL: `postgres://postgres@127.0.0.1:PORT/NAME` for a local
    /// cluster; `DATABASE_URL` with the database replaced for an external one.
    pub async fn create_database(&self, name_hint: &str) -> String {
        let name = unique_db_name(name_hint);
        let admin = self.admin_url();
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {admin}: {e}\n{}", self.log()));
        let conn = tokio::spawn(conn);
        if let Kind::External(x) = &self.kind {
            // Recorded first, so a half-made database is dropped, too.
            x.created.lock().expect("created list").push(name.clone());
        }
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}\n{}", self.log()));
        drop(client);
        let _ = conn.await;
        match &self.kind {
            Kind::Local(l) => l.url(&name),
            Kind::External(x) => with_dbname(&x.url, &name),
        }
    }

    /// Whether [`stop`](Self::stop) and [`restart`](Self::restart) are available (false with
    /// `DATABASE_URL`).
    pub fn can_restart(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }

    /// Stops the server (`pg_ctl -m fast`: open sessions are cut off) and returns when it is
    /// down. The data directory and port are kept for [`restart`](Self::restart).
    /// Panics with `DATABASE_URL` or when the server is not running.
    pub fn stop(&self) {
        self.local("stop").stop_server();
    }

    /// Starts the server again on the same port with the same data and returns when it accepts
    /// connections; stops it first when it is running. URLs handed out before stay valid.
    /// Panics with `DATABASE_URL`, or when the port has been taken meanwhile.
    pub fn restart(&self) {
        let l = self.local("restart");
        if l.is_running() {
            l.stop_server();
        }
        if let Err(e) = l.start_server() {
            panic!("restart on port {}: {e}\n{}", l.port, l.log());
        }
    }

    /// The server log (empty for an external server), for assertion messages.
    pub fn log(&self) -> String {
        match &self.kind {
            Kind::Local(l) => l.log(),
            Kind::External(_) => String::new(),
        }
    }

    /// The port of a local cluster.
    pub fn port(&self) -> Option<u16> {
        match &self.kind {
            Kind::Local(l) => Some(l.port),
            Kind::External(_) => None,
        }
    }

    /// The data directory of a local cluster (its `postmaster.pid` names the server process).
    pub fn data_dir(&self) -> Option<PathBuf> {
        match &self.kind {
            Kind::Local(l) => Some(l.data()),
            Kind::External(_) => None,
        }
    }

    /// The temporary directory holding data dir, socket dir and log; removed on drop.
    pub fn root_dir(&self) -> Option<PathBuf> {
        match &self.kind {
            Kind::Local(l) => Some(l.root.path().to_path_buf()),
            Kind::External(_) => None,
        }
    }

    /// The pid of the running postmaster, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        match &self.kind {
            Kind::Local(l) => l.postmaster_pid(),
            Kind::External(_) => None,
        }
    }

    fn local(&self, what: &str) -> &Local {
        match &self.kind {
            Kind::Local(l) => l,
            Kind::External(_) => panic!(
                "PgCluster::{what}: DATABASE_URL is set and that server is not managed by the tests; \
                 check can_restart() first"
            ),
        }
    }
}

/// Whether process `pid` exists and is not a zombie. (A postmaster that has exited can stay a
/// zombie until init reaps it.)
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "PID (COMM) STATE ...": COMM may contain anything, so look after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// A server started and owned by this process.
struct Local {
    /// Holds `data/`, `sock/` and `postgres.log`; owned by the server's user.
    root: tempfile::TempDir,
    port: u16,
    bins: &'static Bins,
    /// Cleans up if this process dies without dropping us; see [`spawn_watchdog`].
    watchdog: Option<Child>,
    /// Default durability settings (fsync and all) instead of the fast test settings.
    durable: bool,
}

impl Local {
    fn start(durable: bool) -> Local {
        let bins = bins();
        let template = template(bins);
        let base = if durable {
            std::env::temp_dir()
        } else {
            scratch_base().to_path_buf()
        };
        let root = tempfile::Builder::new()
            .prefix("nb-pg-")
            .tempdir_in(base)
            .expect("temp dir for PostgreSQL");
        let watchdog = spawn_watchdog(bins, root.path());
        let mut local = Local {
            root,
            port: super::free_port(),
            bins,
            watchdog: Some(watchdog),
            durable,
        };
        std::fs::create_dir(local.sock()).expect("socket dir");
        let cp = run(Command::new("cp").arg("-a").arg(template).arg(local.data()));
        assert!(cp.status.success(), "copy template: {}", describe(&cp));
        if bins.as_postgres {
            let chown = run(Command::new("chown")
                .arg(format!("{PG_USER}:{PG_USER}"))
                .arg(local.root.path())
                .arg(local.sock()));
            assert!(chown.status.success(), "chown: {}", describe(&chown));
        }
        let mut attempt = 1;
        loop {
            match local.start_server() {
                Ok(()) => return local,
                Err(e) if attempt < PORT_ATTEMPTS && local.log().contains("already in use") => {
                    eprintln!("PgCluster: port {} taken ({e}), trying another", local.port);
                    local.port = super::free_port();
                    attempt += 1;
                }
                Err(e) => panic!("PostgreSQL did not start: {e}\nserver log:\n{}", local.log()),
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("postgres.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// `pg_ctl start -w`: returns when the server accepts connections or has failed.
    fn start_server(&self) -> Result<(), String> {
        let fast = if self.durable {
            ""
        } else {
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1{fast}",
            self.port,
            self.sock().display()
        );
        let out = run(self
            .bins
            .command("pg_ctl", self.root.path())
            .arg("-D")
            .arg(self.data())
            .arg("-o")
            .arg(opts)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"]));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl start: {}", describe(&out)))
        }
    }

    fn stop_server(&self) {
        let out = run(&mut self.pg_ctl_stop("fast"));
        assert!(
            out.status.success(),
            "pg_ctl stop: {}\nserver log:\n{}",
            describe(&out),
            self.log()
        );
    }

    fn pg_ctl_stop(&self, mode: &str) -> Command {
        let mut cmd = self.bins.command("pg_ctl", self.root.path());
        cmd.arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        cmd
    }

    fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(pid_alive)
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let pid = self.postmaster_pid();
        let _ = self.pg_ctl_stop("immediate").output();
        if let Some(pid) = pid.filter(|&p| pid_alive(p)) {
            // pg_ctl could not stop it (it should have); its children exit when it is gone.
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).output();
        }
        if let Some(mut w) = self.watchdog.take() {
            if let Some(mut stdin) = w.stdin.take() {
                let _ = stdin.write_all(b"done\n");
            }
            let _ = w.wait();
        }
        // `root` is removed when the field is dropped, right after this.
    }
}

/// Starts `sh` in its own process group (so a Ctrl-C or a kill of the test's group does not
/// take it along) reading its stdin, whose write end only this process holds (std opens pipes
/// close-on-exec). When it reads "done" we cleaned up ourselves; on EOF this process died
/// without dropping the cluster, and the watchdog stops the server and removes the directory.
fn spawn_watchdog(bins: &Bins, root: &Path) -> Child {
    const SCRIPT: &str = r#"trap '' INT TERM HUP
read -r line
[ "$line" = done ] && exit 0
"$@" -D "$NB_PG_ROOT/data" -m immediate -w -t 30 stop
rm -rf "$NB_PG_ROOT""#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(SCRIPT).arg("nb-pg-watchdog");
    if bins.as_postgres {
        cmd.args(["runuser", "-u", PG_USER, "--"]);
    }
    cmd.arg(bins.dir.join("pg_ctl"))
        .env("NB_PG_ROOT", root)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the PostgreSQL watchdog (sh)")
}

/// An external server (`DATABASE_URL`).
struct External {
    url: String,
    /// Databases to drop when done.
    created: Mutex<Vec<String>>,
}

impl Drop for External {
    fn drop(&mut self) {
        let names = std::mem::take(self.created.get_mut().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        let url = self.url.clone();
        // Drop may run inside the test's runtime, which we must not block on; use our own.
        let dropper = super::on_own_thread(move || async move {
            let work = async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                for n in &names {
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                        .await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(10), work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("PgCluster: dropping test databases {names:?}: {e}"),
                Err(_) => eprintln!("PgCluster: dropping test databases {names:?} timed out"),
            }
        });
        let _ = dropper.join();
    }
}

/// Where the server binaries are and how to run them.
struct Bins {
    dir: PathBuf,
    /// Run them as [`PG_USER`] via `runuser` (we are root, and initdb/postgres refuse root).
    as_postgres: bool,
    /// e.g. "15"
    major: String,
}

impl Bins {
    fn command(&self, bin: &str, cwd: &Path) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(self.dir.join(bin));
            c
        } else {
            Command::new(self.dir.join(bin))
        };
        // A cwd the server user may enter (the tests' own may not be).
        cmd.current_dir(cwd);
        cmd
    }
}

fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = std::env::var_os("PG_BINDIR")
            .map(PathBuf::from)
            .or_else(newest_debian_bindir)
            .expect(
                "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: run scripts/setup.sh, \
                 set PG_BINDIR, or set DATABASE_URL to use an existing server",
            );
        let as_postgres = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        let v = run(Command::new(dir.join("initdb")).arg("--version"));
        assert!(
            v.status.success(),
            "{}/initdb --version: {}",
            dir.display(),
            describe(&v)
        );
        // "initdb (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let major = String::from_utf8_lossy(&v.stdout)
            .split_whitespace()
            .nth(2)
            .and_then(|ver| ver.split('.').next())
            .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("unexpected initdb --version: {}", String::from_utf8_lossy(&v.stdout)));
        Bins {
            dir,
            as_postgres,
            major,
        }
    })
}

/// The `bin` directory of the highest version under /usr/lib/postgresql.
fn newest_debian_bindir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, bin)| bin)
}

/// Where the clusters' directories go: `/dev/shm` when it is a tmpfs with at least 1 GiB
/// free (creating the cluster's thousand files there is ten times faster than on this disk),
/// else the usual temp dir. Either must be reachable by the server's user.
fn scratch_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        // "/proc/mounts": device, mount point, type, ...
        let is_tmpfs = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().skip(1).take(2).eq(["/dev/shm", "tmpfs"]))
        });
        // `df -Pk`: the second line's fourth field is the free space in KiB.
        let free_kib = || {
            let out = Command::new("df").args(["-Pk"]).arg(shm).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok()
        };
        if is_tmpfs && free_kib().is_some_and(|k| k >= 1 << 20) {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

/// A data directory fresh from initdb (owned by the server's user), made once per machine,
/// major version and user and kept in cargo's per-target temp dir.
fn template(bins: &'static Bins) -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Bump the suffix when the initdb options change.
        let path = cache.join(format!("pg-template-{}-uid{uid}-v1", bins.major));
        if path.join("PG_VERSION").is_file() {
            return path;
        }
        // initdb in a place the server user can reach, then copy it next to its final path and
        // rename it there: another test process may be doing the same, and only complete
        // templates may ever appear under `path`.
        let staging = tempfile::Builder::new()
            .prefix("nb-pg-initdb-")
            .tempdir_in(scratch_base())
            .expect("temp dir for initdb");
        if bins.as_postgres {
            let chown = run(Command::new("chown")
                .arg(format!("{PG_USER}:{PG_USER}"))
                .arg(staging.path()));
            assert!(chown.status.success(), "chown: {}", describe(&chown));
        }
        let data = staging.path().join("data");
        let initdb = run(bins.command("initdb", staging.path()).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            PG_USER,
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]));
        assert!(initdb.status.success(), "initdb: {}", describe(&initdb));
        std::fs::create_dir_all(cache).expect("CARGO_TARGET_TMPDIR");
        let copy = cache.join(format!(".pg-template-{}-{}", std::process::id(), random_tag()));
        let cp = run(Command::new("cp").arg("-a").arg(&data).arg(&copy));
        assert!(cp.status.success(), "copy initdb result: {}", describe(&cp));
        if std::fs::rename(&copy, &path).is_err() {
            // Someone else was faster; theirs is as good.
            let _ = run(Command::new("rm").arg("-rf").arg(&copy));
            assert!(path.join("PG_VERSION").is_file(), "template {} missing", path.display());
        }
        path
    })
}

/// `nbt_<hint>_<pid>_<tag>_<n>`: at most 63 bytes, only `[a-z0-9_]`.
fn unique_db_name(hint: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(random_tag);
    let mut hint: String = hint
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect();
    if hint.is_empty() {
        hint.push_str("db");
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("nbt_{hint}_{}_{tag}_{n}", std::process::id())
}

/// Six random hex digits (std's per-process random hash keys; no dependency needed).
fn random_tag() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// `url` with its database replaced by `db`: the path of a `postgres://` URL, or an added
/// `dbname=` for a key/value connection string (later keys win).
fn with_dbname(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={db}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end + 3..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + 3 + i);
    format!("{}/{db}{query}", &base[..authority_end])
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Exit status and output of a finished command, for panic messages.
fn describe(out: &Output) -> String {
    format!(
        "{}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
}
