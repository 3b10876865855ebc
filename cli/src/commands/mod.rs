//! One module per subcommand; [`run`] dispatches.

use std::path::PathBuf;

use anyhow::Result;
use clap::CommandFactory as _;
use serde::Serialize;
use waxseal_proto::client::Client;
use waxseal_proto::paths;
use zeroize::Zeroizing;

use crate::defaults::{self, ServiceFlags};
use crate::{Cli, Command};

pub use transcript::TranscriptArgs;

mod approvals;
mod attest;
mod audit;
mod ca;
mod demo;
mod device_attest;
mod import;
mod keys;
mod manual;
mod services;
mod sign;
mod ssh;
mod status;
mod transcript;
mod trust;
mod verify;

/// What every command gets: where the agent is and how to print.
pub struct Ctx {
    /// The agent's socket.
    pub socket: PathBuf,
    /// `--json`.
    pub json: bool,
    /// `--config`: the file whose `[sigstore]` table `sign` reads.
    pub config: Option<PathBuf>,
}

impl Ctx {
    /// Connects to the agent; its notices ("touch your YubiKey") go to stderr.
    pub fn connect(&self) -> Result<Client> {
        let mut client = Client::connect(&self.socket)?;
        client.on_notice(Box::new(|notice| eprintln!("waxseal: {notice}")));
        client.on_prompt(Box::new(read_pin));
        Ok(client)
    }

    /// The Sigstore settings of `sign` (or `attest`, named by `subcommand`): `flags`
    /// with the config's `[sigstore]` table filled in by the rule of
    /// [`crate::defaults`], unless `ignore_file` (`--no-sigstore-defaults`). Says on
    /// stderr which of the file's settings were used and which a flag set aside. A
    /// flag whose partner is nowhere (`--rekor-url` without a key) is a usage error,
    /// exit status 2, as before there was a file. Returns the settings and the file
    /// they were filled in from, if any.
    pub fn sigstore_services(
        &self,
        mut flags: ServiceFlags,
        ignore_file: bool,
        subcommand: &str,
    ) -> Result<(ServiceFlags, Option<PathBuf>)> {
        let loaded = if ignore_file {
            None
        } else {
            defaults::load(self.config.as_deref())?
        };
        let mut from = None;
        let mut applied = defaults::Applied::default();
        if let Some(loaded) = loaded {
            applied = defaults::apply_defaults(&mut flags, &loaded.defaults);
            let name = loaded.file.display();
            if !self.json {
                for (setting, flag) in &applied.replaced {
                    eprintln!("waxseal: {flag} replaces {setting} of [sigstore] in {name}");
                }
                if !applied.used.is_empty() {
                    eprintln!(
                        "waxseal: from [sigstore] in {name}: {}",
                        applied.used.join(", ")
                    );
                }
            }
            if !applied.used.is_empty() {
                from = Some(loaded.file);
            }
        }
        if let Err(message) = defaults::check(&flags, &applied) {
            let mut cli = Cli::command();
            cli.build();
            // The usage shown is the subcommand's; it exists (it is running).
            let mut usage = match cli.find_subcommand_mut(subcommand) {
                Some(sub) => sub.clone(),
                None => cli,
            };
            usage
                .error(clap::error::ErrorKind::MissingRequiredArgument, message)
                .exit();
        }
        Ok((flags, from))
    }

    /// Prints `value` as JSON on stdout.
    pub fn print_json<T: Serialize>(&self, value: &T) -> Result<()> {
        outln!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// Asks for a PIN at the controlling terminal, without echo (`pin = "prompt"`). `None`
/// without a terminal or for an empty answer: the agent is told the PIN was not given.
fn read_pin(question: &str) -> Option<Zeroizing<String>> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead, BufReader, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let saved = tcgetattr(&tty).ok()?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    (&tty)
        .write_all(format!("waxseal: {question}").as_bytes())
        .ok()?;
    tcsetattr(&tty, OptionalActions::Flush, &quiet).ok()?;
    let mut line = Zeroizing::new(String::new());
    let read = BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, OptionalActions::Now, &saved);
    read.ok()?;
    let len = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(len);
    (!line.is_empty()).then_some(line)
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        socket: cli.socket.unwrap_or_else(paths::client_socket),
        json: cli.json,
        config: cli.config,
    };
    match cli.command {
        Command::Status => status::run(&ctx),
        Command::Keys(k) => keys::run(&ctx, k),
        Command::Sign(a) => sign::run(&ctx, a),
        Command::Verify(a) => verify::run(&ctx, a),
        Command::Attest(a) => attest::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, a),
        Command::Ssh(c) => ssh::run(&ctx, c),
        Command::Ca(c) => ca::run(&ctx, c),
        Command::Audit(c) => audit::run(&ctx, c),
        Command::Approve { id, signature } => approvals::approve(&ctx, &id, &signature),
        Command::Approvals(c) => approvals::run(&ctx, c),
        Command::Trust(c) => trust::run(&ctx, c),
        Command::Lock => {
            let ok = ctx.connect()?.lock()?;
            if ctx.json {
                return ctx.print_json(&ok);
            }
            outln!("{}", ok.message);
            Ok(())
        }
        Command::Completions { shell } => manual::completions(&shell),
        Command::Man { out } => manual::man(&out),
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
