//! `waxseal trust update` and `waxseal trust show` (README.md, "Trust root updates").

use std::io::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use waxseal::trustroot::{self, Source};

use super::Ctx;
use crate::TrustCommand;

/// Largest `--root` file read: 1 MiB (the public-good root.json is under 6 KiB).
const MAX_ROOT_FILE: u64 = 1 << 20;

#[derive(Serialize)]
struct Shown {
    source: &'static str,
    repository: Option<String>,
    sha256: String,
    trusted_root: serde_json::Value,
    /// SHA-256 of the signing config that goes with it (`default_signing_config`), if any.
    signing_config_sha256: Option<String>,
}

pub fn run(ctx: &Ctx, command: TrustCommand) -> Result<()> {
    match command {
        TrustCommand::Update { repository, root } => {
            let root = match root {
                Some(path) => {
                    let meta = std::fs::metadata(&path)
                        .with_context(|| format!("reading --root {}", path.display()))?;
                    if meta.len() > MAX_ROOT_FILE {
                        anyhow::bail!(
                            "--root {} is larger than {MAX_ROOT_FILE} bytes",
                            path.display()
                        );
                    }
                    Some(
                        std::fs::read(&path)
                            .with_context(|| format!("reading --root {}", path.display()))?,
                    )
                }
                None => None,
            };
            let report = trustroot::update(&repository, root.as_deref())?;
            if ctx.json {
                return ctx.print_json(&report);
            }
            outln!(
                "trusted root from {}: sha256 {}{}",
                report.repository,
                report.trusted_root_sha256,
                if report.trusted_root_changed {
                    " (updated)"
                } else {
                    " (unchanged)"
                }
            );
            outln!(
                "TUF versions: root {}, targets {}, snapshot {}, timestamp {}",
                report.root_version,
                report.targets_version,
                report.snapshot_version,
                report.timestamp_version
            );
            outln!("stored in {}", report.state_dir.display());
            Ok(())
        }
        TrustCommand::Show => {
            let (bytes, source) = trustroot::current_trusted_root();
            if ctx.json {
                let (source, repository) = match source {
                    Source::Shipped => ("shipped", None),
                    Source::Refreshed { repository } => ("refreshed", Some(repository)),
                };
                let trusted_root = serde_json::from_slice(&bytes)
                    .context("the default trusted root is not JSON")?;
                return ctx.print_json(&Shown {
                    source,
                    repository,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    trusted_root,
                    signing_config_sha256: trustroot::default_signing_config()
                        .map(|c| hex::encode(Sha256::digest(c))),
                });
            }
            std::io::stdout()
                .write_all(&bytes)
                .context("writing the trusted root to stdout")?;
            Ok(())
        }
    }
}
