//! `waxseal audit verify|tail`: check the audit log's hash chain; show its last records.

use anyhow::{bail, Context as _, Result};
use waxseal_proto::audit_chain;
use waxseal_proto::paths;

use super::Ctx;
use crate::AuditCommand;

pub fn run(ctx: &Ctx, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify { files, dir } => {
            let files = if files.is_empty() {
                let dir = dir.unwrap_or_else(|| paths::state_dir().join("audit"));
                let found = audit_chain::files(&dir).with_context(|| {
                    format!("cannot read the audit directory {}", dir.display())
                })?;
                if found.is_empty() {
                    bail!(
                        "no audit log in {} (pass the files, or --dir STATE_DIR/audit)",
                        dir.display()
                    );
                }
                found
            } else {
                files
            };
            match audit_chain::verify_files(&files) {
                Ok(v) => {
                    if ctx.json {
                        return ctx.print_json(&serde_json::json!({
                            "ok": true,
                            "records": v.records,
                            "files": v.files,
                            "last_hash": v.last_hash,
                            "unused_bytes": v.unused,
                        }));
                    }
                    outln!(
                        "audit log OK: {} records in {} file{}, the chain unbroken; last record's SHA-256 {}",
                        v.records,
                        v.files,
                        if v.files == 1 { "" } else { "s" },
                        v.last_hash
                    );
                    if v.unused > 0 {
                        // docs/architecture.md, "The audit log": space a running (or
                        // crashed) agent preallocated and has not written yet.
                        outln!(
                            "{} bytes of preallocated space (zeros) follow the last record",
                            v.unused
                        );
                    }
                    Ok(())
                }
                Err(broken) => {
                    if ctx.json {
                        ctx.print_json(&serde_json::json!({
                            "ok": false,
                            "file": broken.file,
                            "line": broken.line,
                            "problem": broken.problem,
                        }))?;
                    }
                    bail!("audit log broken at {broken}")
                }
            }
        }
        AuditCommand::Tail { n } => {
            let tail = ctx.connect()?.audit_tail(Some(n))?;
            if ctx.json {
                return ctx.print_json(&tail);
            }
            for r in tail.records {
                outln!("{r}");
            }
            if let Some(n) = tail.omitted.filter(|n| *n > 0) {
                eprintln!(
                    "waxseal: {n} older records were left out to keep the answer within the agent's frame limit; read them with `waxseal audit verify` or from STATE_DIR/audit/"
                );
            }
            Ok(())
        }
    }
}
