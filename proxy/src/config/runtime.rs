//! Where the process keeps runtime files (the upgrade socket): a directory only the current
//! user can enter, so no other local user can bind the socket first and receive the
//! listening sockets. The path depends only on the user and `XDG_RUNTIME_DIR`, so the
//! running process and the one started with `run --upgrade` agree on it.

use std::path::{Path, PathBuf};

use super::{ServerSettings, UPGRADE_SOCK_NAME};

/// The private directory for runtime files such as the upgrade socket:
/// `$XDG_RUNTIME_DIR/neurabalancer` when that variable holds an absolute path, else
/// `/tmp/neurabalancer-<euid>`. Both the running process and the one started with
/// `--upgrade` compute it the same way (same user, same environment).
pub fn runtime_dir() -> Result<PathBuf, String> {
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if x.is_absolute() {
            return Ok(x.join("neurabalancer"));
        }
    }
    Ok(Path::new("/tmp").join(format!("neurabalancer-{}", euid()?)))
}

/// The effective user id, read as the owner of `/proc/self` (Linux gives a process's
/// directory its effective uid), which needs no `unsafe` call.
pub fn euid() -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("cannot tell the effective user id from /proc/self: {e}"))
}

/// Creates `dir` with mode 0700 if it is missing, and accepts it only when it is a real
/// directory (not a symlink) owned by the current user and closed to group and others:
/// whoever can create files in it could bind the upgrade socket first and receive the
/// listening sockets.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let shown = dir.display();
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {shown}: {e}")),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect {shown}: {e}"))?;
    if !m.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    let me = euid()?;
    if m.uid() != me {
        return Err(format!(
            "{shown} is owned by uid {}, not by this user (uid {me})",
            m.uid()
        ));
    }
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} has mode {mode:o}: it must not be accessible to group or others (chmod 700)"
        ));
    }
    Ok(())
}

/// The upgrade socket: `server.upgrade_sock` when set, else `upgrade.sock` in the private
/// [`runtime_dir`], which is created (0700) or checked here.
pub fn upgrade_sock(s: &ServerSettings) -> Result<PathBuf, String> {
    if let Some(p) = &s.upgrade_sock {
        return Ok(p.clone());
    }
    let dir = runtime_dir()?;
    ensure_private_dir(&dir)?;
    Ok(dir.join(UPGRADE_SOCK_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_is_created_0700_and_open_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let fresh = tmp.path().join("fresh");
        ensure_private_dir(&fresh).expect("created");
        let mode = std::fs::metadata(&fresh).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Idempotent: the next start (or the `--upgrade` process) accepts it.
        ensure_private_dir(&fresh).expect("accepted again");

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = ensure_private_dir(&open).expect_err("0777 refused");
        assert!(e.contains("mode 777"), "{e}");

        let file = tmp.path().join("file");
        std::fs::write(&file, "").expect("write");
        assert!(ensure_private_dir(&file).is_err());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).expect("symlink");
        assert!(ensure_private_dir(&link).is_err(), "a symlink is not followed");
    }

    #[test]
    fn explicit_upgrade_sock_wins() {
        let s = ServerSettings {
            upgrade_sock: Some(PathBuf::from("/run/x.sock")),
            ..ServerSettings::default()
        };
        assert_eq!(upgrade_sock(&s).expect("path"), Path::new("/run/x.sock"));
    }
}
