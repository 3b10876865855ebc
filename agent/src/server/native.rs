//! The native protocol on `agent.sock`: one connection, on its own thread
//! (see [`super::serve`]).
//!
//! Per connection: peer credentials checked first (same uid as the agent). A frame
//! over 1 MiB or a payload that is not JSON gets an error response and the connection
//! is closed; other bad requests get an error and the connection stays. A connection
//! idle for `idle_timeout`, or taking longer than that to deliver one frame, is closed.
//! Nothing one client does delays another.
//!
//! A client may send requests before reading the answers to earlier ones; they are
//! served one after another in order (docs/protocol.md, "Pipelining"). Requests that
//! arrive while the agent waits for a PIN reply are kept and served after the request
//! that asked for the PIN.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::ServeOptions;
use crate::keystore::{Gated, Interaction, KeyStore, Pending};
use crate::policy::{own_uid, Caller};
use crate::proto::{
    self, decode_request, encode_error, encode_notice, encode_ok, encode_prompt, Attest, AuditTail,
    AuditTailOk, ErrorCode, GenerateKey, HelloOk, ImportKey, Op, PinReply, Sign, StoreCertificate,
    Unlock, UnlockOk, WireError, AGENT_NAME, MAX_FRAME, PROTOCOL_VERSION,
};
use crate::wire::{Busy, FrameReader, ReadError, Sender};
use secrecy::SecretString;

fn send(mut w: &UnixStream, payload: &[u8]) -> io::Result<()> {
    w.write_all(&proto::encode_frame(payload))
}

/// Sends a last error and closes so that the client reads it: a Unix socket closed
/// with unread input resets the peer, whose read then fails instead of seeing the
/// error. So the write side is shut first and what the client sent meanwhile (its
/// `hello`, most often) is drained, within 64 KiB and 200 ms.
fn send_and_close(mut stream: &UnixStream, payload: &[u8]) {
    if send(stream, payload).is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    let mut buf = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match io::Read::read(&mut stream, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Serves one connection until it closes.
pub fn connection(
    stream: &UnixStream,
    store: &Arc<KeyStore>,
    opts: &ServeOptions,
    caller: &Caller,
    queued: u64,
) {
    let pid = caller.pid.unwrap_or(0);
    if !opts.admits(caller.uid) {
        warn!(uid = caller.uid, pid, "connection from another uid refused");
        let e = WireError::new(
            ErrorCode::PolicyDenied,
            format!(
                "uid {} may not use this agent (it serves uid {}{})",
                caller.uid,
                opts.uid,
                if opts.allow_uids.is_empty() {
                    " only".to_string()
                } else {
                    format!(" and [agent] allow_uids = {:?}", opts.allow_uids)
                }
            ),
        );
        send_and_close(stream, &encode_error(None, &e));
        return;
    }
    if let Err(e) = stream.set_read_timeout(Some(opts.idle_timeout)) {
        warn!(error = %e, "cannot set the idle timeout; connection closed");
        return;
    }
    debug!(uid = caller.uid, pid, "client connected");
    let mut reader = FrameReader::new().from_peer(
        Sender {
            pid,
            uid: caller.uid,
        },
        queued,
    );
    let mut caller = caller.clone();
    let mut deferred = Deferred::default();
    let mut held = Held::default();
    loop {
        // Answers held for their records' sync go out before the agent waits for more:
        // one sync covers every signature a pipelining client has in flight.
        if !held.items.is_empty()
            && ((!reader.has_frame() && deferred.frames.is_empty()) || held.items.len() >= MAX_HELD)
            && held.flush(store, stream).is_err()
        {
            return;
        }
        let kept = deferred.frames.pop_front();
        if let Some(k) = &kept {
            deferred.bytes -= k.payload.len();
        }
        let frame = match &kept {
            Some(k) => Ok(k.payload.as_slice()),
            None => reader.read(stream, opts.spin, Some(opts.idle_timeout)),
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // Whatever ends the connection, the held signatures are finished (their
                // outcomes recorded) and their answers sent first, as far as they can be.
                let _ = held.flush(store, stream);
                return end(stream, store, &caller, e);
            }
        };
        // At work until the answer is written: no other thread polls on this CPU.
        let _busy = Busy::enter();
        let decoded = decode_request(frame);
        caller.early = kept.as_ref().map_or_else(|| reader.early(), |k| k.early);
        let (response, close) = match decoded {
            Ok(req) => {
                let conn = Conn {
                    stream,
                    reader: &mut reader,
                    deferred: &mut deferred,
                    held: &mut held,
                };
                (handle(store, req.id, req.op, &caller, conn), false)
            }
            Err(e) => {
                debug!(pid, error = %e.error, "bad request");
                (Answer::Now(encode_error(e.id, &e.error)), e.malformed)
            }
        };
        if close {
            if held.flush(store, stream).is_err() {
                return;
            }
            if let Answer::Now(last) = response {
                send_and_close(stream, &last);
            }
            return;
        }
        match response {
            Answer::Now(bytes) if held.items.is_empty() => {
                if send(stream, &bytes).is_err() {
                    return;
                }
            }
            Answer::Now(bytes) => held.items.push(HeldAnswer::Ready(bytes)),
            Answer::Pending(id, p) => held.items.push(HeldAnswer::Pending(id, p)),
        }
    }
}

/// Ends a connection whose next frame could not be read, saying why where the client
/// should hear it.
fn end(stream: &UnixStream, store: &KeyStore, caller: &Caller, e: ReadError) {
    let pid = caller.pid.unwrap_or(0);
    match e {
        ReadError::Closed => {}
        ReadError::Idle => {
            debug!(pid, "idle or too slow; closing");
        }
        ReadError::TooLarge(len) => {
            warn!(pid, len, "frame over the limit; closing the connection");
            let e = WireError::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {len} bytes announced; the limit is {MAX_FRAME} bytes"),
            );
            let _ = send(stream, &encode_error(None, &e));
        }
        ReadError::Broken(e) => {
            debug!(pid, error = %e, "connection broke");
        }
        ReadError::Foreign(sender) => {
            let e = store.refuse_foreign(caller, sender, "agent.sock");
            send_and_close(stream, &encode_error(None, &e));
        }
    }
}

