//! The Sigstore trusted root a verifier uses by default, and its refresh over TUF
//! (README.md, "Trust root updates").
//!
//! The binary ships the public-good instance's `trusted_root.json`, its
//! `signing_config.v0.2.json` and the TUF `root.json` of tuf-repo-cdn.sigstore.dev, taken
//! from the sigstore-python 4.5.1 wheel (cli/data/sigstore-public-good/README.md).
//! `waxseal trust update` runs a TUF client (the `tough` crate, over a ureq transport) and
//! keeps, per repository, under `$XDG_DATA_HOME/waxseal/tuf/<repo-hash>/`:
//! `metadata/` (the last verified root, timestamp and snapshot: the rollback and freeze
//! checks of the next update start from them) and `targets/` (the verified
//! `trusted_root.json` and `signing_config.v0.2.json`). The file `tuf/repository` names the
//! repository last updated: its `trusted_root.json` is what [`default_trusted_root`]
//! returns. Every file is written to a fresh name and renamed into place; every directory
//! below `$XDG_DATA_HOME/waxseal` is opened without following symlinks.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};
use tough::{
    ExpirationEnforcement, IntoVec, RepositoryLoader, TargetName, Transport, TransportError,
    TransportErrorKind, TransportStream,
};

/// The public-good instance's trusted root (sigstore-python 4.5.1).
pub const PUBLIC_GOOD_TRUSTED_ROOT: &[u8] =
    include_bytes!("../data/sigstore-public-good/trusted_root.json");
/// The public-good instance's signing config v0.2 (sigstore-python 4.5.1).
pub const PUBLIC_GOOD_SIGNING_CONFIG: &[u8] =
    include_bytes!("../data/sigstore-public-good/signing_config.v0.2.json");
/// The TUF root of tuf-repo-cdn.sigstore.dev (sigstore-python 4.5.1): the trust anchor of
/// `waxseal trust update` for the default repository.
pub const PUBLIC_GOOD_TUF_ROOT: &[u8] = include_bytes!("../data/sigstore-public-good/root.json");
/// The default TUF repository.
pub const DEFAULT_REPOSITORY: &str = "https://tuf-repo-cdn.sigstore.dev";
/// The target holding the trusted root.
pub const TRUSTED_ROOT_TARGET: &str = "trusted_root.json";
/// The target holding the signing config (optional in a repository).
pub const SIGNING_CONFIG_TARGET: &str = "signing_config.v0.2.json";

/// Largest file read from the state or a repository (metadata, targets): 8 MiB. The
/// public-good metadata and targets are a few KiB each.
const MAX_FILE: u64 = 8 << 20;
/// Longest repository URL accepted.
const MAX_URL: usize = 2048;
/// Per-request timeout of the HTTP transport.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a trusted root came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Shipped with the binary.
    Shipped,
    /// Refreshed by `waxseal trust update` from this repository.
    Refreshed { repository: String },
}

/// The trusted root a verifier uses without `--trusted-root`: the copy `waxseal trust
/// update` last stored, if there is one and it reads cleanly, else the shipped one.
pub fn default_trusted_root() -> Option<Vec<u8>> {
    Some(current_trusted_root().0)
}

/// The default trusted root and where it came from. A state that cannot be read (missing,
/// a symlink, too large) falls back to the shipped copy.
pub fn current_trusted_root() -> (Vec<u8>, Source) {
    match refreshed(TRUSTED_ROOT_TARGET) {
        Ok(Some((bytes, repository))) => (bytes, Source::Refreshed { repository }),
        _ => (PUBLIC_GOOD_TRUSTED_ROOT.to_vec(), Source::Shipped),
    }
}

/// The signing config matching [`default_trusted_root`]: the refreshed one if the last
/// updated repository published one, else (for the shipped trusted root) the shipped one.
pub fn default_signing_config() -> Option<Vec<u8>> {
    match refreshed(TRUSTED_ROOT_TARGET) {
        Ok(Some(_)) => refreshed(SIGNING_CONFIG_TARGET)
            .ok()
            .flatten()
            .map(|(bytes, _)| bytes),
        _ => Some(PUBLIC_GOOD_SIGNING_CONFIG.to_vec()),
    }
}

