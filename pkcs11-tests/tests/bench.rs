//! The benchmark binaries behind `scripts/bench` still run end to end and write the
//! tables docs/benchmarks.md is made of. No number is judged here (benchmarks are not
//! timed tests): each run is a fraction of a second per row, and the checks are on the
//! shape of what comes out — every client count measured both ways, every row naming
//! the machine and the command, the targets (docs/benchmarks.md) each marked met or missed, and
//! `--out` receiving exactly what was printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use pkcs11_tests::bins;

/// Runs a bench binary with `args` and `--out FILE`; returns what it printed.
fn run(bin: &str, args: &[&str]) -> String {
    bins(); // the agent and the emulator the benches start
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("part.md");
    let result = Command::new(bin)
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let stdout = String::from_utf8(result.stdout).unwrap();
    assert!(
        result.status.success(),
        "{bin} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        stdout,
        "--out holds what was printed"
    );
    stdout
}

/// The table rows (lines starting `| ` that are not headers or rulers) containing
/// `what`.
fn rows<'a>(text: &'a str, what: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with("| ") && l.contains(what))
        .collect()
}

/// Every data row of every table ends with the machine and the command.
fn rows_name_machine_and_command(text: &str, command: &str) {
    let mut data = 0;
    for line in text.lines().filter(|l| l.starts_with("| ")) {
        if line.ends_with("| machine | command |") {
            continue;
        }
        data += 1;
        assert!(
            line.ends_with(&format!("| `{command}` |")),
            "row without its command: {line}"
        );
        assert!(line.contains("-core "), "row without its machine: {line}");
    }
    assert!(data > 0, "no table rows in:\n{text}");
}

#[test]
fn softhsm_bench_measures_every_client_count_both_ways_and_checks_the_targets() {
    let args = [
        "--seconds",
        "0.2",
        "--repeat",
        "1",
        "--clients",
        "1,4",
        "--audit",
        "off",
        "--ssh-clients",
        "1",
    ];
    let text = run(env!("CARGO_BIN_EXE_waxseal-bench"), &args);
    rows_name_machine_and_command(&text, &format!("waxseal-bench {}", args.join(" ")));
    for clients in ["1", "4"] {
        let at = format!(" | {clients} | ");
        assert_eq!(
            rows(&text, "| direct cryptoki |")
                .iter()
                .filter(|r| r.contains(&at))
                .count(),
            1,
            "direct row at {clients}:\n{text}"
        );
        let agent: Vec<_> = rows(&text, "| through agent.sock | no fsync |")
            .into_iter()
            .filter(|r| r.contains(&at))
            .collect();
        assert_eq!(agent.len(), 1, "agent row at {clients}:\n{text}");
        assert!(
            agent[0].contains("| **"),
            "agent/direct ratio: {}",
            agent[0]
        );
    }
    assert_eq!(
        rows(&text, "| OpenSSH ssh-agent + ssh-add -s | 1 |").len(),
        1
    );
    assert_eq!(rows(&text, "| waxseal ssh.sock | 1 |").len(), 1);
    for target in [
        "added latency p50 ≤ 30 µs",
        "audit fsync off: agent/direct ≥ 0.90",
        "SSH through ssh.sock ≥ 1× OpenSSH at 1 client",
        "agent idle RSS ≤ 15 MiB",
        "ready ≤ 100 ms after start",
    ] {
        let found = rows(&text, target);
        assert_eq!(found.len(), 1, "target {target:?}:\n{text}");
        assert!(
            found[0].contains("| met |") || found[0].contains("| **missed** |"),
            "{}",
            found[0]
        );
    }
    assert_eq!(rows(&text, "idle RSS (before any signature)").len(), 1);
}

#[test]
fn blocking_client_rows_show_cpu_per_signature_and_the_fsync_bound() {
    let args = [
        "--seconds",
        "0.2",
        "--repeat",
        "1",
        "--clients",
        "1,4",
        "--audit",
        "group",
        "--ssh-clients",
        "none",
        "--client",
        "blocking",
    ];
    let text = run(env!("CARGO_BIN_EXE_waxseal-bench"), &args);
    rows_name_machine_and_command(&text, &format!("waxseal-bench {}", args.join(" ")));
    let agent = rows(
        &text,
        "| through agent.sock, blocking client | fsync, group commit |",
    );
    assert_eq!(agent.len(), 2, "{text}");
    for row in agent {
        assert!(
            row.contains(" µs (agent; "),
            "agent CPU per signature: {row}"
        );
    }
    assert_eq!(
        rows(&text, "| direct cryptoki |")
            .iter()
            .filter(|r| r.contains(" µs (device) |"))
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("`fdatasync` of a 200-byte append") && l.contains("p50 ")),
        "{text}"
    );
    let bound = rows(
        &text,
        "blocking client, 1 client: rate × (fsync p50 + direct p50) ≥ 0.90",
    );
    assert_eq!(bound.len(), 1, "{text}");
    assert!(
        bound[0].contains("| met |") || bound[0].contains("| **missed** |"),
        "{}",
        bound[0]
    );
}

#[test]
fn group_commit_rows_count_signatures_per_fsync() {
    let args = [
        "--seconds",
        "0.2",
        "--repeat",
        "1",
        "--clients",
        "4",
        "--ssh-clients",
        "none",
    ];
    let text = run(env!("CARGO_BIN_EXE_waxseal-bench"), &args);
    let agent = rows(&text, "| through agent.sock | fsync, group commit | 4 |");
    assert_eq!(agent.len(), 1, "{text}");
    // The cell before CPU per signature, machine and command: signatures per fsync, a
    // number ≥ 1.
    let cells: Vec<&str> = agent[0].split(" | ").collect();
    let per_sync: f64 = cells[cells.len() - 4].trim().parse().unwrap_or_else(|_| {
        panic!("signatures per fsync in {}", agent[0]);
    });
    assert!(per_sync >= 1.0, "{}", agent[0]);
    assert!(rows(&text, "ssh.sock").is_empty(), "--ssh-clients none");
}

#[test]
fn tpm_and_piv_benches_run_at_each_client_count() {
    for (bin, name) in [
        (env!("CARGO_BIN_EXE_waxseal-bench-tpm"), "waxseal-bench-tpm"),
        (env!("CARGO_BIN_EXE_waxseal-bench-piv"), "waxseal-bench-piv"),
    ] {
        let args = ["--seconds", "0.2", "--repeat", "1", "--clients", "1,2"];
        let text = run(bin, &args);
        rows_name_machine_and_command(&text, &format!("{name} {}", args.join(" ")));
        for clients in ["1", "2"] {
            assert_eq!(
                rows(&text, &format!("| through agent.sock | {clients} |")).len(),
                1,
                "{name} at {clients}:\n{text}"
            );
        }
        assert_eq!(
            rows(&text, "| added latency (agent − direct) | 1 |").len(),
            1
        );
    }
}