/// The answer to one request: now, or a signature waiting for its intent's sync.
enum Answer {
    Now(Vec<u8>),
    Pending(u64, Pending),
}

/// How many answers a connection holds at most before it syncs and sends them.
const MAX_HELD: usize = 64;

/// Answers kept back, in request order, until the signatures among them are durable.
#[derive(Default)]
struct Held {
    items: Vec<HeldAnswer>,
}

enum HeldAnswer {
    Ready(Vec<u8>),
    Pending(u64, Pending),
}

impl Held {
    /// Finishes the held signatures (the first waits for the one sync that covers them
    /// all) and sends every held answer, in order, in one write.
    fn flush(&mut self, store: &KeyStore, stream: &UnixStream) -> io::Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for item in self.items.drain(..) {
            let payload = match item {
                HeldAnswer::Ready(bytes) => bytes,
                HeldAnswer::Pending(id, p) => match store.finish(p) {
                    Ok(signed) => encode_ok(id, &signed.into_sign_ok()),
                    Err(e) => encode_error(Some(id), &e),
                },
            };
            out.extend_from_slice(&proto::encode_frame(&payload));
        }
        let mut w = stream;
        w.write_all(&out)
    }
}

/// How long a person has to type a PIN the agent asked for.
const PIN_PROMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How many bytes (and frames) of requests the agent keeps while it waits for a PIN
/// reply; past either it stops waiting (the PIN counts as not given) and serves what
/// it kept.
const MAX_DEFERRED_BYTES: usize = 4 * MAX_FRAME;
const MAX_DEFERRED_FRAMES: usize = 4096;

/// Requests a pipelining client sent while the agent waited for its PIN reply.
#[derive(Default)]
struct Deferred {
    frames: VecDeque<Kept>,
    /// The payload bytes in `frames`.
    bytes: usize,
}

/// One request frame read ahead of its turn.
struct Kept {
    payload: Vec<u8>,
    /// [`FrameReader::early`] when it was read.
    early: bool,
}

/// The connection a request came on: where its PIN reply is read from, and where
/// requests read ahead of their turn are kept.
struct Conn<'a> {
    stream: &'a UnixStream,
    reader: &'a mut FrameReader,
    deferred: &'a mut Deferred,
    /// Answers of earlier requests not sent yet.
    held: &'a mut Held,
}

