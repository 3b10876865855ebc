//! `waxseal-bench`: P-256 signatures per second on SoftHSM2, direct in-process cryptoki
//! versus through `waxseal-agent` over `agent.sock`, at each `--clients` count, with
//! p50/p99 latency and the audit log's fsyncs per signature; SSH signing through
//! `ssh.sock` versus OpenSSH's `ssh-agent` with the same token (`ssh-add -s`); the
//! agent's time to ready and idle RSS; and how the numbers compare with the targets
//! (docs/benchmarks.md, "Targets").
//!
//! Run: `cargo run --release -p pkcs11-tests --bin waxseal-bench -- [--seconds N]
//! [--clients 1,2,16,64] [--ssh-clients 1,4|none] [--audit group|each|off]
//! [--client ours|blocking] [--out FILE]`.
//! `--client blocking` talks to `agent.sock` as a client written from docs/protocol.md
//! alone would: one `write` per frame and blocking reads, no polling (what a Python, Go
//! or C client, or a PKCS#11 module inside another program, does); `ours` (the default)
//! is `waxseal_proto::client`, which polls briefly for the answer. Every row also shows
//! CPU time per signature: the bench process's own for the direct rows (the device's
//! cost, since SoftHSM2 signs in-process), the agent process's for the agent rows; and
//! the run measures the `fdatasync` of a small append on the agent's state directory.
//! `--audit`: `group` is the default config (fsync, group commit), `each` sets
//! `audit_group_commit = false` (one fsync per signature), `off` sets `audit_fsync =
//! false`. Prints Markdown (and appends it to `--out FILE`); `scripts/bench` runs this
//! and the TPM and PIV benches into docs/benchmarks.md. Knobs for experiments:
//! `BENCH_AGENT_CONFIG` (TOML appended to the agent's config, `\n` for newlines, e.g.
//! `[agent]\nspin_us = 0`) and `BENCH_CLIENT_SPIN_US` (the client's polling time).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use pkcs11_tests::bench::{
    self, lat, measure_threads, median_round, rate, ratio_cell, rss_kib, verdict, Report, Table,
};
use pkcs11_tests::{pkcs11_device, Agent, SoftHsm, SOFTHSM_MODULE};
use waxseal_agent::proto::KeyAlg;

const LABEL: &str = "bench";
const PIN: &str = "1234";

/// A client of `agent.sock` written from docs/protocol.md alone: length-prefixed JSON,
/// one `write` per frame, blocking `read_exact`, no polling.
struct Plain {
    stream: std::os::unix::net::UnixStream,
    id: u64,
    frame: Vec<u8>,
}

impl Plain {
    fn connect(path: &std::path::Path) -> Plain {
        let mut c = Plain {
            stream: std::os::unix::net::UnixStream::connect(path).unwrap(),
            id: 0,
            frame: Vec::new(),
        };
        let hello = c.call(r#""op":"hello","version":1"#);
        assert_eq!(hello["ok"]["version"], 1, "{hello}");
        c
    }

    /// Sends `{"id":N,<members>}` and returns the response (notices skipped).
    fn call(&mut self, members: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        self.id += 1;
        let body = format!("{{\"id\":{},{members}}}", self.id);
        self.frame.clear();
        self.frame
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.frame.extend_from_slice(body.as_bytes());
        self.stream.write_all(&self.frame).unwrap();
        loop {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).unwrap();
            let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut payload).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            if v.get("notice").is_none() {
                assert_eq!(v["id"], self.id, "{v}");
                return v;
            }
        }
    }
}

/// CPU time (user + system) a process has used so far, all its threads, in µs.
fn cpu_us(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 1e6 / rustix::param::clock_ticks_per_second() as f64
}

/// The median `fdatasync` of a 200-byte append to a file in `dir`, as the audit log
/// does it, over 200 tries.
fn fdatasync_p50(dir: &std::path::Path) -> Duration {
    use std::io::Write;
    let path = dir.join("bench-fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut lat: Vec<Duration> = (0..200)
        .map(|_| {
            f.write_all(&[b'x'; 200]).unwrap();
            let t = Instant::now();
            f.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    bench::pct(&mut lat, 0.5)
}

/// The floor a blocking client pays on this machine, with no agent: a server thread of
/// this process answers each 200-byte request on a Unix socket with 100 bytes after
/// `work` of busy CPU (the device's signing time), and one client thread sends and
/// reads blocking, as `Plain` does. Its latency minus `work` is what two sleeping
/// reads and their wake-ups cost, beyond which no server can go.
fn echo_floor(secs: f64, work: Duration) -> bench::Run {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut client, mut server) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut req = [0u8; 200];
        while server.read_exact(&mut req).is_ok() {
            let t = Instant::now();
            while t.elapsed() < work {
                std::hint::spin_loop();
            }
            if server.write_all(&[1u8; 100]).is_err() {
                break;
            }
        }
    });
    let (rate, p50, p99) = bench::measure(secs, || {
        client.write_all(&[0u8; 200]).unwrap();
        let mut answer = [0u8; 100];
        client.read_exact(&mut answer).unwrap();
    });
    drop(client);
    server.join().unwrap();
    bench::Run { rate, p50, p99 }
}