/// `$XDG_DATA_HOME/waxseal`, or `~/.local/share/waxseal`; None without either variable.
/// A relative `XDG_DATA_HOME` is ignored, as the XDG base directory spec says.
pub fn data_dir() -> Option<PathBuf> {
    let non_empty =
        |var: &str| std::env::var_os(var).filter(|v| !v.is_empty() && Path::new(v).is_absolute());
    let base = match non_empty("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(non_empty("HOME")?).join(".local/share"),
    };
    Some(base.join("waxseal"))
}

/// The state directory name of a repository: the first 16 bytes of SHA-256 of its URL
/// (as normalised by [`normalize_repository`]), in hex.
pub fn repository_hash(url: &str) -> String {
    hex::encode(&Sha256::digest(url.as_bytes())[..16])
}

/// The repository URL without trailing slashes; http or https only, bounded length.
pub fn normalize_repository(url: &str) -> Result<String> {
    if url.len() > MAX_URL {
        bail!("repository URL longer than {MAX_URL} bytes");
    }
    let trimmed = url.trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).with_context(|| format!("repository URL {url:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("repository URL {url:?}: only http and https are supported");
    }
    Ok(trimmed.to_string())
}

/// What an update stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpdateReport {
    pub repository: String,
    pub state_dir: PathBuf,
    pub root_version: u64,
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    pub trusted_root_sha256: String,
    /// Whether the trusted root differs from the one stored before.
    pub trusted_root_changed: bool,
    pub signing_config_sha256: Option<String>,
}

