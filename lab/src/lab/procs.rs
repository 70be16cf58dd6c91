//! Child processes, temporary directories and ports of a lab run, all cleaned up on drop.
//!
//! Every child is started in its own process group and the whole group is killed on drop,
//! so a proxy that forks workers (nginx) leaves none behind, whether the run ends normally,
//! with an error, a panic or Ctrl-C (the future holding the guards is dropped).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
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
    /// Starts `cmd` in a new process group with stdin closed and stdout and stderr going
    /// to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
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
        let last = match http_get_status(addr, path) {
            Ok(200) => return Ok(()),
            Ok(code) => format!("status {code}"),
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

/// The status code of a one-shot `GET` (blocking, short timeouts; for readiness checks).
pub fn http_get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let timeout = Duration::from_millis(500);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP answer: {head:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