/// Whether a payload that is not a valid `pin_reply` is another request (its `op` is
/// some other word), to be served later rather than taken as the answer. Nothing of
/// the frame is copied but the op's name.
fn is_other_request(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct OpOnly<'a> {
        #[serde(borrow)]
        op: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<OpOnly<'_>>(payload)
        .is_ok_and(|o| o.op.is_some_and(|op| op != "pin_reply"))
}

/// The requesting client, in the middle of its request: notices go out as frames
/// `{"id":…,"notice":…}`; a PIN is asked with `{"id":…,"prompt":…}` and comes back as
/// `{"id":…,"op":"pin_reply","pin":…}` (or `"cancel":true`). Other requests that come
/// before the reply are kept for later (docs/protocol.md, "Pipelining").
struct ConnUi<'a> {
    store: &'a KeyStore,
    stream: &'a UnixStream,
    reader: &'a mut FrameReader,
    deferred: &'a mut Deferred,
    /// Earlier requests' answers, sent before anything about this one.
    held: &'a mut Held,
    id: u64,
    /// Whether this client may be asked for a PIN: only the agent's own uid is (a PIN
    /// typed by another uid could cost the device a try).
    may_ask: bool,
}

impl Interaction for ConnUi<'_> {
    fn notice(&mut self, text: &str) {
        if self.held.flush(self.store, self.stream).is_ok() {
            let _ = send(self.stream, &encode_notice(self.id, text));
        }
    }

    fn approval(&mut self, text: &str, info: &proto::ApprovalInfo) {
        if self.held.flush(self.store, self.stream).is_ok() {
            let _ = send(
                self.stream,
                &proto::encode_approval_notice(self.id, text, info),
            );
        }
    }

    /// The peer closed its end (a read would see end of stream, or the connection
    /// broke); requests it sent meanwhile stay unread.
    fn gone(&mut self) -> bool {
        use rustix::net::{recv, RecvFlags};
        let mut byte = [0u8; 1];
        match recv(
            self.stream,
            &mut byte[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((_, n)) => n == 0,
            Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
        }
    }

    fn ask_pin(&mut self, question: &str) -> Option<SecretString> {
        if !self.may_ask {
            return None;
        }
        self.held.flush(self.store, self.stream).ok()?;
        send(self.stream, &encode_prompt(self.id, question)).ok()?;
        let asked = std::time::Instant::now();
        let frame = loop {
            let left = PIN_PROMPT_TIMEOUT.saturating_sub(asked.elapsed());
            let frame = self
                .reader
                .read(self.stream, Duration::ZERO, Some(left))
                .ok()?;
            if PinReply::decode(frame).is_err() && is_other_request(frame) {
                self.deferred.bytes += frame.len();
                self.deferred.frames.push_back(Kept {
                    payload: frame.to_vec(),
                    early: self.reader.early(),
                });
                if self.deferred.bytes > MAX_DEFERRED_BYTES
                    || self.deferred.frames.len() > MAX_DEFERRED_FRAMES
                {
                    warn!("a client sent too many requests instead of a PIN reply; no PIN");
                    return None;
                }
                continue;
            }
            break frame;
        };
        match PinReply::decode(frame) {
            Ok((id, PinReply::Pin(pin))) if id == self.id => Some(SecretString::from(pin.as_str())),
            Ok((id, PinReply::Cancel)) if id == self.id => None,
            Ok(_) => {
                warn!("the client answered a PIN prompt for another request; no PIN");
                None
            }
            Err(e) => {
                warn!(error = %e, "the client answered a PIN prompt with something else; no PIN");
                None
            }
        }
    }
}

/// The request in hand: who asked, on which connection.
struct Req<'a> {
    store: &'a KeyStore,
    id: u64,
    caller: &'a Caller,
    conn: Conn<'a>,
    /// The agent's own uid asked (another uid is admitted by `[agent] allow_uids`).
    owner: bool,
}