/// Refresh the trusted root (and the signing config, if published) of `repository` over TUF.
///
/// The TUF client starts from the root stored by the last update of this repository, else
/// `initial_root` (the `--root` file), else for the default repository the shipped TUF root.
/// A refused update (an expired, rolled-back or badly signed metadata, a target whose length
/// or hash does not match) changes nothing in the state.
pub fn update(repository: &str, initial_root: Option<&[u8]>) -> Result<UpdateReport> {
    let repository = normalize_repository(repository)?;
    let data = data_dir().ok_or_else(|| anyhow!("neither XDG_DATA_HOME nor HOME is set"))?;
    std::fs::create_dir_all(&data)
        .with_context(|| format!("creating the data directory {}", data.display()))?;
    let data_fd = open_dir(&data)?;
    let tuf_fd = subdir(&data_fd, &data, "tuf", true)?;
    let tuf_path = data.join("tuf");
    let hash = repository_hash(&repository);
    let repo_fd = subdir(&tuf_fd, &tuf_path, &hash, true)?;
    let repo_path = tuf_path.join(&hash);
    // One update of a repository at a time (released when repo_fd closes).
    rustix::fs::flock(&repo_fd, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", repo_path.display()))?;
    let meta_fd = subdir(&repo_fd, &repo_path, "metadata", true)?;
    let meta_path = repo_path.join("metadata");
    let targets_fd = subdir(&repo_fd, &repo_path, "targets", true)?;
    let targets_path = repo_path.join("targets");

    // The trust anchor: the last verified root of this repository, else the one given.
    let stored_root = read_at(&meta_fd, &meta_path, "root.json")?;
    let root = match (stored_root, initial_root) {
        (Some(stored), _) => stored,
        (None, Some(given)) => given.to_vec(),
        (None, None) if repository == DEFAULT_REPOSITORY => PUBLIC_GOOD_TUF_ROOT.to_vec(),
        (None, None) => bail!(
            "no TUF root for {repository}: pass --root FILE (the repository's root.json, \
             obtained out of band) on its first update"
        ),
    };

    // tough's datastore writes in place: give it a private scratch copy of the metadata and
    // move its results into the state only once the whole update succeeded.
    let scratch = tempfile::Builder::new()
        .prefix(".update-")
        .tempdir_in(&repo_path)
        .with_context(|| format!("creating a scratch directory in {}", repo_path.display()))?;
    for name in ["root.json", "timestamp.json", "snapshot.json"] {
        if let Some(bytes) = read_at(&meta_fd, &meta_path, name)? {
            std::fs::write(scratch.path().join(name), bytes)
                .with_context(|| format!("copying {name} to the scratch directory"))?;
        }
    }

    let metadata_url = url::Url::parse(&format!("{repository}/"))
        .with_context(|| format!("repository URL {repository:?}"))?;
    let targets_url = url::Url::parse(&format!("{repository}/targets/"))
        .with_context(|| format!("repository URL {repository:?}"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the TUF client's runtime")?;
    let fetched = runtime.block_on(async {
        let repo = RepositoryLoader::new(&root, metadata_url, targets_url)
            .transport(UreqTransport)
            .datastore(scratch.path())
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(tuf_error)?;
        let trusted_root = fetch_target(&repo, TRUSTED_ROOT_TARGET)
            .await?
            .ok_or_else(|| anyhow!("the repository has no target {TRUSTED_ROOT_TARGET}"))?;
        let signing_config = fetch_target(&repo, SIGNING_CONFIG_TARGET).await?;
        Ok::<_, anyhow::Error>((
            trusted_root,
            signing_config,
            repo.root().signed.version.get(),
            repo.targets().signed.version.get(),
            repo.snapshot().signed.version.get(),
            repo.timestamp().signed.version.get(),
        ))
    })?;
    let (trusted_root, signing_config, root_v, targets_v, snapshot_v, timestamp_v) = fetched;
    serde_json::from_slice::<serde_json::Value>(&trusted_root)
        .context("the repository's trusted_root.json is not JSON")?;

    let previous = read_at(&targets_fd, &targets_path, TRUSTED_ROOT_TARGET)?;
    // Targets first, then the metadata that vouches for them, then the pointer.
    write_at(
        &targets_fd,
        &targets_path,
        TRUSTED_ROOT_TARGET,
        &trusted_root,
    )?;
    match &signing_config {
        Some(bytes) => write_at(&targets_fd, &targets_path, SIGNING_CONFIG_TARGET, bytes)?,
        None => remove_at(&targets_fd, SIGNING_CONFIG_TARGET)?,
    }
    for name in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        let path = scratch.path().join(name);
        let bytes = read_bounded(
            File::open(&path).with_context(|| format!("reading the verified {name}"))?,
            &path,
        )?;
        write_at(&meta_fd, &meta_path, name, &bytes)?;
    }
    write_at(
        &tuf_fd,
        &tuf_path,
        "repository",
        format!("{repository}\n").as_bytes(),
    )?;

    Ok(UpdateReport {
        state_dir: repo_path,
        root_version: root_v,
        targets_version: targets_v,
        snapshot_version: snapshot_v,
        timestamp_version: timestamp_v,
        trusted_root_sha256: hex::encode(Sha256::digest(&trusted_root)),
        trusted_root_changed: previous.as_deref() != Some(trusted_root.as_slice()),
        signing_config_sha256: signing_config.map(|b| hex::encode(Sha256::digest(b))),
        repository,
    })
}

async fn fetch_target(repo: &tough::Repository, name: &str) -> Result<Option<Vec<u8>>> {
    let target = TargetName::new(name).map_err(tuf_error)?;
    match repo.read_target(&target).await.map_err(tuf_error)? {
        None => Ok(None),
        Some(stream) => {
            let bytes = stream.into_vec().await.map_err(|e| {
                anyhow!(
                    "target {name} refused (length or hash check): {}",
                    tuf_message(&e)
                )
            })?;
            Ok(Some(bytes))
        }
    }
}

/// tough's error with its causes, prefixed with what TUF check it is when that is one a
/// user must recognise (expiry, rollback).
fn tuf_error(e: tough::error::Error) -> anyhow::Error {
    let message = tuf_message(&e);
    let kind = match &e {
        tough::error::Error::ExpiredMetadata { .. } => "expired metadata (possible freeze attack)",
        tough::error::Error::OlderMetadata { .. }
        | tough::error::Error::OlderSnapshotInTimestamp { .. } => {
            "rollback: metadata older than the version seen before"
        }
        tough::error::Error::HashMismatch { .. } => "hash mismatch",
        _ => "TUF update refused",
    };
    anyhow!("{kind}: {message}")
}

fn tuf_message(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

/// A tough transport over ureq (the CLI's HTTP client), run on the runtime's blocking pool.
#[derive(Debug, Clone, Copy)]
struct UreqTransport;

#[async_trait::async_trait]
impl Transport for UreqTransport {
    async fn fetch(&self, url: url::Url) -> std::result::Result<TransportStream, TransportError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        }
        let u = url.to_string();
        let result = tokio::task::spawn_blocking(move || fetch_blocking(&u))
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, &url, e))?;
        let bytes = result.map_err(|(kind, e)| TransportError::new_with_cause(kind, &url, e))?;
        let stream = futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) });
        Ok(Box::pin(stream))
    }
}

