//! Opening the agent's own state without following what someone planted in its place.
//!
//! The state directory, the audit directory and the audit log are opened with
//! `O_NOFOLLOW`: a symbolic link where one of them should be is refused, never
//! followed, so the agent cannot be made to append its records to (or `chmod`) another
//! file. Each is then checked through the opened descriptor, not the path: it must be
//! of the right kind and belong to the user the agent runs as; directories are
//! tightened to 0700 and files to 0600 with `fchmod`. A log file with more than one
//! hard link is refused (another name could point at a victim file). The runtime
//! directory is checked the same way by `server::listen::prepare_dir`.
//!
//! Only the last component of a path is guarded: directories above it are the user's
//! choice (a state directory under a symlinked home is fine), as in README.md's "Run
//! the agent".

use std::fs::{File, Permissions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

/// A file or directory of the agent's state that cannot be used safely (or at all).
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct Unsafe {
    /// The path, as the agent was told or derived it.
    pub path: PathBuf,
    /// What is wrong, and what to do about it.
    pub problem: String,
}

impl Unsafe {
    fn new(path: &Path, problem: impl Into<String>) -> Unsafe {
        Unsafe {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

/// How [`open_file_at`] treats a missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Open it if it is there, create it (0600) if not.
    IfMissing,
    /// Create it; a file (or link) already there is refused (`O_EXCL`).
    New,
}

/// The uid the agent runs as.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Opens the directory `path` without following a symlink there, creating it (and its
/// parents) 0700 when missing; checks and tightens it (see the module doc).
pub fn open_dir(path: &Path) -> Result<File, Unsafe> {
    match open_dir_raw(CWD, path) {
        Err(Errno::NOENT) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| Unsafe::new(path, format!("cannot create the directory: {e}")))?;
        }
        Err(e) => return Err(dir_error(CWD, path, path, e)),
        Ok(fd) => return checked_dir(fd, path),
    }
    let fd = open_dir_raw(CWD, path).map_err(|e| dir_error(CWD, path, path, e))?;
    checked_dir(fd, path)
}

/// Opens the directory `name` inside `parent` (whose path is `parent_path`), without
/// following a symlink, creating it 0700 when missing; checks and tightens it.
pub fn open_subdir(parent: &File, parent_path: &Path, name: &str) -> Result<File, Unsafe> {
    let path = parent_path.join(name);
    match open_dir_raw(parent, Path::new(name)) {
        Err(Errno::NOENT) => match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(Unsafe::new(
                    &path,
                    format!("cannot create the directory: {}", io::Error::from(e)),
                ))
            }
        },
        Err(e) => return Err(dir_error(parent, Path::new(name), &path, e)),
        Ok(fd) => return checked_dir(fd, &path),
    }
    let fd = open_dir_raw(parent, Path::new(name))
        .map_err(|e| dir_error(parent, Path::new(name), &path, e))?;
    checked_dir(fd, &path)
}

/// Opens the regular file `name` in `dir` for reading and writing, without following a
/// symlink; checks it (owner, one link) and tightens it to 0600. `path` names it in
/// errors. Not `O_APPEND`: the audit log writes its records at offsets it picks, into
/// space it preallocated (docs/architecture.md, "The audit log").
pub fn open_file_at(dir: &File, path: &Path, name: &str, create: Create) -> Result<File, Unsafe> {
    let mut flags = OFlags::RDWR
        | OFlags::CREATE
        | OFlags::NOFOLLOW
        | OFlags::NOCTTY
        | OFlags::NONBLOCK
        | OFlags::CLOEXEC;
    if create == Create::New {
        flags |= OFlags::EXCL;
    }
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| file_error(dir, name, path, e))?;
    let file = File::from(fd);
    check_file(&file, path, true)?;
    Ok(file)
}

/// Opens the regular file `name` in `dir` read-only, without following a symlink (and
/// without blocking on a FIFO planted there); checks that it is a regular file of the
/// agent's user. `None` when it does not exist.
pub fn open_read_at(dir: &File, path: &Path, name: &str) -> Result<Option<File>, Unsafe> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => {
            let file = File::from(fd);
            check_file(&file, path, false)?;
            Ok(Some(file))
        }
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(file_error(dir, name, path, e)),
    }
}

/// The names in the directory `dir` (not `.` and `..`).
pub fn names(dir: &File, path: &Path) -> Result<Vec<String>, Unsafe> {
    let entries = rustix::fs::Dir::read_from(dir).map_err(|e| {
        Unsafe::new(
            path,
            format!("cannot list the directory: {}", io::Error::from(e)),
        )
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            Unsafe::new(
                path,
                format!("cannot list the directory: {}", io::Error::from(e)),
            )
        })?;
        if let Ok(name) = entry.file_name().to_str() {
            if name != "." && name != ".." {
                out.push(name.to_string());
            }
        }
    }
    Ok(out)
}

