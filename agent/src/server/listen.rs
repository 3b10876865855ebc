//! The runtime directory and the listening sockets.
//!
//! The directory is created 0700 or tightened to it, and refused when it is a symlink or
//! belongs to another user. A socket file left by a dead agent is replaced; one with a
//! live agent behind it is not. Under systemd socket activation (`LISTEN_FDS`) the
//! passed socket is used as is and never removed by the agent.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A socket the agent listens on.
#[derive(Debug)]
pub struct Listener {
    /// The listening socket.
    pub socket: UnixListener,
    /// The file the agent created (removed at shutdown); `None` when systemd owns it.
    pub created: Option<PathBuf>,
}

/// Why the agent cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The runtime directory is unusable.
    #[error("runtime directory {path}: {why}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another agent answers on the socket.
    #[error("another waxseal-agent is already listening on {0}; stop it first or choose another --runtime-dir")]
    InUse(PathBuf),
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Creates `dir` with mode 0700, or checks and tightens an existing one: opened
/// without following a symlink, owner and kind checked and mode set through the opened
/// descriptor ([`crate::fsguard::open_dir`]).
pub fn prepare_dir(dir: &Path) -> Result<(), ListenError> {
    crate::fsguard::open_dir(dir)
        .map(drop)
        .map_err(|e| ListenError::Dir {
            path: dir.to_path_buf(),
            why: e.problem,
        })
}

/// System mode (`[agent] socket_group`): opens `dir` to `gid` for traversal only (0710,
/// so the group cannot list or plant files) and `socket` to it for connecting (0660).
/// Who may then sign is still decided per uid (`[agent] allow_uids`, `[[key]]
/// allow_uids`).
pub fn share_with_group(dir: &Path, socket: &Path, gid: u32) -> Result<(), ListenError> {
    let gid = Some(rustix::fs::Gid::from_raw(gid));
    let err = |path: &Path, what: &str, e: io::Error| ListenError::Dir {
        path: path.to_path_buf(),
        why: format!("cannot {what}: {e}"),
    };
    rustix::fs::chown(dir, None, gid)
        .map_err(|e| err(dir, "give it to the socket group", e.into()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o710))
        .map_err(|e| err(dir, "set mode 0710", e))?;
    rustix::fs::chown(socket, None, gid)
        .map_err(|e| err(socket, "give it to the socket group", e.into()))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o660))
        .map_err(|e| err(socket, "set mode 0660", e))
}

/// Binds `dir/name` with mode 0600, replacing a stale socket.
pub fn bind(dir: &Path, name: &str) -> Result<Listener, ListenError> {
    let path = dir.join(name);
    if let Ok(meta) = fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ListenError::Bind {
                path,
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ),
            });
        }
        if UnixStream::connect(&path).is_ok() {
            return Err(ListenError::InUse(path));
        }
        tracing::info!(path = %path.display(), "replacing a stale socket");
        fs::remove_file(&path).map_err(|source| ListenError::Bind {
            path: path.clone(),
            source,
        })?;
    }
    let socket = UnixListener::bind(&path).map_err(|source| ListenError::Bind {
        path: path.clone(),
        source,
    })?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        ListenError::Bind {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Listener {
        socket,
        created: Some(path),
    })
}

/// The sockets passed by systemd, by file name (`agent.sock`, `ssh.sock`).
///
/// `LISTEN_FDNAMES` (FileDescriptorName= in the unit) names them: `agent` or
/// `agent.sock`, `ssh` or `ssh.sock`. A single unnamed socket is taken as `agent.sock`.
/// Call before any thread starts: the `LISTEN_*` variables are consumed.
pub fn activated() -> io::Result<Vec<(String, Listener)>> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::new();
    for i in 0..fds.len() {
        let name = match names.get(i).map(String::as_str) {
            Some("agent" | "agent.sock") | None if i == 0 => "agent.sock",
            Some("agent" | "agent.sock") => "agent.sock",
            Some("ssh" | "ssh.sock") => "ssh.sock",
            Some(other) => {
                tracing::warn!(
                    name = other,
                    "ignoring a passed socket with an unknown name"
                );
                continue;
            }
            None => continue,
        };
        if let Some(socket) = fds.take_unix_listener(i)? {
            out.push((
                name.to_string(),
                Listener {
                    socket,
                    created: None,
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn dir_is_created_and_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/waxseal");
        prepare_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(prepare_dir(&link)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
    }

    #[test]
    fn stale_socket_replaced_live_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = bind(tmp.path(), "agent.sock").unwrap();
        let path = first.created.clone().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(matches!(
            bind(tmp.path(), "agent.sock"),
            Err(ListenError::InUse(_))
        ));
        drop(first); // the file stays, nobody listens: stale
        assert!(path.exists());
        let second = bind(tmp.path(), "agent.sock").unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(second);
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"not a socket").unwrap();
        assert!(
            bind(tmp.path(), "agent.sock").is_err(),
            "regular files are not removed"
        );
    }
}
