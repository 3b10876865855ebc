//! `waxseal-bench-piv`: P-256 signatures per second on the PIV emulator through the real
//! pcscd, direct `yubikey` crate calls versus through `waxseal-agent` over `agent.sock`,
//! and the agent's added latency per signature.
//!
//! Run: `cargo run --release -p pkcs11-tests --bin waxseal-bench-piv -- [--seconds N]`.
//! The key has PIN policy `once` and touch policy `never`. The agent signs first and
//! verifies the PIN only when the card asks (after another client reset it), so its
//! like-for-like direct baseline is the sign-only row; the VERIFY + sign row shows what
//! a PIN verification per signature would cost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::time::Duration;

use piv_emulator::harness::{Config, Harness};
use pkcs11_tests::bench::{measure, us};
use pkcs11_tests::{bins, Agent};
use waxseal_agent::proto::{HashAlg, PinPolicy, TouchPolicy};
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{Serial, YubiKey};

const SERIAL: u32 = 20_260_777;

fn main() {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(3.0, |s| s.parse().expect("--seconds N"));
    let mut config = Config::new(bins().piv_emulator.clone());
    config.serial = SERIAL;
    config.touch_delay = Duration::ZERO;
    let _card = Harness::start(config).expect("pcscd + piv-emulator (scripts/install-deps)");
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder()
        .config(&format!(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {SERIAL}\npin = \"file:{}\"\n",
            pin.display()
        ))
        .log_level("warn")
        .start();
    let mut client = agent.client();
    client
        .generate_key_with(
            "yk/9a",
            waxseal_agent::proto::KeyAlg::P256,
            Some(TouchPolicy::Never),
            Some(PinPolicy::Once),
        )
        .unwrap();
    let digest = [0x5au8; 32];

    // Direct: the yubikey crate, PIN verified then sign, as the agent does.
    let (d_rate, d50, d99) = {
        let mut yk = YubiKey::open_by_serial(Serial::from(SERIAL)).unwrap();
        measure(secs, || {
            yk.verify_pin(b"123456").unwrap();
            piv::sign_data(
                &mut yk,
                &digest,
                AlgorithmId::EccP256,
                SlotId::Authentication,
            )
            .unwrap();
        })
    };
    // Direct, sign only (PIN verified once).
    let (s_rate, s50, _) = {
        let mut yk = YubiKey::open_by_serial(Serial::from(SERIAL)).unwrap();
        yk.verify_pin(b"123456").unwrap();
        measure(secs, || {
            piv::sign_data(
                &mut yk,
                &digest,
                AlgorithmId::EccP256,
                SlotId::Authentication,
            )
            .unwrap();
        })
    };
    // Through the agent.
    let (a_rate, a50, a99) = measure(secs, || {
        client
            .sign_digest("yk/9a", &digest, Some(HashAlg::Sha256), None)
            .unwrap();
    });
    // Like for like: with PIN policy `once` the agent verifies only when the card asks.
    let added = 1e6 / a_rate - 1e6 / s_rate;
    println!("waxseal-bench-piv: P-256 on piv-emulator via pcscd/vpcd, {secs} s per row, 1 client");
    println!("| path | sig/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    println!(
        "| direct yubikey crate, sign only | {s_rate:.0} | {:.0} | |",
        us(s50)
    );
    println!(
        "| direct yubikey crate, VERIFY PIN + sign | {d_rate:.0} | {:.0} | {:.0} |",
        us(d50),
        us(d99)
    );
    println!(
        "| through agent.sock | {a_rate:.0} | {:.0} | {:.0} |",
        us(a50),
        us(a99)
    );
    println!(
        "agent / direct sign-only {:.2}; added latency {added:.0} µs per signature (1/rate_agent − 1/rate_direct)",
        a_rate / s_rate
    );
}
