//! Throughput of the emulator through the real pcscd: raw APDU round trips per
//! second (GET VERSION over `pcsc`) and P-256 signatures per second through the
//! `yubikey` crate.
//!
//! `cargo build -p piv-emulator && cargo run -p piv-emulator --example piv-emulator-bench`
//! (add `--release` to both for optimized numbers; `PIV_EMULATOR_BIN` overrides
//! the emulator path). Takes the same machine-wide lock as the tests.

use std::ffi::CString;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use piv_emulator::harness::{emulator_binary, Config, Harness};
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};

const SECONDS: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    let mut config = Config::new(emulator_binary());
    config.touch_delay = Duration::ZERO;
    let harness = Harness::start(config.clone()).context("starting pcscd + emulator")?;

    let ctx = pcsc::Context::establish(pcsc::Scope::System)?;
    let reader = CString::new(harness.reader_name())?;
    let card = ctx.connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)?;
    let mut buf = [0u8; 258];
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < SECONDS {
        let resp = card.transmit(&[0x00, 0xFD, 0x00, 0x00, 0x00], &mut buf)?;
        anyhow::ensure!(
            resp.ends_with(&[0x90, 0x00]),
            "GET VERSION failed: {resp:02x?}"
        );
        n += 1;
    }
    let apdus = f64::from(n) / start.elapsed().as_secs_f64();
    drop(card);

    let mut yk = YubiKey::open_by_serial(Serial::from(config.serial))?;
    yk.authenticate(MgmKey::default())?;
    piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Never,
        TouchPolicy::Never,
    )?;
    let start = Instant::now();
    let mut s = 0u32;
    while start.elapsed() < SECONDS {
        piv::sign_data(
            &mut yk,
            &[0x5A; 32],
            AlgorithmId::EccP256,
            SlotId::Authentication,
        )?;
        s += 1;
    }
    let sigs = f64::from(s) / start.elapsed().as_secs_f64();

    println!("APDU round trips (GET VERSION via pcsc): {apdus:.0}/s ({n} in {SECONDS:?})");
    println!("P-256 signatures (yubikey::piv::sign_data): {sigs:.0}/s ({s} in {SECONDS:?})");
    Ok(())
}
