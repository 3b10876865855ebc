//! `waxseal-bench-pkcs11`: the same PKCS#11 probe through three modules, on one
//! SoftHSM2 P-256 key: SoftHSM2 itself (in-process), p11-kit forwarding
//! (`p11-kit-client.so` → `p11-kit server` → SoftHSM2), and waxseal's module
//! (`libwaxseal_pkcs11.so` → `waxseal-agent` → SoftHSM2). Each thread opens its own
//! session and signs a 32-byte digest with `CKM_ECDSA` in a loop.
//!
//! Run: `cargo run --release -p pkcs11-tests --bin waxseal-bench-pkcs11 -- [--seconds N]
//! [--threads 1,4] [--audit group|each|off] [--repeat N] [--module PATH] [--out FILE]`.
//! `--module` defaults to `libwaxseal_pkcs11.so` beside this binary (build it with
//! `cargo build --release -p waxseal-pkcs11`). Prints Markdown (and appends it to `--out
//! FILE`); `scripts/bench` runs it into docs/benchmarks.md, and checks the targets of
//! docs/benchmarks.md ("Targets": ≥ 3× p11-kit at 1 thread, ≥ 1.5× at 4; added p50 ≤
//! 30 µs over SoftHSM2 at 1 thread without fsync).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use pkcs11_tests::bench::{self, lat, measure_threads, rate, ratio_cell, us, verdict, Report};
use pkcs11_tests::{pkcs11_device, require, Agent, SoftHsm, SOFTHSM_MODULE};
use waxseal_agent::proto::KeyAlg;

/// Token label on SoftHSM2, and the agent's device name, so that every module shows a
/// token of this label.
const TOKEN: &str = "bench";
const PIN: &str = "1234";
const P11_KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";

/// One loaded module, logged in, with the slot of the token.
struct Module {
    ctx: Pkcs11,
    slot: Slot,
    /// Keeps the login: it ends when a module's last session closes.
    _login: Session,
}

impl Module {
    fn load(path: &Path) -> Module {
        let ctx = Pkcs11::new(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .unwrap();
        let slot = ctx
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
            .unwrap_or_else(|| panic!("{}: no token labelled {TOKEN}", path.display()));
        let info = ctx.get_token_info(slot).unwrap();
        let login = ctx.open_ro_session(slot).unwrap();
        if info.login_required() {
            if info.protected_authentication_path() {
                login.login(UserType::User, None).unwrap();
            } else {
                login.login(UserType::User, Some(&PIN.into())).unwrap();
            }
        }
        Module {
            ctx,
            slot,
            _login: login,
        }
    }

    /// `threads` clients, each with its own session, signing for `secs`.
    fn run(&self, threads: usize, secs: f64) -> bench::Run {
        let (ctx, slot) = (self.ctx.clone(), self.slot);
        measure_threads(
            threads,
            secs,
            move || {
                let s = ctx.open_ro_session(slot).unwrap();
                let key = s
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Label(b"p256".to_vec()),
                    ])
                    .unwrap()[0];
                (s, key)
            },
            |(s, key)| {
                let sig = s.sign(&Mechanism::Ecdsa, *key, &[7u8; 32]).unwrap();
                assert_eq!(sig.len(), 64);
            },
        )
    }
}

/// `p11-kit server` forwarding the token on a socket in `dir`.
struct P11KitServer(Child);

