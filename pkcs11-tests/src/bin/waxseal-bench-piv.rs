//! `waxseal-bench-piv`: P-256 signatures per second on the PIV emulator through the real
//! pcscd, direct `yubikey` crate calls versus through `waxseal-agent` over `agent.sock`,
//! and the agent's added latency per signature.
//!
//! Run: `cargo run --release -p pkcs11-tests --bin waxseal-bench-piv -- [--seconds N]
//! [--clients 1,2,16,64] [--audit group|each|off] [--out FILE]`. With N clients, the direct rows are N threads
//! of one process sharing one card handle (a card runs one command at a time, and
//! pcscd allows 16 handles per reader); the agent rows are N `agent.sock` connections.
//! The key has PIN policy `once` and touch policy `never`. The agent signs first and
//! verifies the PIN only when the card asks (after another client reset it), so its
//! like-for-like direct baseline is the sign-only row; the VERIFY + sign row shows what
//! a PIN verification per signature would cost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::sync::{Arc, Mutex};
use std::time::Duration;

use piv_emulator::harness::{Config, Harness};
use pkcs11_tests::bench::{
    self, added_row, device_table, measure, measure_threads, median_round, ratio_cell, run_row,
    Report, Run,
};
use pkcs11_tests::{bins, Agent};
use waxseal_agent::proto::{HashAlg, PinPolicy, TouchPolicy};
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{Serial, YubiKey};

const SERIAL: u32 = 20_260_777;

fn main() {
    let secs = bench::seconds(3.0);
    let (_, audit_config, audit_word) = bench::audit();
    let clients = bench::counts("--clients", &[1]);
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
        .config(audit_config)
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
            sign(&mut yk, &digest);
        })
    };
    // Direct, sign only (PIN verified once), N threads sharing the handle.
    // A fresh handle for each row: the agent's use of the card in between resets the
    // card for other handles (pcscd reports SCARD_W_RESET_CARD to them).
    let socket = agent.socket.clone();
    let mut rows = Vec::new();
    for &n in &clients {
        let direct = || {
            let yk = {
                let mut yk = YubiKey::open_by_serial(Serial::from(SERIAL)).unwrap();
                yk.verify_pin(b"123456").unwrap();
                Arc::new(Mutex::new(yk))
            };
            measure_threads(
                n,
                secs,
                move || yk.clone(),
                move |yk| sign(&mut yk.lock().unwrap(), &digest),
            )
        };
        let via = || {
            let socket = socket.clone();
            measure_threads(
                n,
                secs,
                move || waxseal_agent::client::Client::connect(&socket).unwrap(),
                move |c| {
                    c.sign_digest("yk/9a", &digest, Some(HashAlg::Sha256), None)
                        .unwrap();
                },
            )
        };
        let (d, a, lo, hi) = median_round(bench::repeat(), || (direct(), via()));
        rows.push((n, d, a, lo, hi));
    }
    drop(client);

    let mut report = Report::new();
    report.line(&format!("#### P-256 on the PIV emulator (piv-emulator on pcscd + vpcd): direct `yubikey` crate vs `agent.sock`, audit log: {audit_word}"));
    report.line("");
    report.line(&format!("{secs} s per row. Slot 9a, PIN policy `once`, touch `never`. Direct: the `yubikey` crate in-process through the same pcscd, PIN verified once, N threads sharing one handle; the agent signs first and verifies only when the card asks, so sign-only is its like-for-like baseline. Agent rows: one `agent.sock` connection per client thread. Each comparison is run {} times; the round with the median agent/direct is shown, the range in brackets.", bench::repeat()));
    let mut table = device_table();
    let verify_each = Run {
        rate: d_rate,
        p50: d50,
        p99: d99,
    };
    table.row(run_row(
        "direct, VERIFY PIN + sign each time",
        1,
        &verify_each,
        String::new(),
    ));
    for (n, d, a, lo, hi) in &rows {
        table.row(run_row(
            "direct `yubikey` crate, sign only",
            *n,
            d,
            String::new(),
        ));
        table.row(run_row(
            "through agent.sock",
            *n,
            a,
            ratio_cell(a.rate / d.rate, *lo, *hi, ""),
        ));
        if *n == 1 {
            table.row(added_row(d, a));
        }
    }
    report.table(&table);
    report.finish();
}

/// One P-256 signature by the key in slot 9a, straight through the `yubikey` crate.
fn sign(yk: &mut YubiKey, digest: &[u8]) {
    piv::sign_data(yk, digest, AlgorithmId::EccP256, SlotId::Authentication).unwrap();
}
