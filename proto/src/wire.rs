//! Frames over a Unix stream: the socket adapter around [`crate::proto`]'s framing,
//! shared by the server and the client.
//!
//! Reading can *poll briefly before blocking*: for up to `spin` it asks the socket for
//! data without sleeping (`recv(MSG_DONTWAIT)`, yielding the CPU between tries), and
//! only then blocks. A blocking round trip over a Unix socket costs a wake-up on each
//! side, many times what it costs when the reader is already awake, so a signature
//! that takes the device about as long as a wake-up is best waited for awake
//! (docs/benchmarks.md, "Issue 10: what profiling found", has the measurements; the
//! design is in docs/architecture.md, "Threads and lanes"). The yield hands the CPU to
//! any thread that has work, so polling only uses time nobody else wants.
//!
//! On the agent's sockets every read is a `recvmsg` that carries the sender's
//! credentials (`SO_PASSCRED`, `SCM_CREDENTIALS`): bytes from any process other than
//! the one that connected end the connection ([`ReadError::Foreign`]), and a frame
//! whose first byte was already queued when the agent identified the connecting
//! process is marked early ([`FrameReader::early`]; README → Security: who may sign).
//!
//! At most one thread per CPU polls at a time in a process (readers here, and requests
//! waiting for the audit log's sync); the others block at once.
//! With many connections busy (64 clients on 2 cores), a crowd of polling threads
//! would each take a turn on the CPU for nothing between real work.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::proto::{self, PREFIX_LEN};

/// Why no frame was read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the stream between frames.
    Closed,
    /// Nothing arrived within the socket's read timeout, or a frame took longer than
    /// its deadline.
    Idle,
    /// The prefix announced a frame over the limit.
    TooLarge(u64),
    /// The stream broke (or closed mid-frame).
    Broken(io::Error),
    /// Bytes arrived from a process other than the one that connected (a child that
    /// inherited the socket, or one it was passed to); `None` when the kernel attached
    /// no credentials.
    Foreign(Option<Sender>),
}

/// Who sent some bytes, as the kernel attached it to them (`SCM_CREDENTIALS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The sending process (its thread group id).
    pub pid: i32,
    /// Its uid.
    pub uid: u32,
}

/// The process every frame on a connection must come from.
#[derive(Debug, Clone, Copy)]
struct Peer {
    sender: Sender,
    /// Bytes that were queued when the process was identified: a frame starting
    /// before this offset may have been written before an `exec`.
    early_until: u64,
}

/// The CPUs this process may use, read once: `available_parallelism` opens and reads
/// cgroup files on every call, which showed in profiles when called per request.
pub fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Threads polling now, in this process.
static POLLING: AtomicUsize = AtomicUsize::new(0);

/// Threads working on a request now, in this process (see [`Busy`]).
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// A thread at work on a request (decoding, the gate, the device, the answer), from
/// [`Busy::enter`] until dropped. Polling only uses CPUs that no such thread needs: a
/// poller on a CPU a request could use slows that request by as much as the poll saves
/// (docs/architecture.md, "Threads and lanes").
#[derive(Debug)]
pub struct Busy(());