impl P11KitServer {
    fn start(hsm: &SoftHsm, dir: &Path) -> (P11KitServer, PathBuf) {
        require("p11-kit");
        require(P11_KIT_CLIENT);
        let sock = dir.join("p11.sock");
        let child = Command::new("p11-kit")
            .env("SOFTHSM2_CONF", hsm.conf())
            .args(["server", "-f", "-s", "-n"])
            .arg(&sock)
            .args(["--provider", SOFTHSM_MODULE])
            .arg(format!("pkcs11:token={TOKEN}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "p11-kit server made no socket");
            std::thread::yield_now();
        }
        (P11KitServer(child), sock)
    }
}

impl Drop for P11KitServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let secs = bench::seconds(3.0);
    let threads = bench::counts("--threads", &[1, 4]);
    let (audit, audit_config, audit_word) = bench::audit();
    let repeat = bench::repeat();
    let module = bench::arg("--module")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .unwrap()
                .with_file_name("libwaxseal_pkcs11.so")
        });
    assert!(
        module.exists(),
        "{}: build it with `cargo build --release -p waxseal-pkcs11`",
        module.display()
    );

    let hsm = SoftHsm::new();
    hsm.init_token(TOKEN, "5555", PIN);
    let pin = hsm.pin_file("pin", PIN);
    let agent = Agent::builder()
        .softhsm(&hsm)
        .log_level("warn")
        .config(&pkcs11_device(TOKEN, TOKEN, &pin))
        .config(audit_config)
        .start();
    agent
        .client()
        .generate_key(&format!("{TOKEN}/p256"), KeyAlg::P256)
        .unwrap();
    let run_dir = tempfile::tempdir().unwrap();
    let (_server, p11_sock) = P11KitServer::start(&hsm, run_dir.path());

    // Every module reads its environment when it is initialised: set it all before.
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());
    std::env::set_var(
        "P11_KIT_SERVER_ADDRESS",
        format!("unix:path={}", p11_sock.display()),
    );
    std::env::set_var("WAXSEAL_SOCK", &agent.socket);
    let direct = Module::load(Path::new(SOFTHSM_MODULE));
    let p11kit = Module::load(Path::new(P11_KIT_CLIENT));
    let ours = Module::load(&module);

    let mut report = Report::new();
    report.line(&format!(
        "#### PKCS#11 modules: SoftHSM2 direct, p11-kit forwarding, `libwaxseal_pkcs11.so` (P-256, `CKM_ECDSA`), audit log: {audit_word}"
    ));
    report.line("");
    report.line(&format!(
        "{secs} s per row; each thread opens its own session on the module and signs a 32-byte digest in a loop, all three modules loaded in the bench process through `cryptoki`. Each comparison runs {repeat} times: the round with the median waxseal/p11-kit ratio is shown, with the range in brackets."
    ));
    let mut table = bench::Table::new(&[
        "module",
        "threads",
        "signatures/s",
        "p50",
        "p99",
        "vs p11-kit",
        "vs SoftHSM2 direct",
    ]);
    let mut checks = Vec::new();
    for &n in &threads {
        let mut rounds: Vec<[bench::Run; 3]> = (0..repeat)
            .map(|_| [direct.run(n, secs), p11kit.run(n, secs), ours.run(n, secs)])
            .collect();
        rounds.sort_by(|a, b| (a[2].rate / a[1].rate).total_cmp(&(b[2].rate / b[1].rate)));
        let lo = rounds[0][2].rate / rounds[0][1].rate;
        let hi = rounds[repeat - 1][2].rate / rounds[repeat - 1][1].rate;
        let [d, p, o] = rounds[repeat / 2];
        let row = |name: &str, r: &bench::Run, vs_kit: String, vs_direct: String| {
            vec![
                name.to_string(),
                n.to_string(),
                rate(r.rate),
                lat(r.p50),
                lat(r.p99),
                vs_kit,
                vs_direct,
            ]
        };
        table.row(row(
            "SoftHSM2 (libsofthsm2.so)",
            &d,
            String::new(),
            String::new(),
        ));
        table.row(row(
            "p11-kit-client.so → p11-kit server",
            &p,
            String::new(),
            format!("{:.2}", p.rate / d.rate),
        ));
        table.row(row(
            "libwaxseal_pkcs11.so → waxseal-agent",
            &o,
            ratio_cell(o.rate / p.rate, lo, hi, "×"),
            format!("{:.2}", o.rate / d.rate),
        ));
        let times = o.rate / p.rate;
        if n == 1 {
            checks.push((
                "1 thread: ≥ 3× p11-kit".to_string(),
                format!("{times:.2}×"),
                times >= 3.0,
            ));
            if audit == "off" {
                let added = us(o.p50) - us(d.p50);
                checks.push((
                    "1 thread, no fsync: added p50 over SoftHSM2 ≤ 30 µs".to_string(),
                    format!("{added:.0} µs"),
                    added <= 30.0,
                ));
            }
        } else if n >= 4 {
            checks.push((
                format!("{n} threads: ≥ 1.5× p11-kit"),
                format!("{times:.2}×"),
                times >= 1.5,
            ));
        }
    }
    report.table(&table);
    let mut targets = bench::Table::new(&["target", "measured", ""]);
    for (what, got, ok) in checks {
        targets.row(vec![what, got, verdict(ok)]);
    }
    report.table(&targets);
    report.finish();
}