fn fetch_blocking(url: &str) -> std::result::Result<Vec<u8>, (TransportErrorKind, anyhow::Error)> {
    // Redirects are followed (ureq refuses https→http): what arrives is checked by TUF.
    let agent = ureq::AgentBuilder::new().timeout(FETCH_TIMEOUT).build();
    match agent.get(url).call() {
        Ok(response) => {
            let mut body = Vec::new();
            response
                .into_reader()
                .take(MAX_FILE + 1)
                .read_to_end(&mut body)
                .map_err(|e| (TransportErrorKind::Other, anyhow!(e)))?;
            if body.len() as u64 > MAX_FILE {
                return Err((
                    TransportErrorKind::Other,
                    anyhow!("response larger than {MAX_FILE} bytes"),
                ));
            }
            Ok(body)
        }
        // Object stores answer 403 for a missing object: both end the walk of N.root.json.
        Err(ureq::Error::Status(code @ (403 | 404), _)) => Err((
            TransportErrorKind::FileNotFound,
            anyhow!("HTTP status {code}"),
        )),
        Err(ureq::Error::Status(code, _)) => {
            Err((TransportErrorKind::Other, anyhow!("HTTP status {code}")))
        }
        Err(e) => Err((TransportErrorKind::Other, anyhow!(e))),
    }
}

/// The refreshed copy of `target` from the repository last updated, and that repository.
fn refreshed(target: &str) -> Result<Option<(Vec<u8>, String)>> {
    let Some(data) = data_dir() else {
        return Ok(None);
    };
    let data_fd = match open_dir(&data) {
        Ok(fd) => fd,
        Err(_) => return Ok(None),
    };
    let tuf_path = data.join("tuf");
    let Some(tuf_fd) = subdir_existing(&data_fd, &data, "tuf")? else {
        return Ok(None);
    };
    let Some(pointer) = read_at(&tuf_fd, &tuf_path, "repository")? else {
        return Ok(None);
    };
    let repository = std::str::from_utf8(&pointer)
        .context("tuf/repository is not UTF-8")?
        .trim_end_matches('\n');
    let repository = normalize_repository(repository)?;
    let hash = repository_hash(&repository);
    let Some(repo_fd) = subdir_existing(&tuf_fd, &tuf_path, &hash)? else {
        return Ok(None);
    };
    let repo_path = tuf_path.join(&hash);
    let Some(targets_fd) = subdir_existing(&repo_fd, &repo_path, "targets")? else {
        return Ok(None);
    };
    Ok(read_at(&targets_fd, &repo_path.join("targets"), target)?.map(|b| (b, repository)))
}

