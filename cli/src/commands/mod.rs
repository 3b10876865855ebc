//! One module per subcommand; [`run`] dispatches.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;
use waxseal_agent::client::Client;
use waxseal_agent::paths;

use crate::{Cli, Command};

mod audit;
mod ca;
mod demo;
mod keys;
mod sign;
mod ssh;
mod status;
mod verify;

/// What every command gets: where the agent is and how to print.
pub struct Ctx {
    /// The agent's socket.
    pub socket: PathBuf,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    /// Connects to the agent; its notices ("touch your YubiKey") go to stderr.
    pub fn connect(&self) -> Result<Client> {
        let mut client = Client::connect(&self.socket)?;
        client.on_notice(Box::new(|notice| eprintln!("waxseal: {notice}")));
        Ok(client)
    }

    /// Prints `value` as JSON on stdout.
    pub fn print_json<T: Serialize>(&self, value: &T) -> Result<()> {
        outln!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        socket: cli.socket.unwrap_or_else(paths::client_socket),
        json: cli.json,
    };
    match cli.command {
        Command::Status => status::run(&ctx),
        Command::Keys(k) => keys::run(&ctx, k),
        Command::Sign(a) => sign::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Ssh(c) => ssh::run(&ctx, c),
        Command::Ca(c) => ca::run(&ctx, c),
        Command::Audit(c) => audit::run(&ctx, c),
        Command::Lock => {
            let ok = ctx.connect()?.lock()?;
            if ctx.json {
                return ctx.print_json(&ok);
            }
            outln!("{}", ok.message);
            Ok(())
        }
        Command::Unlock { device } => {
            let ok = ctx.connect()?.unlock(device.as_deref())?;
            if ctx.json {
                return ctx.print_json(&ok);
            }
            outln!("{}", ok.message);
            Ok(())
        }
    }
}
