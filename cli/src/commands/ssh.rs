//! `waxseal ssh keys`: the keys `ssh.sock` offers, as authorized_keys lines.

use anyhow::Result;
use waxseal_proto::proto::Purpose;

use super::Ctx;
use crate::{sshfmt, SshCommand};

pub fn run(ctx: &Ctx, cmd: SshCommand) -> Result<()> {
    match cmd {
        SshCommand::Keys => {
            let mut client = ctx.connect()?;
            let mut lines = Vec::new();
            for key in client.list_keys()?.keys {
                if !key.purposes.contains(&Purpose::Ssh) {
                    continue;
                }
                let pk = client.public_key(&key.name)?;
                lines.push(sshfmt::authorized_key(&pk.spki_der.0, &key.name)?);
            }
            if ctx.json {
                return ctx.print_json(&serde_json::json!({ "authorized_keys": lines }));
            }
            for line in lines {
                outln!("{line}");
            }
            Ok(())
        }
    }
}
