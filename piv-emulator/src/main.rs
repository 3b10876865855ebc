//! `piv-emulator`: an emulated YubiKey 5 PIV card behind pcscd's vpcd reader.
//!
//! Connects the card to vpcd (`--host`/`--port`), keeps its state in `--state FILE`
//! when given, and takes `remove`/`insert`/`status` on the `--control` socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use piv_emulator::card::{Card, Options};
use piv_emulator::{control, vpcd};
use x509_cert::der::pem::{self, LineEnding};

/// Emulated YubiKey 5 PIV card for pcscd's vpcd virtual reader (tests only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// vpcd port (30059, CHANNELID 0x756B: below the ephemeral port range, so no
    /// outgoing connection in TIME_WAIT can hold it).
    #[arg(long, default_value_t = 30059)]
    port: u16,
    /// vpcd host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Serial number of a new card (ignored when --state already holds a card).
    #[arg(long)]
    serial: Option<u32>,
    /// How long a sign that needs a touch waits, in milliseconds.
    #[arg(long, default_value_t = 0)]
    touch_delay_ms: u64,
    /// JSON file holding the card (keys included); created if missing.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Print the attestation root certificate (PEM) and exit.
    #[arg(long)]
    print_attestation_root: bool,
    /// Unix socket taking `remove`, `insert` and `status` lines.
    #[arg(long)]
    control: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = Options {
        touch_delay: Duration::from_millis(args.touch_delay_ms),
    };
    let card = load_or_create(&args, options)?;
    if args.print_attestation_root {
        let pem = pem::encode_string("CERTIFICATE", LineEnding::LF, card.attestation_root())
            .map_err(|e| anyhow::anyhow!("encoding the attestation root: {e}"))?;
        print!("{pem}");
        return Ok(());
    }
    let slot = vpcd::Slot::new(card, format!("{}:{}", args.host, args.port), args.state);
    if let Some(path) = &args.control {
        control::spawn(path, slot.clone())
            .with_context(|| format!("control socket {}", path.display()))?;
    }
    slot.serve()
}

fn load_or_create(args: &Args, options: Options) -> anyhow::Result<Card> {
    if let Some(path) = &args.state {
        if path.exists() {
            let json = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let card = Card::from_json(&json, options)
                .with_context(|| format!("loading {}", path.display()))?;
            if args.serial.is_some_and(|s| s != card.serial()) {
                eprintln!(
                    "piv-emulator: --serial ignored, {} holds card {}",
                    path.display(),
                    card.serial()
                );
            }
            return Ok(card);
        }
    }
    let serial = args.serial.unwrap_or_else(|| {
        let mut b = [0u8; 4];
        // Fall back to a fixed serial if the OS has no randomness to give.
        let _ = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut b);
        10_000_000 + u32::from_be_bytes(b) % 20_000_000
    });
    let mut card = Card::new(serial, options).context("creating the card")?;
    if let Some(path) = &args.state {
        vpcd::save_state(&card, path).with_context(|| format!("writing {}", path.display()))?;
        card.take_dirty();
    }
    Ok(card)
}
