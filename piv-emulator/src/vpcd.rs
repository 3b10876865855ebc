//! The socket adapter between a [`Card`] and pcscd's vpcd reader driver.
//!
//! vpcd listens on TCP; the card side connects. Every message is a 2-byte
//! big-endian length and a payload. A 1-byte payload is a control code (0 power
//! off, 1 power on, 2 reset, 4 "send ATR"); anything longer is an APDU that is
//! answered with response data + SW1 SW2. A closed connection is a removed card.
//!
//! [`Slot`] tracks whether the card is "inserted"; [`Slot::serve`] keeps the card
//! connected while it is, reconnecting when vpcd goes away, and
//! [`Slot::remove`]/[`Slot::insert`] (driven by [`crate::control`]) pull it out and
//! put it back.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::card::{Card, ATR};

const CTRL_POWER_OFF: u8 = 0;
const CTRL_POWER_ON: u8 = 1;
const CTRL_RESET: u8 = 2;
const CTRL_ATR: u8 = 4;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Presence of the card and the connection that currently carries it.
#[derive(Debug, Default)]
struct Presence {
    removed: bool,
    /// A second handle on the live connection, to shut it down on removal.
    stream: Option<TcpStream>,
}

/// The emulated card in the emulated reader.
#[derive(Debug)]
pub struct Slot {
    card: Mutex<Card>,
    presence: Mutex<Presence>,
    changed: Condvar,
    state_file: Option<PathBuf>,
    addr: String,
}

impl Slot {
    /// A slot that will connect `card` to vpcd at `addr` (`host:port`) and save the
    /// card's state to `state_file` after every change.
    pub fn new(card: Card, addr: String, state_file: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            card: Mutex::new(card),
            presence: Mutex::new(Presence::default()),
            changed: Condvar::new(),
            state_file,
            addr,
        })
    }

    /// Pulls the card out: closes the vpcd connection and stays disconnected.
    pub fn remove(&self) {
        let mut p = lock(&self.presence);
        p.removed = true;
        if let Some(s) = p.stream.take() {
            // Errors mean the connection is already gone, which is the goal.
            let _ = s.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }

    /// Puts the card back: reconnects to vpcd.
    pub fn insert(&self) {
        lock(&self.presence).removed = false;
        self.changed.notify_all();
    }

    /// How many touches the card has waited for ([`Card::touches`]); waits while the
    /// card answers an APDU.
    pub fn touches(&self) -> u64 {
        lock(&self.card).touches()
    }

    /// `inserted connected`, `inserted connecting` or `removed`.
    pub fn status(&self) -> &'static str {
        let p = lock(&self.presence);
        match (p.removed, p.stream.is_some()) {
            (true, _) => "removed",
            (false, true) => "inserted connected",
            (false, false) => "inserted connecting",
        }
    }

    /// Serves vpcd forever: connects while the card is inserted, answers
    /// messages, reconnects after vpcd closes the connection.
    pub fn serve(&self) -> ! {
        let mut logged_error = false;
        loop {
            {
                let mut p = lock(&self.presence);
                while p.removed {
                    p = self.changed.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
            }
            let stream = match TcpStream::connect(&self.addr) {
                Ok(s) => s,
                Err(e) => {
                    if !logged_error {
                        eprintln!("piv-emulator: connecting to vpcd at {}: {e}", self.addr);
                        logged_error = true;
                    }
                    std::thread::sleep(RECONNECT_DELAY);
                    continue;
                }
            };
            logged_error = false;
            match self.attach(&stream) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    eprintln!("piv-emulator: socket setup: {e}");
                    std::thread::sleep(RECONNECT_DELAY);
                    continue;
                }
            }
            eprintln!("piv-emulator: card inserted into vpcd at {}", self.addr);
            let result = self.converse(stream);
            lock(&self.presence).stream = None;
            lock(&self.card).reset_session();
            match result {
                Ok(()) => eprintln!("piv-emulator: vpcd closed the connection"),
                Err(e) => eprintln!("piv-emulator: vpcd connection ended: {e}"),
            }
            std::thread::sleep(RECONNECT_DELAY);
        }
    }

    /// Registers a fresh connection unless the card was removed meanwhile.
    fn attach(&self, stream: &TcpStream) -> io::Result<bool> {
        stream.set_nodelay(true)?;
        let mut p = lock(&self.presence);
        if p.removed {
            return Ok(false);
        }
        p.stream = Some(stream.try_clone()?);
        Ok(true)
    }

    fn converse(&self, mut stream: TcpStream) -> io::Result<()> {
        let mut len = [0u8; 2];
        let mut buf = Vec::new();
        loop {
            match read_acked(&mut stream, &mut len) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                other => other?,
            }
            buf.resize(usize::from(u16::from_be_bytes(len)), 0);
            read_acked(&mut stream, &mut buf)?;
            let reply = self.handle(&buf);
            if let Some(reply) = reply {
                let len = u16::try_from(reply.len())
                    .map_err(|_| io::Error::other("response longer than 65535 bytes"))?;
                let mut frame = Vec::with_capacity(reply.len() + 2);
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&reply);
                stream.write_all(&frame)?;
            }
        }
    }

    /// Answers one vpcd message; `None` for control codes that get no answer.
    fn handle(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let mut card = lock(&self.card);
        match msg {
            [CTRL_POWER_OFF] | [CTRL_POWER_ON] | [CTRL_RESET] => {
                card.reset_session();
                None
            }
            [CTRL_ATR] => Some(ATR.to_vec()),
            [other] => {
                eprintln!("piv-emulator: unknown vpcd control code {other}");
                None
            }
            apdu => {
                let out = card.transmit(apdu);
                if card.take_dirty() {
                    if let Some(path) = &self.state_file {
                        if let Err(e) = save_state(&card, path) {
                            eprintln!("piv-emulator: saving state to {}: {e}", path.display());
                        }
                    }
                }
                Some(out)
            }
        }
    }
}

/// Fills `buf`, re-arming TCP_QUICKACK after every read: vpcd sends the length
/// and the payload in separate segments, and a delayed ACK of the first would
/// hold the second back ~40 ms behind Nagle's algorithm.
fn read_acked(stream: &mut TcpStream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = stream.read(buf)?;
        // Best effort: without it the emulator is only slower.
        let _ = rustix::net::sockopt::set_tcp_quickack(&*stream, true);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

/// Writes the card's state atomically (temporary file + rename), mode 0600.
pub fn save_state(card: &Card, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let json = card.to_json().map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(json.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Locks a mutex, ignoring poisoning: the state stays usable after a panic elsewhere.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