impl Busy {
    /// Counts this thread as working until the value is dropped.
    pub fn enter() -> Busy {
        BUSY.fetch_add(1, Ordering::AcqRel);
        Busy(())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A turn at polling (a socket here, the audit log's sync in `audit`), given back when
/// dropped; `None` when no CPU is left idle: every CPU already has a polling thread or
/// a thread at work on a request ([`Busy`]).
#[derive(Debug)]
pub struct PollTurn;

impl PollTurn {
    /// A turn for a thread that is not itself [`Busy`] (a connection waiting for its
    /// next request).
    pub fn take() -> Option<PollTurn> {
        Self::take_beside(0)
    }

    /// A turn for a thread that holds a [`Busy`] itself (a request waiting for the
    /// audit log's sync): it does not count against itself.
    pub fn take_busy() -> Option<PollTurn> {
        Self::take_beside(1)
    }

    fn take_beside(own: usize) -> Option<PollTurn> {
        let polling = POLLING.fetch_add(1, Ordering::AcqRel);
        let busy = BUSY.load(Ordering::Acquire).saturating_sub(own);
        if polling + busy < cpus() {
            Some(PollTurn)
        } else {
            POLLING.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

impl Drop for PollTurn {
    fn drop(&mut self) {
        POLLING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why one `recv` gave no bytes.
enum RecvError {
    Io(rustix::io::Errno),
    Foreign(Option<Sender>),
}

/// A buffered frame reader for one stream.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: usize,
    /// Set on the agent's side: every byte must come from this process.
    peer: Option<Peer>,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// The last frame returned started before `peer.early_until`.
    early: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::with_limit(proto::MAX_FRAME)
    }
}

impl FrameReader {
    /// A reader for the native protocol (1 MiB frames).
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader refusing frames over `limit` bytes (the SSH agent protocol: 256 KiB).
    pub fn with_limit(limit: usize) -> Self {
        FrameReader {
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            limit,
            peer: None,
            offset: 0,
            early: false,
        }
    }

    /// Accepts bytes only from `sender` (the process that connected), reading the
    /// kernel's credentials with each `recvmsg` (the socket must have `SO_PASSCRED`,
    /// which accepted sockets inherit from their listener). The first `early_until`
    /// bytes were queued when that process was identified: frames starting among
    /// them are [`FrameReader::early`].
    pub fn from_peer(mut self, sender: Sender, early_until: u64) -> Self {
        self.peer = Some(Peer {
            sender,
            early_until,
        });
        self
    }

    /// Whether the frame last read started among the bytes queued before the
    /// connecting process was identified (see [`FrameReader::from_peer`]).
    pub fn early(&self) -> bool {
        self.early
    }

    /// Receives into `space`, checking the sender when a peer is set.
    /// `at` is the stream offset of the first byte this reads.
    fn recv(
        peer: Option<Peer>,
        at: u64,
        stream: &UnixStream,
        space: &mut [u8],
        flags: RecvFlags,
    ) -> Result<usize, RecvError> {
        let Some(peer) = peer else {
            return rustix::net::recv(stream, space, flags)
                .map(|(n, _)| n)
                .map_err(RecvError::Io);
        };
        let mut cmsg = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut cmsg);
        let got = rustix::net::recvmsg(stream, &mut [IoSliceMut::new(space)], &mut control, flags)
            .map_err(RecvError::Io)?;
        let mut from = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmCredentials(c) = message {
                from = Some(Sender {
                    pid: c.pid.as_raw_nonzero().get(),
                    uid: c.uid.as_raw(),
                });
            }
        }
        if got.bytes == 0 {
            return Ok(0);
        }
        match from {
            Some(s) if s == peer.sender => Ok(got.bytes),
            // Without credentials the bytes cannot be attributed: tolerated only among
            // those queued before the process was identified, which are early anyway.
            None if at + got.bytes as u64 <= peer.early_until => Ok(got.bytes),
            other => Err(RecvError::Foreign(other)),
        }
    }

    /// Where the next frame ends in the buffered bytes: `Ok(Ok(total))` when all its
    /// `total` bytes (prefix included) are here, `Ok(Err(need))` when more are needed,
    /// `need` being the frame's total length once the prefix is known and the prefix's
    /// length before that; an error for a prefix over the limit.
    /// Whether the next [`FrameReader::read`] can answer without waiting: a whole frame
    /// (or a prefix over the limit) is already buffered, as when a client pipelines.
    pub fn has_frame(&self) -> bool {
        !matches!(self.split(), Ok(Err(_)))
    }

    fn split(&self) -> Result<Result<usize, usize>, ReadError> {
        let have = &self.buf[self.start..self.end];
        let Some(prefix) = have.get(..PREFIX_LEN) else {
            return Ok(Err(PREFIX_LEN));
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.limit {
            return Err(ReadError::TooLarge(len as u64));
        }
        let total = PREFIX_LEN + len;
        Ok(if have.len() >= total {
            Ok(total)
        } else {
            Err(total)
        })
    }

    /// Reads the next frame's payload.
    ///
    /// `spin`: how long to poll before blocking. `deadline`: once a frame's first byte
    /// has arrived, the whole frame must arrive within this (slow senders are cut off).
    /// Blocking reads end after the stream's read timeout, if it has one.
    pub fn read(
        &mut self,
        stream: &UnixStream,
        spin: Duration,
        deadline: Option<Duration>,
    ) -> Result<&[u8], ReadError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let began = Instant::now();
        let mut turn = if spin.is_zero() {
            None
        } else {
            PollTurn::take()
        };
        let spin = if turn.is_some() { spin } else { Duration::ZERO };
        let mut frame_started: Option<Instant> = (self.end > self.start).then_some(began);
        loop {
            let need = match self.split()? {
                Ok(used) => {
                    let from = self.start + PREFIX_LEN;
                    self.early = self.peer.is_some_and(|p| self.offset < p.early_until);
                    self.start += used;
                    self.offset += used as u64;
                    return Ok(&self.buf[from..self.start]);
                }
                Err(need) => need,
            };
            // Room for the whole frame after `start`.
            if self.start + need > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if need > self.buf.len() {
                    self.buf.resize(need, 0);
                }
            }
            if let (Some(t), Some(limit)) = (frame_started, deadline) {
                if t.elapsed() > limit {
                    return Err(ReadError::Idle);
                }
            }
            let polling = began.elapsed() < spin;
            if !polling {
                // Done polling: let another reader have the turn while this one sleeps.
                drop(turn.take());
            }
            let flags = if polling {
                RecvFlags::DONTWAIT
            } else {
                RecvFlags::empty()
            };
            let at = self.offset + (self.end - self.start) as u64;
            let got = Self::recv(self.peer, at, stream, &mut self.buf[self.end..], flags);
            let got = match got {
                Ok(n) => Ok(n),
                Err(RecvError::Io(rustix::io::Errno::AGAIN)) if polling => {
                    std::thread::yield_now();
                    continue;
                }
                // A blocking read ends with EAGAIN when the socket's timeout passes.
                Err(RecvError::Io(rustix::io::Errno::AGAIN)) => return Err(ReadError::Idle),
                Err(RecvError::Io(rustix::io::Errno::INTR)) => continue,
                Err(RecvError::Io(e)) => Err(io::Error::from(e)),
                Err(RecvError::Foreign(s)) => return Err(ReadError::Foreign(s)),
            };
            match got {
                Ok(0) if self.end == self.start => return Err(ReadError::Closed),
                Ok(0) => return Err(ReadError::Broken(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    self.end += n;
                    frame_started.get_or_insert_with(Instant::now);
                }
                Err(e) => return Err(ReadError::Broken(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn no_poll_turn_while_every_cpu_has_a_request_at_work() {
        let working: Vec<Busy> = (0..cpus()).map(|_| Busy::enter()).collect();
        assert!(
            PollTurn::take().is_none(),
            "a poller would take a working CPU"
        );
        drop(working);
    }

    #[test]
    fn frames_split_and_joined_arbitrarily() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::new();
        let mut bytes = proto::encode_frame(b"one");
        bytes.extend(proto::encode_frame(&vec![b'x'; 40_000]));
        bytes.extend(proto::encode_frame(b"three"));
        let writer = std::thread::spawn(move || {
            for chunk in bytes.chunks(7) {
                a.write_all(chunk).unwrap();
            }
        });
        assert_eq!(r.read(&b, Duration::from_micros(50), None).unwrap(), b"one");
        assert_eq!(r.read(&b, Duration::ZERO, None).unwrap().len(), 40_000);
        assert_eq!(r.read(&b, Duration::ZERO, None).unwrap(), b"three");
        writer.join().unwrap();
        assert!(matches!(
            r.read(&b, Duration::ZERO, None),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn bytes_from_another_process_are_foreign_and_queued_frames_early() {
        let (mut a, b) = UnixStream::pair().unwrap();
        rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
        let me = Sender {
            pid: std::process::id() as i32,
            uid: rustix::process::geteuid().as_raw(),
        };
        let first = proto::encode_frame(b"queued before");
        a.write_all(&first).unwrap();
        let mut r = FrameReader::new().from_peer(me, first.len() as u64);
        a.write_all(&proto::encode_frame(b"after")).unwrap();
        assert_eq!(r.read(&b, Duration::ZERO, None).unwrap(), b"queued before");
        assert!(r.early());
        assert_eq!(
            r.read(&b, Duration::from_micros(50), None).unwrap(),
            b"after"
        );
        assert!(!r.early());

        // A child process writing on the inherited socket is another sender.
        let out = std::os::fd::OwnedFd::from(a.try_clone().unwrap());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(r"printf '\000\000\000\002{}'")
            .stdout(std::process::Stdio::from(out))
            .status()
            .unwrap();
        assert!(status.success());
        match r.read(&b, Duration::ZERO, None) {
            Err(ReadError::Foreign(Some(s))) => {
                assert_ne!(s.pid, me.pid);
                assert_eq!(s.uid, me.uid);
            }
            other => panic!("expected a foreign sender, got {other:?}"),
        }
    }

    #[test]
    fn limit_is_per_reader() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&proto::encode_frame(&[b'x'; 300])).unwrap();
        let mut r = FrameReader::with_limit(256);
        assert!(matches!(
            r.read(&b, Duration::ZERO, None),
            Err(ReadError::TooLarge(300))
        ));
    }

    #[test]
    fn oversized_and_truncated() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
        let mut r = FrameReader::new();
        assert!(matches!(
            r.read(&b, Duration::ZERO, None),
            Err(ReadError::TooLarge(0x8000_0000))
        ));
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[0, 0, 0, 9, b'{']).unwrap();
        drop(a);
        let mut r = FrameReader::new();
        assert!(matches!(
            r.read(&b, Duration::ZERO, None),
            Err(ReadError::Broken(_))
        ));
    }

    #[test]
    fn slow_frame_hits_the_deadline_and_idle_hits_the_timeout() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut r = FrameReader::new();
        assert!(matches!(
            r.read(&b, Duration::ZERO, None),
            Err(ReadError::Idle)
        ));
        a.write_all(&[0, 0, 0, 9]).unwrap();
        let t = Instant::now();
        let e = r.read(&b, Duration::ZERO, Some(Duration::from_millis(120)));
        assert!(matches!(e, Err(ReadError::Idle)), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
