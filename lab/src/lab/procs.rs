//! Child processes, temporary directories and ports of a lab run, all cleaned up on drop,
//! and what every process of a run shares alike: its environment, its descriptor limit and
//! its CPU.
//!
//! Every child is started in its own process group and the whole group is killed on drop,
//! so a proxy that forks workers (nginx) leaves none behind, whether the run ends normally,
//! with an error, a panic or Ctrl-C (the future holding the guards is dropped).
//!
//! Alike for every child, whichever the proxy:
//! * The environment is the parent's minus [`SCRUBBED_ENV`] and every `NEURABALANCER_*`
//!   variable: a `DATABASE_URL` in the shell that runs `nb-bench` would otherwise turn on
//!   `neurabalancer`'s request recording, work that nginx and HAProxy do not do.
//! * The descriptor limit is the one `nb-bench` sets for itself at start
//!   ([`raise_nofile_limit`]) and its children inherit; nginx and HAProxy are told the same
//!   number in their files ([`nofile_limit`]).
//! * With pinning on ([`pin_lab`]; `nb-bench --no-pin` turns it off), the proxy runs on one
//!   CPU and `nb-bench` (the load generator) and the fleet on another, through `taskset`,
//!   whose CPU set a process keeps across `exec` and passes on to the workers it forks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(20);

/// A directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `prefix`, this process and a counter.
    pub fn new(prefix: &str) -> io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running child process (and its process group), killed on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` in a new process group with stdin closed, stdout and stderr going to
    /// `log` and the recording variables removed from its environment ([`scrub_env`]).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        scrub_env(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name} ({:?}): {e}", cmd.get_program())))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// [`ChildGuard::spawn`] on the CPU of `role` when pinning is on ([`pin_lab`]), as is
    /// otherwise.
    pub fn spawn_as(role: Role, name: &str, cmd: &mut Command, log: &Path) -> io::Result<Self> {
        match PINNING.get() {
            Some(Pinning::On {
                proxy_cpu,
                load_cpu,
                taskset,
            }) => {
                let cpu = match role {
                    Role::Proxy => *proxy_cpu,
                    Role::Fleet => *load_cpu,
                };
                Self::spawn(name, &mut on_cpu(cmd, taskset, cpu), log)
            }
            _ => Self::spawn(name, cmd, log),
        }
    }

    /// `Err` with the exit status and the end of the log if the child has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Everything the child wrote, once it has exited (waiting up to 5 s; a child still
    /// running then is killed and what it wrote so far returned).
    pub fn output(mut self) -> String {
        for _ in 0..500 {
            if self.check_running().is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the child's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Kills the process group and reaps the child.
    fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // The leader is gone; its group may still have members (nginx workers).
            kill_group(self.child.id());
            return;
        }
        if !kill_group(self.child.id()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to process group `pgid`; whether `kill` could be run and succeeded.
fn kill_group(pgid: u32) -> bool {
    Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Variables no child of the lab inherits, besides every `NEURABALANCER_*` one (the admin
/// token, and any the proxy may read in future). `DATABASE_URL` is the default
/// `storage.database_url_env` of `neurabalancer`: set, it records every request.
pub const SCRUBBED_ENV: [&str; 1] = ["DATABASE_URL"];

/// Removes [`SCRUBBED_ENV`] and every `NEURABALANCER_*` variable of this process from what
/// `cmd` passes on (after any `env` the caller set: removal wins).
pub fn scrub_env(cmd: &mut Command) {
    for name in SCRUBBED_ENV {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("NEURABALANCER_") {
            cmd.env_remove(name);
        }
    }
}

/// Most file descriptors a process of the lab gets, whatever the hard limit: nginx
/// allocates every `worker_connections` slot up front, and a run needs a few thousand at
/// most (≤ 1500 req/s with deadlines of a second or two).
pub const NOFILE_CAP: u64 = 65_536;

/// Sets this process's soft `RLIMIT_NOFILE` to its hard limit, at most [`NOFILE_CAP`]
/// (lowering a larger soft limit, so that every process of a run has the same); the
/// children of the lab inherit it. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    let want = hard.min(NOFILE_CAP);
    if want != soft {
        rlimit::Resource::NOFILE.set(want, hard)?;
    }
    Ok(want)
}

/// The soft `RLIMIT_NOFILE` of this process: what a child of the lab inherits, and what
/// nginx and HAProxy are told to use (1024, the usual default, if it cannot be read).
pub fn nofile_limit() -> u64 {
    rlimit::Resource::NOFILE.get_soft().unwrap_or(1024)
}

/// Where a child of the lab runs when pinning is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The proxy under test (`neurabalancer`, nginx and its workers, HAProxy).
    Proxy,
    /// The fleet (`backend-sim`), on the load generator's CPU.
    Fleet,
}

/// Whether the lab pins its processes to CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinning {
    Off {
        reason: String,
    },
    /// The proxy on `proxy_cpu`; `nb-bench` and the fleet on `load_cpu`.
    On {
        proxy_cpu: usize,
        load_cpu: usize,
        taskset: PathBuf,
    },
}

static PINNING: OnceLock<Pinning> = OnceLock::new();

/// Decides pinning once for this process, and with it on, pins every thread of this
/// process (the load generator) to the second allowed CPU; later children are pinned by
/// [`ChildGuard::spawn_as`]. Off when `enabled` is false (`--no-pin`), when fewer than two
/// CPUs are allowed, or when `taskset` is missing or fails. A second call returns the
/// first decision.
pub fn pin_lab(enabled: bool) -> &'static Pinning {
    PINNING.get_or_init(|| decide_pinning(enabled))
}

fn decide_pinning(enabled: bool) -> Pinning {
    let off = |reason: &str| Pinning::Off { reason: reason.into() };
    if !enabled {
        return off("--no-pin");
    }
    let cpus = allowed_cpus();
    let [proxy_cpu, load_cpu, ..] = cpus[..] else {
        return off(&format!("{} CPU allowed; pinning needs two", cpus.len()));
    };
    let Some(taskset) = find_program("taskset") else {
        return off("taskset (util-linux) not found");
    };
    // -a: every thread of nb-bench, the tokio workers included; threads started later
    // inherit the CPU set of the thread that starts them.
    let pinned = Command::new(&taskset)
        .args(["-a", "-p", "-c", &load_cpu.to_string(), &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match pinned {
        Ok(s) if s.success() => Pinning::On {
            proxy_cpu,
            load_cpu,
            taskset,
        },
        Ok(s) => off(&format!("taskset could not pin nb-bench ({s})")),
        Err(e) => off(&format!("taskset could not run: {e}")),
    }
}

/// The pinning decision ([`pin_lab`]); `None` before it was made.
pub fn pinning() -> Option<&'static Pinning> {
    PINNING.get()
}

/// One line on where the lab's processes ran, for the results' notes.
pub fn pinning_description() -> String {
    match PINNING.get() {
        Some(Pinning::On {
            proxy_cpu, load_cpu, ..
        }) => format!(
            "CPU pinning on (taskset): the proxy (with nginx's workers) on CPU {proxy_cpu}; the load generator \
             (nb-bench) and the fleet (backend-sim) on CPU {load_cpu}"
        ),
        Some(Pinning::Off { reason }) => format!("CPU pinning off ({reason}): the OS places every process"),
        None => "CPU pinning off (not requested): the OS places every process".into(),
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`), in
/// order; empty if unknown.
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|list| parse_cpu_list(list.trim()))
        .unwrap_or_default()
}