impl Req<'_> {
    fn reply<T: serde::Serialize>(&self, r: Result<T, WireError>) -> Vec<u8> {
        match r {
            Ok(ok) => encode_ok(self.id, &ok),
            Err(e) => encode_error(Some(self.id), &e),
        }
    }

    fn pid(&self) -> i32 {
        self.caller.pid.unwrap_or(0)
    }

    /// This client, for a PIN prompt or a notice in the middle of the request.
    fn ui(&mut self) -> ConnUi<'_> {
        ConnUi {
            store: self.store,
            stream: self.conn.stream,
            reader: self.conn.reader,
            deferred: self.conn.deferred,
            held: self.conn.held,
            id: self.id,
            may_ask: self.owner,
        }
    }
}

/// Answers one request; returns the response payload.
fn handle(store: &KeyStore, id: u64, op: Op, caller: &Caller, conn: Conn<'_>) -> Answer {
    let mut req = Req {
        store,
        id,
        caller,
        conn,
        owner: caller.uid == own_uid(),
    };
    if let Err(e) = admit(&req, &op) {
        return Answer::Now(encode_error(Some(id), &e));
    }
    // `pin = "prompt"`: the person at this client types the PIN before the device is used.
    let key = match &op {
        Op::PublicKey(k) => Some(k.key.as_str()),
        Op::GenerateKey(g) => Some(g.key.as_str()),
        Op::ImportKey(i) => Some(i.key.as_str()),
        Op::Attest(a) => Some(a.key.as_str()),
        Op::StoreCertificate(c) => Some(c.key.as_str()),
        _ => None,
    };
    if let Some(key) = key {
        if let Err(e) = store.login_interactively(key, &mut req.ui()) {
            if e.code == ErrorCode::PinRequired || e.code == ErrorCode::PinIncorrect {
                return Answer::Now(encode_error(Some(id), &e));
            }
        }
    }
    Answer::Now(match op {
        Op::Hello(_) => encode_ok(
            id,
            &HelloOk {
                version: PROTOCOL_VERSION,
                agent: AGENT_NAME.to_string(),
            },
        ),
        Op::Status => encode_ok(id, &store.status()),
        Op::ListKeys => list_keys(&req),
        Op::PublicKey(k) => req.reply(store.public_key(&k.key)),
        Op::GenerateKey(g) => generate_key(&req, &g),
        Op::ImportKey(mut i) => {
            let answer = import_key(&req, &i);
            // A YubiKey import's PEM private key: wiped once used (README.md, "Importing keys").
            if let Some(pem) = i.pem.as_mut() {
                zeroize::Zeroize::zeroize(pem);
            }
            answer
        }
        Op::Attest(a) => attest(&req, &a),
        Op::AuditTail(t) => audit_tail(&req, &t),
        Op::Lock => lock(&req),
        Op::Unlock(u) => unlock(&req, &u),
        Op::StoreCertificate(c) => store_certificate(&req, &c),
        Op::Sign(s) => return sign(&mut req, &s),
        Op::Approve(a) => req.reply(store.approve(&a, caller)),
        Op::Approvals => encode_ok(id, &store.approvals_list()),
        Op::ApprovalShow(r) => req.reply(store.approval_show(&r.approval)),
    })
}