/// Renames `from` to `to` inside `dir`, refusing to replace a file already at `to`.
pub fn rename_new_at(dir: &File, from: &str, to: &str) -> io::Result<()> {
    match rustix::fs::renameat_with(dir, from, dir, to, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: check, then rename.
        Err(Errno::INVAL) => {
            match rustix::fs::statat(dir, to, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => return Err(io::Error::from(Errno::EXIST)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            Ok(rustix::fs::renameat(dir, from, dir, to)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn open_dir_raw(parent: impl AsFd, name: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Says why opening a directory failed: a symlink or something else in its place.
fn dir_error(parent: impl AsFd, name: &Path, path: &Path, e: Errno) -> Unsafe {
    if e == Errno::NOTDIR || e == Errno::LOOP {
        return match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if is_symlink(st.st_mode) => Unsafe::new(
                path,
                "is a symbolic link; refusing to follow it (the agent's state must be its own directory; remove the link)",
            ),
            _ => Unsafe::new(path, "exists and is not a directory"),
        };
    }
    Unsafe::new(
        path,
        format!("cannot open the directory: {}", io::Error::from(e)),
    )
}

/// Says why opening a file failed.
fn file_error(dir: &File, name: &str, path: &Path, e: Errno) -> Unsafe {
    if e == Errno::LOOP {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            if is_symlink(st.st_mode) {
                return Unsafe::new(
                    path,
                    "is a symbolic link; refusing to follow it (the agent writes only its own files; remove the link)",
                );
            }
        }
    }
    if e == Errno::EXIST {
        return Unsafe::new(
            path,
            "exists already where the agent was to create a new file; refusing to use it",
        );
    }
    Unsafe::new(path, format!("cannot open: {}", io::Error::from(e)))
}

fn is_symlink(mode: impl Into<u32>) -> bool {
    rustix::fs::FileType::from_raw_mode(mode.into()) == rustix::fs::FileType::Symlink
}

/// Checks an opened directory: the agent's own; mode tightened to 0700.
fn checked_dir(fd: OwnedFd, path: &Path) -> Result<File, Unsafe> {
    let dir = File::from(fd);
    let meta = dir
        .metadata()
        .map_err(|e| Unsafe::new(path, format!("cannot stat the directory: {e}")))?;
    owned_by_me(&meta, path)?;
    if meta.mode() & 0o7777 != 0o700 {
        dir.set_permissions(Permissions::from_mode(0o700))
            .map_err(|e| Unsafe::new(path, format!("cannot set mode 0700: {e}")))?;
    }
    Ok(dir)
}

/// Refuses what belongs to another uid than the agent's.
fn owned_by_me(meta: &std::fs::Metadata, path: &Path) -> Result<(), Unsafe> {
    let me = euid();
    if meta.uid() == me {
        Ok(())
    } else {
        Err(Unsafe::new(
            path,
            format!(
                "belongs to uid {}, not to this agent's uid {me}",
                meta.uid()
            ),
        ))
    }
}

/// Checks an opened file: a regular file of the agent's own; for files the agent
/// writes, one link only and mode tightened to 0600.
fn check_file(file: &File, path: &Path, writes: bool) -> Result<(), Unsafe> {
    let meta = file
        .metadata()
        .map_err(|e| Unsafe::new(path, format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(Unsafe::new(
            path,
            "is not a regular file; refusing to use it",
        ));
    }
    owned_by_me(&meta, path)?;
    if writes {
        if meta.nlink() > 1 {
            return Err(Unsafe::new(
                path,
                format!(
                    "has {} hard links; refusing to write to a file that has other names (one may be another file the agent must not touch): move it aside",
                    meta.nlink()
                ),
            ));
        }
        if meta.mode() & 0o7777 != 0o600 {
            file.set_permissions(Permissions::from_mode(0o600))
                .map_err(|e| Unsafe::new(path, format!("cannot set mode 0600: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn directories_are_created_tightened_and_symlinks_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("a/state");
        let dir = open_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        drop(dir);
        let dir = open_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        let sub = open_subdir(&dir, &state, "audit").unwrap();
        drop(sub);
        assert_eq!(mode(&state.join("audit")), 0o700);

        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = open_dir(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.to_string().contains(link.to_str().unwrap()), "{e}");
        std::os::unix::fs::symlink(&victim, state.join("other")).unwrap();
        let e = open_subdir(&dir, &state, "other").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(mode(&victim), 0o755, "the target was not chmodded");
    }

    #[test]
    fn files_refuse_links_and_exclusive_creation_refuses_what_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path()).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::set_permissions(&victim, Permissions::from_mode(0o644)).unwrap();

        std::os::unix::fs::symlink(&victim, tmp.path().join("sym")).unwrap();
        let e = open_file_at(&dir, &tmp.path().join("sym"), "sym", Create::IfMissing).unwrap_err();
        assert!(e.problem.contains("symbolic link"), "{e}");
        std::fs::hard_link(&victim, tmp.path().join("hard")).unwrap();
        let e =
            open_file_at(&dir, &tmp.path().join("hard"), "hard", Create::IfMissing).unwrap_err();
        assert!(e.problem.contains("hard links"), "{e}");
        assert_eq!(mode(&victim), 0o644);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");

        let f = open_file_at(&dir, &tmp.path().join("new"), "new", Create::New).unwrap();
        drop(f);
        assert_eq!(mode(&tmp.path().join("new")), 0o600);
        let e = open_file_at(&dir, &tmp.path().join("new"), "new", Create::New).unwrap_err();
        assert!(e.problem.contains("exists already"), "{e}");
        rename_new_at(&dir, "new", "victim").unwrap_err();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        rename_new_at(&dir, "new", "moved").unwrap();
        assert!(names(&dir, tmp.path())
            .unwrap()
            .contains(&"moved".to_string()));
    }
}