/// `0-2,5` → `[0, 1, 2, 5]`; malformed parts are skipped.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<usize>().ok().zip(b.parse().ok()),
            None => part.parse::<usize>().ok().map(|c| (c, c)),
        };
        if let Some((a, b)) = range {
            cpus.extend(a..=b);
        }
    }
    cpus
}

/// `name` on `PATH`, else in `/usr/bin` or `/bin`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `cmd` run through `taskset -c cpu`: same program, arguments, environment changes and
/// working directory (stdio and the process group are set by [`ChildGuard::spawn`]).
/// `taskset` execs the program, so the child keeps its pid and its group.
fn on_cpu(cmd: &Command, taskset: &Path, cpu: usize) -> Command {
    let mut wrapped = Command::new(taskset);
    wrapped
        .arg("-c")
        .arg(cpu.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `n` distinct free loopback ports.
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold every listener until all are chosen, so that no port comes up twice.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Waits until every address accepts TCP connections, while `child` keeps running.
pub async fn wait_listening(child: &mut ChildGuard, addrs: &[SocketAddr], limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut pending: Vec<SocketAddr> = addrs.to_vec();
    loop {
        child.check_running()?;
        pending.retain(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err());
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} is not listening on {pending:?} after {limit:?}; its log ends:\n{}",
                child.name,
                child.log_tail()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `GET url_path` on `addr` answers 200, while `child` keeps running.
pub async fn wait_http_200(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        child.check_running()?;
        let last = match http_get(addr, path, Duration::from_millis(500)) {
            Ok((200, _)) => return Ok(()),
            Ok((code, _)) => format!("status {code}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: GET {path} on {addr} did not answer 200 within {limit:?} (last: {last}); its log ends:\n{}",
                child.name,
                child.log_tail()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A one-shot `GET` (blocking, `Connection: close`, `timeout` for the connect and each read
/// and write): the status and the body, for readiness checks and the fleet's stats. Chunked
/// bodies are refused, not decoded.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    // Read until the connection closes or the head and `Content-Length` bytes are in, so a
    // server that keeps the connection open anyway does not hold the caller to the timeout.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| raw.len() >= end + 4 + n) || head.contains("transfer-encoding: chunked") {
                break;
            }
        }
        match s.read(&mut buf)? {
            0 => break,
            k => raw.extend_from_slice(&buf[..k]),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("not an HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("not an HTTP answer"))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(bad("chunked answers are not read here"));
    }
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one connection with `answer` and keeps it open for a while (a server that
    /// ignores `Connection: close`).
    fn serve_once(answer: &'static str) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            c.write_all(answer.as_bytes()).expect("write");
            std::thread::sleep(Duration::from_secs(3));
        });
        addr
    }

    #[test]
    fn http_get_reads_status_and_body_without_waiting_for_the_close() {
        let addr = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nnope!");
        let started = Instant::now();
        let got = http_get(addr, "/health/ready", Duration::from_secs(2)).expect("answer");
        assert_eq!(got, (503, "nope!".to_string()));
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        let addr = serve_once("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        let e = http_get(addr, "/stats", Duration::from_millis(300)).expect_err("chunked");
        assert!(e.to_string().contains("chunked"), "{e}");
    }

    #[test]
    fn temp_dirs_are_removed_and_ports_distinct() {
        let dir = TempDir::new("nb-lab-test").expect("temp dir");
        let path = dir.path().to_owned();
        std::fs::write(path.join("f"), "x").expect("write");
        drop(dir);
        assert!(!path.exists());
        let ports = free_ports(20).expect("ports");
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), 20);
    }

    #[test]
    fn a_child_does_not_get_the_recording_variables() {
        let dir = TempDir::new("nb-lab-test").expect("temp dir");
        let log = dir.path().join("env.log");
        // Set on the command too: the scrub wins over what a caller passes.
        let mut cmd = Command::new("env");
        cmd.env("DATABASE_URL", "postgres://x").env("NB_LAB_KEPT", "1");
        let text = ChildGuard::spawn("env", &mut cmd, &log).expect("spawn").output();
        assert!(text.contains("NB_LAB_KEPT=1"), "{text}");
        assert!(!text.contains("DATABASE_URL"), "{text}");
        assert!(!text.contains("NEURABALANCER_"), "{text}");
    }

    #[test]
    fn cpu_lists_parse_and_a_wrapped_child_runs_on_its_cpu() {
        assert_eq!(parse_cpu_list("0-2,5"), [0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("3"), [3]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        let Some(taskset) = find_program("taskset") else {
            eprintln!("note: taskset not found; pinning not tested");
            return;
        };
        let cpu = *allowed_cpus().last().expect("at least one CPU");
        let dir = TempDir::new("nb-lab-test").expect("temp dir");
        let log = dir.path().join("cpus.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status; echo \"x=$NB_LAB_X\""])
            .env("NB_LAB_X", "kept");
        let wrapped = &mut on_cpu(&cmd, &taskset, cpu);
        let text = ChildGuard::spawn("sh", wrapped, &log).expect("spawn").output();
        assert!(text.contains(&format!("Cpus_allowed_list:\t{cpu}\n")), "{text}");
        assert!(text.contains("x=kept"), "{text}");
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit_within_the_cap() {
        let (_, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        let n = raise_nofile_limit().expect("setrlimit");
        assert_eq!(n, hard.min(NOFILE_CAP));
        assert_eq!(nofile_limit(), n);
    }

    #[test]
    fn a_child_and_its_group_are_killed_on_drop() {
        let dir = TempDir::new("nb-lab-test").expect("temp dir");
        let log = dir.path().join("log");
        // A shell that starts a grandchild in the same group, like an nginx master.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & echo $!; wait"]);
        let guard = ChildGuard::spawn("sh", &mut cmd, &log).expect("spawn");
        let mut grandchild = String::new();
        for _ in 0..100 {
            grandchild = std::fs::read_to_string(&log).unwrap_or_default();
            if !grandchild.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = grandchild.trim().to_owned();
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "grandchild {pid:?} runs");
        drop(guard);
        // Killed, then reaped by init; wait for it to vanish from /proc.
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.contains(") Z ")
        });
        assert!(gone, "grandchild {pid} survived");
    }
}
