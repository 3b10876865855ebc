//! `waxseal approve`, `waxseal approvals list|show`: quorum approval
//! (docs/protocol.md, "Approvals").

use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use waxseal_proto::proto::MAX_APPROVAL_SIGNATURE;

use super::Ctx;
use crate::ApprovalsCommand;

/// `waxseal approve ID --signature FILE` (`-` reads stdin).
pub fn approve(ctx: &Ctx, id: &str, signature: &Path) -> Result<()> {
    let mut text = String::new();
    let limit = MAX_APPROVAL_SIGNATURE as u64 + 1;
    let read = if signature == Path::new("-") {
        std::io::stdin().take(limit).read_to_string(&mut text)
    } else {
        std::fs::File::open(signature)
            .with_context(|| format!("cannot open the signature {}", signature.display()))?
            .take(limit)
            .read_to_string(&mut text)
    };
    read.with_context(|| {
        format!(
            "cannot read the signature {} (expected the text ssh-keygen -Y sign writes)",
            signature.display()
        )
    })?;
    if text.len() > MAX_APPROVAL_SIGNATURE {
        bail!(
            "{} is over {MAX_APPROVAL_SIGNATURE} bytes: not an SSH signature",
            signature.display()
        );
    }
    let ok = ctx.connect()?.approve(id, &text)?;
    if ctx.json {
        return ctx.print_json(&ok);
    }
    outln!(
        "approval {}: accepted from {}; approved by {} ({} of {}){}",
        ok.approval,
        ok.approver,
        ok.approved_by.join(", "),
        ok.approved_by.len(),
        ok.quorum,
        if ok.complete {
            "; quorum reached, the signature is made"
        } else {
            ""
        }
    );
    Ok(())
}

/// `waxseal approvals list|show`.
pub fn run(ctx: &Ctx, c: ApprovalsCommand) -> Result<()> {
    let mut client = ctx.connect()?;
    match c {
        ApprovalsCommand::List => {
            let list = client.approvals()?;
            if ctx.json {
                return ctx.print_json(&list);
            }
            if list.pending.is_empty() {
                outln!("no request is waiting for approvals");
            }
            for p in &list.pending {
                outln!(
                    "{}  {} ({})  {} of {} approvals{}  expires {}  asked by {}",
                    p.approval,
                    p.key,
                    p.purpose,
                    p.approved_by.len(),
                    p.quorum,
                    if p.approved_by.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.approved_by.join(", "))
                    },
                    p.expires,
                    p.caller
                );
            }
            Ok(())
        }
        ApprovalsCommand::Show { id } => {
            let info = client.approval_show(&id)?;
            if ctx.json {
                return ctx.print_json(&info);
            }
            // Exactly the text to sign, byte for byte: no added newline.
            out!("{}", info.text);
            Ok(())
        }
    }
}