/// A uid admitted by `[agent] allow_uids` lists, reads and signs with its own keys and
/// does nothing else.
fn admit(req: &Req<'_>, op: &Op) -> Result<(), WireError> {
    if req.owner {
        return Ok(());
    }
    let allowed = match op {
        // An approval's authority is its SSH signature, not the uid that hands it in.
        Op::Hello(_)
        | Op::ListKeys
        | Op::Sign(_)
        | Op::Approve(_)
        | Op::Approvals
        | Op::ApprovalShow(_) => true,
        Op::PublicKey(k) => req.store.policy().visible_to(&k.key, req.caller),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    info!(
        uid = req.caller.uid,
        pid = req.pid(),
        op = op.name(),
        "refused to another uid"
    );
    Err(WireError::new(
        ErrorCode::PolicyDenied,
        format!(
            "uid {} may list, read and sign with its own keys only (those whose [[key]] allow_uids names it); `{}` is for the agent's own uid",
            req.caller.uid,
            op.name()
        ),
    ))
}

fn list_keys(req: &Req<'_>) -> Vec<u8> {
    let mut keys = req.store.list_keys();
    if !req.owner {
        let policy = req.store.policy();
        keys.keys.retain(|k| policy.visible_to(&k.name, req.caller));
    }
    encode_ok(req.id, &keys)
}

fn generate_key(req: &Req<'_>, g: &GenerateKey) -> Vec<u8> {
    let r = req.store.generate(g);
    if r.is_ok() {
        info!(key = %g.key, alg = %g.alg, uid = req.caller.uid, pid = req.pid(), "key generated");
    }
    req.reply(r)
}

fn import_key(req: &Req<'_>, i: &ImportKey) -> Vec<u8> {
    let r = req.store.import(i, req.caller);
    match &r {
        Ok(k) => {
            info!(key = %i.key, alg = %k.key.alg, uid = req.caller.uid, pid = req.pid(), "key imported")
        }
        Err(e) => info!(key = %i.key, pid = req.pid(), code = %e.code, "import refused or failed"),
    }
    req.reply(r)
}

fn attest(req: &Req<'_>, a: &Attest) -> Vec<u8> {
    let r = req
        .store
        .attest(&a.key, a.nonce.as_ref().map(|n| n.0.as_slice()));
    if let Err(e) = &r {
        info!(key = %a.key, pid = req.pid(), code = %e.code, "attest refused or failed");
    }
    req.reply(r)
}

fn audit_tail(req: &Req<'_>, t: &AuditTail) -> Vec<u8> {
    let n = t.n.unwrap_or(20).min(1000) as usize;
    // Within `audit::TAIL_BUDGET` bytes, well under the frame limit.
    let tail = req.store.audit_tail(n);
    let records = tail
        .records
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::String(l.clone())))
        .collect();
    let omitted = (tail.omitted > 0).then_some(tail.omitted as u64);
    encode_ok(req.id, &AuditTailOk { records, omitted })
}

fn lock(req: &Req<'_>) -> Vec<u8> {
    info!(uid = req.caller.uid, pid = req.pid(), "lock asked");
    let newly = req.store.lock_user(req.caller);
    encode_ok(
        req.id,
        &UnlockOk {
            device: None,
            locked: true,
            message: if newly {
                "agent locked: cached PINs dropped; signing refused until `waxseal unlock`"
            } else {
                "the agent was locked already"
            }
            .into(),
        },
    )
}

fn unlock(req: &Req<'_>, u: &Unlock) -> Vec<u8> {
    if let Some(device) = &u.device {
        info!(device = %device, uid = req.caller.uid, pid = req.pid(), "device unlock asked");
        return req.reply(req.store.unlock_device(device, req.caller));
    }
    info!(uid = req.caller.uid, pid = req.pid(), "unlock asked");
    let was = req.store.unlock_user(req.caller);
    let locked = req.store.is_locked();
    let message = match (was, locked) {
        (_, true) => "still locked by ssh-add -x; unlock it with ssh-add -X",
        (true, false) => "agent unlocked",
        (false, false) => "the agent was not locked",
    };
    encode_ok(
        req.id,
        &UnlockOk {
            device: None,
            locked,
            message: message.into(),
        },
    )
}

fn store_certificate(req: &Req<'_>, c: &StoreCertificate) -> Vec<u8> {
    let r = req.store.store_certificate(c);
    if let Err(e) = &r {
        info!(key = %c.key, pid = req.pid(), code = %e.code, "store_certificate refused or failed");
    }
    req.reply(r)
}

/// Signs; the answer is held until the intent's record is durable (see [`Held`]).
fn sign(req: &mut Req<'_>, s: &Sign) -> Answer {
    let (store, caller, pid, id) = (req.store, req.caller, req.pid(), req.id);
    let r = store.sign_gated(s, caller, &mut req.ui(), true);
    match &r {
        Ok(_) => debug!(key = %s.key, purpose = %s.purpose, pid, "signed"),
        Err(e) => {
            info!(key = %s.key, purpose = %s.purpose, pid, code = %e.code, "sign refused or failed")
        }
    }
    match r {
        Ok(Gated::Pending(p)) => Answer::Pending(id, p),
        Ok(Gated::Done(signed)) => Answer::Now(encode_ok(id, &signed.into_sign_ok())),
        Err(e) => Answer::Now(encode_error(Some(id), &e)),
    }
}