/// Open a directory the user named (following symlinks there is the user's choice).
fn open_dir(path: &Path) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    Ok(File::from(fd))
}

/// Open (creating it 0700 when asked) the directory `name` in `parent`, refusing a symlink.
fn subdir(parent: &File, parent_path: &Path, name: &str, create: bool) -> Result<File> {
    if create {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating {}", parent_path.join(name).display()))
            }
        }
    }
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| {
        format!(
            "opening {} (a directory, not a symlink)",
            parent_path.join(name).display()
        )
    })?;
    Ok(File::from(fd))
}

fn subdir_existing(parent: &File, parent_path: &Path, name: &str) -> Result<Option<File>> {
    match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| {
            format!(
                "opening {} (a directory, not a symlink)",
                parent_path.join(name).display()
            )
        }),
    }
}

/// Read the regular file `name` in `dir` (not a symlink), at most [`MAX_FILE`] bytes.
fn read_at(dir: &File, dir_path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir_path.join(name);
    // NONBLOCK: a FIFO put there cannot hang the open (it is then refused as not a file).
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let file = File::from(fd);
            if !file
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?
                .is_file()
            {
                bail!("{} is not a regular file", path.display());
            }
            read_bounded(file, &path).map(Some)
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {} (not a symlink)", path.display())),
    }
}

fn read_bounded(file: File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        bail!("{} is larger than {MAX_FILE} bytes", path.display());
    }
    Ok(bytes)
}

/// Write `name` in `dir` atomically: a fresh temporary name (O_EXCL, no symlink followed),
/// fsync, rename over `name`.
fn write_at(dir: &File, dir_path: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(|e| anyhow!("getrandom: {e}"))?;
    let tmp = format!(".{name}.{}.tmp", hex::encode(random));
    let path = dir_path.join(name);
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .with_context(|| format!("creating a temporary file for {}", path.display()))?;
    let mut file = File::from(fd);
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
        .and_then(|()| {
            rustix::fs::renameat(dir, tmp.as_str(), dir, name)
                .with_context(|| format!("renaming into {}", path.display()))
        });
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
    }
    written?;
    let _ = rustix::fs::fsync(dir);
    Ok(())
}

fn remove_at(dir: &File, name: &str) -> Result<()> {
    match rustix::fs::unlinkat(
        dir,
        OsStr::from_bytes(name.as_bytes()),
        rustix::fs::AtFlags::empty(),
    ) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_data_is_the_public_good_instance() {
        let root: serde_json::Value = serde_json::from_slice(PUBLIC_GOOD_TRUSTED_ROOT).unwrap();
        assert!(root["mediaType"]
            .as_str()
            .unwrap()
            .starts_with("application/vnd.dev.sigstore.trustedroot+json"));
        assert_eq!(root["tlogs"][0]["baseUrl"], "https://rekor.sigstore.dev");
        let tuf: serde_json::Value = serde_json::from_slice(PUBLIC_GOOD_TUF_ROOT).unwrap();
        assert_eq!(tuf["signed"]["_type"], "root");
        // The digests written in cli/data/sigstore-public-good/README.md.
        assert_eq!(
            hex::encode(Sha256::digest(PUBLIC_GOOD_TRUSTED_ROOT)),
            "6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66"
        );
        assert_eq!(
            hex::encode(Sha256::digest(PUBLIC_GOOD_TUF_ROOT)),
            "73747011d0857ada15479a16c4cae0f3ed03aac698b523b97e1de314ac9d9ca8"
        );
    }

    #[test]
    fn repository_urls_are_normalised_and_bounded() {
        assert_eq!(
            normalize_repository("https://tuf-repo-cdn.sigstore.dev/").unwrap(),
            DEFAULT_REPOSITORY
        );
        assert!(normalize_repository("file:///etc").is_err());
        assert!(normalize_repository(&format!("https://a/{}", "x".repeat(MAX_URL))).is_err());
        assert_ne!(repository_hash("https://a"), repository_hash("https://b"));
    }
}
