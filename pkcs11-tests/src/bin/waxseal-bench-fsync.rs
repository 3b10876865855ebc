//! `waxseal-bench-fsync`: what one `fdatasync` of an audit record costs on this file
//! system, by how the record's space came to be (docs/benchmarks.md, "Issue 17: the
//! preallocated audit log"):
//! - `grow`: the record is appended (`O_APPEND`), so the file's size changes and the
//!   sync must also write the inode;
//! - `zeroed`: the record is written with `pwrite` into space that was written as zeros
//!   and synced beforehand (what the agent's audit log does, docs/architecture.md, "The
//!   audit log");
//! - `fallocate`: the record is written into space reserved with `fallocate`, whose
//!   extents stay *unwritten* until data lands in them: the sync must record their
//!   conversion.
//!
//! Also the one-time cost of writing and syncing a chunk of zeros. Run: `cargo run
//! --release -p pkcs11-tests --bin waxseal-bench-fsync -- [--dir DIR] [--records N]
//! [--bytes B] [--rounds R]`; `--dir` must be on the file system to measure (the
//! default is the current directory). The modes alternate within each round so a load
//! change on the machine hits all three alike. Prints Markdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: any failure aborts the run

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FallocateFlags;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Grow,
    Zeroed,
    Fallocate,
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Grow => "grow (append past the end)",
            Mode::Zeroed => "zeroed (pwrite into written zeros)",
            Mode::Fallocate => "fallocate (pwrite into unwritten extents)",
        }
    }
}

fn main() {
    let mut dir = PathBuf::from(".");
    let mut records = 2000usize;
    let mut bytes = 300usize;
    let mut rounds = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--dir" => dir = PathBuf::from(value()),
            "--records" => records = value().parse().expect("--records N"),
            "--bytes" => bytes = value().parse().expect("--bytes B"),
            "--rounds" => rounds = value().parse().expect("--rounds R"),
            other => panic!("unknown argument {other}"),
        }
    }
    let tmp = tempfile::tempdir_in(&dir).unwrap();
    let mut record = vec![b'x'; bytes - 1];
    record.push(b'\n');

    println!(
        "`fdatasync` after writing one {bytes}-byte record, {records} records per row, in {}:\n",
        dir.canonicalize().unwrap_or(dir.clone()).display()
    );
    println!("| round | mode | p50 | p90 | p99 | mean | syncs/s |");
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=rounds {
        for mode in [Mode::Grow, Mode::Zeroed, Mode::Fallocate] {
            let path = tmp.path().join(format!("{mode:?}-{round}.jsonl"));
            let mut times = run(mode, &path, &record, records);
            times.sort();
            let total: Duration = times.iter().sum();
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
            println!(
                "| {round} | {} | {} µs | {} µs | {} µs | {} µs | {:.0} |",
                mode.word(),
                at(0.50).as_micros(),
                at(0.90).as_micros(),
                at(0.99).as_micros(),
                (total / times.len() as u32).as_micros(),
                times.len() as f64 / total.as_secs_f64()
            );
            std::fs::remove_file(&path).unwrap();
        }
    }

    println!("\nWriting a chunk of zeros past the end and syncing it (once per chunk):\n");
    println!("| chunk | round 1 | round 2 |");
    println!("|---|---|---|");
    for mib in [1u64, 4] {
        let mut cells = Vec::new();
        for round in 0..2 {
            let path = tmp.path().join(format!("chunk-{mib}-{round}"));
            let f = File::create(&path).unwrap();
            f.write_all_at(b"{}\n", 0).unwrap();
            f.sync_data().unwrap();
            let t = Instant::now();
            zero(&f, 3, mib << 20);
            f.sync_data().unwrap();
            cells.push(format!("{:.2} ms", t.elapsed().as_secs_f64() * 1e3));
            std::fs::remove_file(&path).unwrap();
        }
        println!("| {mib} MiB | {} | {} |", cells[0], cells[1]);
    }
}

/// Writes `n` records into a new file at `path` the way `mode` says, syncing after
/// each; the time of each sync.
fn run(mode: Mode, path: &Path, record: &[u8], n: usize) -> Vec<Duration> {
    let space = (record.len() * n) as u64;
    let mut times = Vec::with_capacity(n);
    match mode {
        Mode::Grow => {
            let mut f = File::options()
                .create_new(true)
                .append(true)
                .open(path)
                .unwrap();
            for _ in 0..n {
                f.write_all(record).unwrap();
                let t = Instant::now();
                f.sync_data().unwrap();
                times.push(t.elapsed());
            }
        }
        Mode::Zeroed | Mode::Fallocate => {
            let f = File::options()
                .create_new(true)
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            match mode {
                Mode::Zeroed => zero(&f, 0, space),
                _ => rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, space).unwrap(),
            }
            f.sync_all().unwrap();
            let mut at = 0u64;
            for _ in 0..n {
                f.write_all_at(record, at).unwrap();
                at += record.len() as u64;
                let t = Instant::now();
                f.sync_data().unwrap();
                times.push(t.elapsed());
            }
            assert_eq!(f.metadata().unwrap().len(), space, "the size never changed");
        }
    }
    times
}

/// Writes `len` zero bytes at `from`.
fn zero(f: &File, from: u64, len: u64) {
    let block = vec![0u8; 1 << 16];
    let mut at = from;
    while at < from + len {
        let n = (from + len - at).min(block.len() as u64) as usize;
        f.write_all_at(&block[..n], at).unwrap();
        at += n as u64;
    }
}
