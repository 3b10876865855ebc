//! The control socket: a Unix stream socket taking one command per line.
//!
//! Commands: `remove` (pull the card out of the reader), `insert` (put it back),
//! `status` (`inserted connected`, `inserted connecting` or `removed`), `touches` (how
//! many touches the card has waited for, in decimal). Every command is answered with
//! one line: `ok`, the status, the count, or `error: …`.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use crate::vpcd::Slot;

/// Binds `path` (replacing a stale socket) and serves it on a background thread.
pub fn spawn(path: &Path, slot: Arc<Slot>) -> io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        if let Err(e) = serve(conn, &slot) {
                            eprintln!("piv-emulator: control connection: {e}");
                        }
                    }
                    Err(e) => eprintln!("piv-emulator: control accept: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve(conn: UnixStream, slot: &Slot) -> io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        let reply = match line.trim() {
            "remove" => {
                slot.remove();
                "ok".to_owned()
            }
            "insert" => {
                slot.insert();
                "ok".to_owned()
            }
            "status" => slot.status().to_owned(),
            "touches" => slot.touches().to_string(),
            "" => continue,
            other => format!("error: unknown command {other:?}"),
        };
        writeln!(out, "{reply}")?;
    }
    Ok(())
}

/// Sends one command to a control socket and returns the reply line.
pub fn send(path: &Path, command: &str) -> io::Result<String> {
    let conn = UnixStream::connect(path)?;
    let mut w = conn.try_clone()?;
    writeln!(w, "{command}")?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply)?;
    Ok(reply.trim_end().to_owned())
}
