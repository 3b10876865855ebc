//! `waxseal-bench-tpm`: P-256 signatures per second on swtpm, direct in-process
//! `tss-esapi` versus through `waxseal-agent` over `agent.sock`; TPM commands per
//! signature (counted by the backend); SRK creation and key load times.
//!
//! Run: `cargo run --release -p pkcs11-tests --bin waxseal-bench-tpm -- [--seconds N]
//! [--clients 1,2,16,64] [--audit group|each|off] [--out FILE]`. swtpm serves one connection at a time, so the
//! phases run one after another, and the direct baseline is one ESAPI context: a TPM
//! runs one command at a time, so no number of clients can beat it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::str::FromStr;
use std::time::Instant;

use pkcs11_tests::bench::{
    self, added_row, device_table, measure, measure_threads, ratio_cell, run_row, Report,
};
use pkcs11_tests::{tpm_device, Agent, Swtpm};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket, SignatureScheme};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;
use waxseal_agent::backend::tpm::{key_template, srk_template, Tpm, TpmSettings};
use waxseal_agent::backend::SignInput;
use waxseal_agent::proto::{KeyAlg, RsaPadding};

fn main() {
    let secs = bench::seconds(3.0);
    let (_, audit_config, audit_word) = bench::audit();
    let clients = bench::counts("--clients", &[1, 2]);
    let tpm = Swtpm::start();
    let keys = tempfile::tempdir().unwrap();
    let digest = [0x5au8; 32];

    // 1. Direct tss-esapi: SRK, one P-256 key, TPM2_Sign in a loop.
    let (direct, srk_ms, load_ms) = {
        let mut ctx = Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap();
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        let t = Instant::now();
        let srk = ctx
            .create_primary(
                Hierarchy::Owner,
                srk_template().unwrap(),
                None,
                None,
                None,
                None,
            )
            .unwrap()
            .key_handle;
        let srk_ms = t.elapsed().as_secs_f64() * 1e3;
        let made = ctx
            .create(
                srk,
                key_template(KeyAlg::P256, None).unwrap(),
                None,
                None,
                None,
                None,
            )
            .unwrap();
        // Key load time: TPM2_Load + TPM2_FlushContext, averaged.
        let n = 50;
        let t = Instant::now();
        for _ in 0..n {
            let h = ctx
                .load(srk, made.out_private.clone(), made.out_public.clone())
                .unwrap();
            ctx.flush_context(h.into()).unwrap();
        }
        let load_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(n);
        let key = ctx
            .load(srk, made.out_private.clone(), made.out_public.clone())
            .unwrap();
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let d = Digest::try_from(digest.to_vec()).unwrap();
        let direct = measure(secs, || {
            let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
                tag: TPM2_ST_HASHCHECK,
                hierarchy: TPM2_RH_NULL,
                digest: Default::default(),
            })
            .unwrap();
            ctx.sign(key, d.clone(), scheme, ticket).unwrap();
        });
        ctx.flush_context(key.into()).unwrap();
        ctx.flush_context(srk.into()).unwrap();
        (direct, srk_ms, load_ms)
    };

    // 2. The backend in-process: TPM commands per signature, cold and warm.
    let (cold_cmds, warm_cmds, first_ms) = {
        let mut backend = Tpm::new(TpmSettings {
            name: "tpm".into(),
            tcti: tpm.tcti(),
            key_dir: keys.path().to_path_buf(),
            pin: None,
        });
        backend.generate("bench", KeyAlg::P256, None, None).unwrap();
        backend.disconnect();
        let input = SignInput {
            digest: &digest,
            hash: None,
            padding: RsaPadding::Pkcs1,
            raw: false,
        };
        let before = backend.stats().commands;
        let t = Instant::now();
        backend.sign("bench", &input).unwrap();
        let first_ms = t.elapsed().as_secs_f64() * 1e3;
        let cold = backend.stats().commands - before;
        let before = backend.stats().commands;
        let n = 200;
        for _ in 0..n {
            backend.sign("bench", &input).unwrap();
        }
        let warm = (backend.stats().commands - before) as f64 / f64::from(n);
        backend.disconnect();
        (cold, warm, first_ms)
    };

    // 3. Through the agent.
    let agent = Agent::builder()
        .log_level("warn")
        .config(audit_config)
        .config(&tpm_device("tpm", &tpm, keys.path(), None))
        .start();
    agent
        .client()
        .sign_digest("tpm/bench", &digest, None, None)
        .unwrap();
    let socket = agent.socket.clone();
    // swtpm serves one connection, which the agent keeps: the agent rows are repeated
    // against the one direct measurement, and the median by rate is shown.
    let via: Vec<(usize, bench::Run, f64, f64)> = clients
        .iter()
        .map(|&n| {
            let mut runs: Vec<bench::Run> = (0..bench::repeat())
                .map(|_| {
                    let socket = socket.clone();
                    measure_threads(
                        n,
                        secs,
                        move || waxseal_agent::client::Client::connect(&socket).unwrap(),
                        move |c| {
                            c.sign_digest("tpm/bench", &digest, None, None).unwrap();
                        },
                    )
                })
                .collect();
            runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
            let lo = runs[0].rate / direct.0;
            let hi = runs[runs.len() - 1].rate / direct.0;
            (n, runs[runs.len() / 2], lo, hi)
        })
        .collect();

    let mut report = Report::new();
    report.line(&format!(
        "#### P-256 on swtpm ({}): direct tss-esapi vs `agent.sock`, audit log: {audit_word}",
        swtpm_version()
    ));
    report.line("");
    report.line(&format!("{secs} s per row. Direct: one ESAPI context in-process, `TPM2_Sign` (ECDSA SHA-256) on a loaded key, the agent's SRK and key templates. swtpm serves one connection and runs one command at a time, so the direct row is the ceiling for any number of clients; the agent rows have one `agent.sock` connection per client thread, each the median of {} runs (range of agent/direct in brackets).", bench::repeat()));
    let mut table = device_table();
    let direct_run = bench::Run {
        rate: direct.0,
        p50: direct.1,
        p99: direct.2,
    };
    table.row(run_row("direct tss-esapi", 1, &direct_run, String::new()));
    for (n, r, lo, hi) in &via {
        table.row(run_row(
            "through agent.sock",
            *n,
            r,
            ratio_cell(r.rate / direct.0, *lo, *hi, ""),
        ));
        if *n == 1 {
            table.row(added_row(&direct_run, r));
        }
    }
    report.table(&table);
    report.line(&format!(
        "TPM commands per signature: {warm_cmds:.2} with the key loaded; {cold_cmds} for the first signature on a new connection (SRK create + load + sign: {first_ms:.1} ms). SRK (ECC P-256 primary) creation: {srk_ms:.1} ms; key load (`TPM2_Load` + flush): {load_ms:.2} ms."
    ));
    report.line("");
    report.finish();
}

/// `swtpm --version`, first line.
fn swtpm_version() -> String {
    std::process::Command::new("swtpm")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "swtpm".into())
}