/// One measured run and the CPU it cost per signature (µs).
type Costed = (bench::Run, f64);

/// Runs `run`, charging the CPU `pid` used meanwhile to the signatures it made.
fn costed(pid: &str, secs: f64, run: impl FnOnce() -> bench::Run) -> Costed {
    let before = cpu_us(pid);
    let r = run();
    let cpu = cpu_us(pid) - before;
    (r, cpu / (r.rate * secs).max(1.0))
}

fn main() {
    let secs = bench::seconds(3.0);
    let plain = match bench::arg("--client").as_deref() {
        None | Some("ours") => false,
        Some("blocking") => true,
        Some(other) => panic!("--client ours|blocking, not {other}"),
    };
    let clients = bench::counts("--clients", &[1, 4]);
    let ssh_clients = bench::counts("--ssh-clients", &[1, 4]);
    let (audit, audit_config, audit_word) = bench::audit();
    let repeat = bench::repeat();
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
        .config(audit_config)
        .config(
            &std::env::var("BENCH_AGENT_CONFIG")
                .unwrap_or_default()
                .replace("\\n", "\n"),
        )
        .start();
    let ready = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(agent.pid());
    let mut control = agent.client();
    control.generate_key("hsm/p256", KeyAlg::P256).unwrap();

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
    };
    let socket = agent.socket.clone();
    let through_plain = |threads: usize| {
        let socket = socket.clone();
        let sign = format!(
            r#""op":"sign","key":"hsm/p256","purpose":"digest","hash":"sha256","digest":"{}""#,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
        );
        measure_threads(
            threads,
            secs,
            move || Plain::connect(&socket),
            move |c| {
                let r = c.call(&sign);
                assert!(r["ok"]["signature"].is_string(), "{r}");
            },
        )
    };
    let socket = agent.socket.clone();
    let through_ours = |threads: usize| {
        let socket = socket.clone();
        measure_threads(
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

    let mut report = Report::new();
    report.line(&format!(
        "#### SoftHSM2 P-256 (CKM_ECDSA, {}): direct cryptoki vs `agent.sock`, audit log: {audit_word}",
        softhsm_version()
    ));
    report.line("");
    report.line(&format!("{secs} s per row, each comparison run {repeat} times: the round with the median agent/direct is shown, with the range over the rounds in brackets. The direct rows use one in-process session per client thread, the agent rows one `agent.sock` connection per client thread."));
    let fsync = fdatasync_p50(&agent.state_dir);
    report.line("");
    report.line(&format!(
        "`fdatasync` of a 200-byte append on the agent's state directory: p50 {} (200 tries).",
        lat(fsync)
    ));
    let agent_path = if plain {
        "through agent.sock, blocking client"
    } else {
        "through agent.sock"
    };
    let me = std::process::id().to_string();
    let agent_pid = agent.pid().to_string();
    let mut table = Table::new(&[
        "path",
        "audit log",
        "clients",
        "signatures/s",
        "p50",
        "p99",
        "agent/direct",
        "signatures per fsync",
        "CPU/signature",
    ]);
    let mut ratios: Vec<(usize, f64)> = Vec::new();
    let mut added: Option<(f64, f64, f64)> = None;
    let mut one_client: Option<(bench::Run, bench::Run)> = None;
    let mut cpu_beyond: Vec<(usize, f64)> = Vec::new();
    for &threads in &clients {
        let before = control.status().unwrap().audit.unwrap();
        let mut rounds: Vec<(Costed, Costed)> = (0..repeat)
            .map(|_| {
                let d = costed(&me, secs, || direct(threads));
                let a = costed(&agent_pid, secs, || {
                    if plain {
                        through_plain(threads)
                    } else {
                        through_ours(threads)
                    }
                });
                (d, a)
            })
            .collect();
        rounds.sort_by(|x, y| (x.1 .0.rate / x.0 .0.rate).total_cmp(&(y.1 .0.rate / y.0 .0.rate)));
        let lo = rounds[0].1 .0.rate / rounds[0].0 .0.rate;
        let hi = rounds[repeat - 1].1 .0.rate / rounds[repeat - 1].0 .0.rate;
        let ((d, d_cpu), (a, a_cpu)) = rounds[repeat / 2];
        let after = control.status().unwrap().audit.unwrap();
        let signatures = (after.appended - before.appended) / 2;
        let syncs = after.syncs - before.syncs;
        let per_sync = if audit == "off" || syncs == 0 {
            "—".to_string()
        } else {
            format!("{:.1}", signatures as f64 / syncs as f64)
        };
        table.row(vec![
            "direct cryptoki".into(),
            "—".into(),
            threads.to_string(),
            rate(d.rate),
            lat(d.p50),
            lat(d.p99),
            String::new(),
            String::new(),
            format!("{d_cpu:.0} µs (device)"),
        ]);
        table.row(vec![
            agent_path.into(),
            audit_word.into(),
            threads.to_string(),
            rate(a.rate),
            lat(a.p50),
            lat(a.p99),
            ratio_cell(a.rate / d.rate, lo, hi, ""),
            per_sync,
            format!("{a_cpu:.0} µs (agent; {:+.0})", a_cpu - d_cpu),
        ]);
        ratios.push((threads, a.rate / d.rate));
        cpu_beyond.push((threads, a_cpu - d_cpu));
        if threads == 1 {
            one_client = Some((d, a));
            let by_rate = (1.0 / a.rate - 1.0 / d.rate) * 1e6;
            let p50 = bench::us(a.p50) - bench::us(d.p50);
            let p99 = bench::us(a.p99) - bench::us(d.p99);
            added = Some((by_rate, p50, p99));
            table.row(vec![
                "added latency (agent − direct)".into(),
                audit_word.into(),
                "1".into(),
                String::new(),
                format!("{p50:.0} µs"),
                format!("{p99:.0} µs"),
                format!("1/rate: {by_rate:.0} µs"),
                String::new(),
                String::new(),
            ]);
        }
    }
    report.table(&table);
    if let (true, Some((d, a))) = (plain, one_client) {
        let floor = echo_floor(secs, d.p50);
        let floor_added = bench::us(floor.p50) - bench::us(d.p50);
        report.line(&format!(
            "The floor of a blocking client here, with no agent: a thread of the bench answers 200-byte requests on a Unix socket after {} of busy CPU (the direct p50), to one blocking client thread: p50 {} (p99 {}), so the two blocking reads and their wake-ups add {floor_added:.0} µs; the agent added {:.0} µs at one client.",
            lat(d.p50),
            lat(floor.p50),
            lat(floor.p99),
            bench::us(a.p50) - bench::us(d.p50),
        ));
        report.line("");
    }

    let ssh = if ssh_clients.is_empty() {
        Vec::new()
    } else {
        ssh_comparison(&hsm, &agent, secs, &ssh_clients, &mut report)
    };

    let after_rss = rss_kib(agent.pid());
    let mut t = Table::new(&["agent", "value"]);
    t.row(vec![
        "ready (spawn to first `hello` answered)".into(),
        format!("{:.0} ms", ready.as_secs_f64() * 1e3),
    ]);
    t.row(vec![
        "idle RSS (before any signature)".into(),
        format!("{:.1} MiB", idle_rss as f64 / 1024.0),
    ]);
    t.row(vec![
        format!(
            "RSS after the run ({} connections at most)",
            clients.iter().chain(&ssh_clients).max().unwrap_or(&0)
        ),
        format!("{:.1} MiB", after_rss as f64 / 1024.0),
    ]);
    report.table(&t);

    // The targets (docs/benchmarks.md, "Targets"), for what this run measured.
    let mut t = Table::new(&["target", "measured", ""]);
    let four_plus: Vec<&(usize, f64)> = ratios.iter().filter(|(n, _)| *n >= 4).collect();
    let list = |v: &[&(usize, f64)]| {
        v.iter()
            .map(|(n, r)| format!("{r:.2} at {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let who = if plain {
        "blocking client"
    } else {
        "our client"
    };
    match audit {
        "off" => {
            if let Some((_, p50, _)) = added.filter(|_| plain) {
                t.row(vec![
                    "blocking client: added latency p50 ≤ 20 µs (fsync aside)".into(),
                    format!("{p50:.0} µs"),
                    verdict(p50 <= 20.0),
                ]);
            }
            for (n, beyond) in cpu_beyond.iter().filter(|(n, _)| *n == 4) {
                t.row(vec![
                    format!(
                        "{who}: agent CPU per signature beyond the device's ≤ 10 µs at {n} clients"
                    ),
                    format!("{beyond:+.0} µs"),
                    verdict(*beyond <= 10.0),
                ]);
            }
            if let Some((by_rate, p50, p99)) = added {
                t.row(vec![
                    "added latency p50 ≤ 30 µs (fsync aside)".into(),
                    format!("{p50:.0} µs (1/rate: {by_rate:.0} µs)"),
                    verdict(p50 <= 30.0),
                ]);
                t.row(vec![
                    "added latency p99 ≤ 200 µs".into(),
                    format!("{p99:.0} µs"),
                    verdict(p99 <= 200.0),
                ]);
            }
            if !four_plus.is_empty() {
                t.row(vec![
                    format!("{who}, ≥ 4 clients, audit fsync off: agent/direct ≥ 0.90"),
                    list(&four_plus),
                    verdict(four_plus.iter().all(|(_, r)| *r >= 0.90)),
                ]);
            }
        }
        "group" => {
            if let Some((d, a)) = one_client {
                // The physical bound of one client: one fsync and one signature each.
                let bound = 1.0 / (fsync.as_secs_f64() + d.p50.as_secs_f64());
                t.row(vec![
                    format!("{who}, 1 client: rate × (fsync p50 + direct p50) ≥ 0.90"),
                    format!(
                        "{:.2} ({}/s of a {}/s bound)",
                        a.rate / bound,
                        rate(a.rate),
                        rate(bound)
                    ),
                    verdict(a.rate / bound >= 0.90),
                ]);
            }
            let many: Vec<&(usize, f64)> = ratios.iter().filter(|(n, _)| *n >= 64).collect();
            if !many.is_empty() {
                t.row(vec![
                    format!(
                        "{who}, 64 clients, audit fsync on (group commit): agent/direct ≥ 0.85"
                    ),
                    list(&many),
                    verdict(many.iter().all(|(_, r)| *r >= 0.85)),
                ]);
            }
        }
        _ => {}
    }
    for (n, ratio) in &ssh {
        let goal = if *n >= 4 { 2.0 } else { 1.0 };
        if *n == 1 || *n == 4 {
            t.row(vec![
                format!("SSH through ssh.sock ≥ {goal:.0}× OpenSSH at {n} client(s)"),
                format!("{ratio:.2}×"),
                verdict(*ratio >= goal),
            ]);
        }
    }
    t.row(vec![
        "agent idle RSS ≤ 15 MiB".into(),
        format!("{:.1} MiB", idle_rss as f64 / 1024.0),
        verdict(idle_rss <= 15 * 1024),
    ]);
    t.row(vec![
        "ready ≤ 100 ms after start".into(),
        format!("{:.0} ms", ready.as_secs_f64() * 1e3),
        verdict(ready <= Duration::from_millis(100)),
    ]);
    report.table(&t);
    report.finish();
}

/// `softhsm2-util --version`.
fn softhsm_version() -> String {
    Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .ok()
        .map(|o| format!("SoftHSM2 {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "SoftHSM2".into())
}

/// SSH signatures at the protocol level: waxseal's ssh.sock vs OpenSSH's ssh-agent with
/// the same SoftHSM2 token loaded by `ssh-add -s`, same key, same client loop.
fn ssh_comparison(
    hsm: &SoftHsm,
    agent: &Agent,
    secs: f64,
    clients: &[usize],
    report: &mut Report,
) -> Vec<(usize, f64)> {
    use ssh_agent_lib::blocking::Client as SshClient;
    use ssh_agent_lib::proto::SignRequest;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;

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
        measure_threads(
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
    report.line(&format!(
        "#### SSH signing: `ssh.sock` vs OpenSSH `ssh-agent` + `ssh-add -s` ({})",
        openssh_version()
    ));
    report.line("");
    report.line(&format!("The same SoftHSM2 P-256 key in both agents (checked), `SSH_AGENTC_SIGN_REQUEST` with a 64-byte payload from `ssh_agent_lib::blocking::Client`, one connection per client thread, {secs} s per row, the median of {} rounds (range in brackets).", bench::repeat()));
    let mut table = Table::new(&[
        "agent",
        "clients",
        "signatures/s",
        "p50",
        "p99",
        "waxseal/OpenSSH",
    ]);
    let mut ratios = Vec::new();
    for &threads in clients {
        let (o, w, lo, hi) = median_round(bench::repeat(), || {
            (
                bench(oss_sock.clone(), threads),
                bench(agent.ssh_socket.clone(), threads),
            )
        });
        table.row(vec![
            "OpenSSH ssh-agent + ssh-add -s".into(),
            threads.to_string(),
            rate(o.rate),
            lat(o.p50),
            lat(o.p99),
            String::new(),
        ]);
        table.row(vec![
            "waxseal ssh.sock".into(),
            threads.to_string(),
            rate(w.rate),
            lat(w.p50),
            lat(w.p99),
            ratio_cell(w.rate / o.rate, lo, hi, "×"),
        ]);
        ratios.push((threads, w.rate / o.rate));
    }
    report.table(&table);
    let _ = oss.kill();
    let _ = oss.wait();
    ratios
}

/// `ssh -V` (it prints to stderr).
fn openssh_version() -> String {
    Command::new("ssh")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_else(|| "OpenSSH".into())
}
