//! `waxseal-bench`: P-256 signatures per second on SoftHSM2, direct in-process cryptoki
//! versus through `waxseal-agent` over `agent.sock`, at 1 and 4 (or `--clients`) concurrent clients, with
//! p50/p99 latency; the agent's time to ready and idle RSS.
//!
//! Run: `cargo run --release -p pkcs11-tests --bin waxseal-bench -- [--seconds N] [--clients 1,2,16,64]`
//! (default clients: 1,4).
//! Prints a Markdown table for docs/benchmarks.md. Knobs for experiments:
//! `BENCH_AGENT_CONFIG` (TOML appended to the agent's config, `\n` for newlines, e.g.
//! `[agent]\nspin_us = 0`) and `BENCH_CLIENT_SPIN_US` (the client's polling time).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use pkcs11_tests::{pkcs11_device, Agent, SoftHsm, SOFTHSM_MODULE};
use waxseal_agent::proto::KeyAlg;

const LABEL: &str = "bench";
const PIN: &str = "1234";

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(total: usize, elapsed: Duration, mut lat: Vec<Duration>) -> Run {
    lat.sort_unstable();
    let pick = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Run {
        rate: total as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

/// `threads` threads each signing in a loop for `secs`.
fn measure<S: Send + 'static>(
    threads: usize,
    secs: f64,
    setup: impl Fn() -> S + Send + Sync + 'static,
    op: impl Fn(&mut S) + Send + Sync + 'static,
) -> Run {
    let setup = Arc::new(setup);
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (setup, op, barrier) = (setup.clone(), op.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut state = setup();
                for _ in 0..50 {
                    op(&mut state); // warm up
                }
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let mut lat = Vec::with_capacity(200_000);
                while Instant::now() < end {
                    let t = Instant::now();
                    op(&mut state);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    let elapsed = start.elapsed();
    summarize(all.len(), elapsed, all)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .map_or(3.0, |s| s.parse().expect("--seconds N"));
    let hsm = SoftHsm::new();
    hsm.init_token(LABEL, "5555", PIN);
    let pin = hsm.pin_file("pin", PIN);
    // Before any thread starts: the in-process direct path reads it at C_Initialize.
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());

    pkcs11_tests::bins(); // build first: time to ready is the agent's alone
    let t0 = Instant::now();
    let agent = Agent::builder()
        .softhsm(&hsm)
        .log_level("warn")
        .config(&pkcs11_device("hsm", LABEL, &pin))
        .config(
            &std::env::var("BENCH_AGENT_CONFIG")
                .unwrap_or_default()
                .replace("\\n", "\n"),
        )
        .start();
    let ready = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(agent.pid());
    agent
        .client()
        .generate_key("hsm/p256", KeyAlg::P256)
        .unwrap();

    // Direct: cryptoki in this process, one session per thread, CKM_ECDSA on a digest.
    let ctx = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();
    {
        let s = ctx.open_ro_session(slot).unwrap();
        s.login(UserType::User, Some(&PIN.into())).unwrap();
        std::mem::forget(s); // stay logged in for the whole run
    }
    let direct = |threads: usize| {
        let ctx = ctx.clone();
        measure(
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
    };
    let socket = agent.socket.clone();
    let through_agent = |threads: usize| {
        let socket = socket.clone();
        measure(
            threads,
            secs,
            move || {
                let mut c = waxseal_agent::client::Client::connect(&socket).unwrap();
                if let Some(us) = std::env::var("BENCH_CLIENT_SPIN_US")
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    c.set_spin(Duration::from_micros(us));
                }
                c
            },
            |c| {
                let r = c.sign_digest("hsm/p256", &[7u8; 32], None, None).unwrap();
                assert!(r.signature.0.len() >= 8);
            },
        )
    };

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        })
        .unwrap_or_default();
    println!(
        "Machine: {} cores, {cpu}; SoftHSM2 P-256 (CKM_ECDSA), {secs} s per row",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| path | clients | signatures/s | p50 | p99 | agent/direct |");
    println!("|---|---|---|---|---|---|");
    let clients: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--clients")
        .nth(1)
        .map_or_else(
            || vec![1, 4],
            |list| {
                list.split(',')
                    .map(|n| n.trim().parse().expect("--clients N,N,…"))
                    .collect()
            },
        );
    for threads in clients {
        let d = direct(threads);
        let a = through_agent(threads);
        println!(
            "| direct cryptoki | {threads} | {:.0} | {:.1} µs | {:.1} µs | |",
            d.rate,
            d.p50.as_secs_f64() * 1e6,
            d.p99.as_secs_f64() * 1e6
        );
        println!(
            "| through agent.sock | {threads} | {:.0} | {:.1} µs | {:.1} µs | {:.2} |",
            a.rate,
            a.p50.as_secs_f64() * 1e6,
            a.p99.as_secs_f64() * 1e6,
            a.rate / d.rate
        );
        if threads == 1 {
            let added = (1.0 / a.rate - 1.0 / d.rate) * 1e6;
            println!("| added latency (1/agent − 1/direct) | 1 | | {added:.1} µs | | |");
        }
    }
    ssh_comparison(&hsm, &agent, secs);
    println!();
    println!("Agent: ready {:.0} ms after spawn (to first `hello` answered); idle RSS {:.1} MiB; after the run {:.1} MiB", ready.as_secs_f64() * 1e3, idle_rss as f64 / 1024.0, rss_kib(agent.pid()) as f64 / 1024.0);
}

/// SSH signatures at the protocol level: waxseal's ssh.sock vs OpenSSH's ssh-agent with
/// the same SoftHSM2 token loaded by `ssh-add -s`, same key, same client loop.
fn ssh_comparison(hsm: &SoftHsm, agent: &Agent, secs: f64) {
    use ssh_agent_lib::blocking::Client as SshClient;
    use ssh_agent_lib::proto::SignRequest;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let oss_sock = tmp.path().join("openssh.sock");
    let mut oss = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&oss_sock)
        .env("SOFTHSM2_CONF", hsm.conf())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&oss_sock).is_err() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let askpass = tmp.path().join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho {PIN}\n")).unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("ssh-add")
        .arg("-s")
        .arg(SOFTHSM_MODULE)
        .env("SSH_AUTH_SOCK", &oss_sock)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-add -s: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours = SshClient::new(UnixStream::connect(&agent.ssh_socket).unwrap())
        .request_identities()
        .unwrap()
        .into_iter()
        .find(|i| i.comment == "hsm/p256")
        .expect("hsm/p256 on ssh.sock");
    let theirs = SshClient::new(UnixStream::connect(&oss_sock).unwrap())
        .request_identities()
        .unwrap();
    assert!(
        theirs.iter().any(|i| i.credential == ours.credential),
        "ssh-agent offers the same key"
    );
    let credential = ours.credential;
    let bench = |sock: std::path::PathBuf, threads: usize| {
        let credential = credential.clone();
        measure(
            threads,
            secs,
            move || SshClient::new(UnixStream::connect(&sock).unwrap()),
            move |c| {
                let sig = c
                    .sign(SignRequest {
                        credential: credential.clone(),
                        data: vec![7u8; 64],
                        flags: 0,
                    })
                    .unwrap();
                assert_eq!(sig.algorithm().as_str(), "ecdsa-sha2-nistp256");
            },
        )
    };
    println!();
    println!("SSH agent protocol, ecdsa-sha2-nistp256 on the same SoftHSM2 key, 64-byte payload:");
    println!();
    println!("| agent | clients | signatures/s | p50 | p99 | waxseal/OpenSSH |");
    println!("|---|---|---|---|---|---|");
    let clients: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--clients")
        .nth(1)
        .map_or_else(
            || vec![1, 4],
            |list| {
                list.split(',')
                    .map(|n| n.trim().parse().expect("--clients N,N,…"))
                    .collect()
            },
        );
    for threads in clients {
        let o = bench(oss_sock.clone(), threads);
        let w = bench(agent.ssh_socket.clone(), threads);
        println!(
            "| OpenSSH ssh-agent + ssh-add -s | {threads} | {:.0} | {:.1} µs | {:.1} µs | |",
            o.rate,
            o.p50.as_secs_f64() * 1e6,
            o.p99.as_secs_f64() * 1e6
        );
        println!(
            "| waxseal ssh.sock | {threads} | {:.0} | {:.1} µs | {:.1} µs | {:.2} |",
            w.rate,
            w.p50.as_secs_f64() * 1e6,
            w.p99.as_secs_f64() * 1e6,
            w.rate / o.rate
        );
    }
    let _ = oss.kill();
    let _ = oss.wait();
}
