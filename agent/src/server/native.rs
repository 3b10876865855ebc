//! The native protocol server on `agent.sock`.
//!
//! tokio accepts; each connection then has its own thread, which reads a frame,
//! decodes it, applies the policy, borrows a device lane, signs and writes the response
//! itself — one wake-up per request, no hand-off between threads (see
//! [`crate::worker`] for the measurements behind this). At most `max_connections`
//! connections are served at once; further clients wait in the listen backlog.
//!
//! Per connection: peer credentials checked first (same uid as the agent). A frame
//! over 1 MiB or a payload that is not JSON gets an error response and the connection
//! is closed; other bad requests get an error and the connection stays. A connection
//! idle for `idle_timeout`, or taking longer than that to deliver one frame, is closed.
//! Nothing one client does delays another.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::keystore::KeyStore;
use crate::policy::Caller;
use crate::proto::{
    self, decode_request, encode_error, encode_ok, ErrorCode, HelloOk, Op, WireError, AGENT_NAME,
    MAX_FRAME, PROTOCOL_VERSION,
};
use crate::wire::{FrameReader, ReadError};

/// Stack of a connection thread: the request path (serde, cryptoki, the module) is shallow.
const STACK: usize = 512 * 1024;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Cap on concurrent connections.
    pub max_connections: usize,
    /// Idle timeout per connection, and the longest one frame may take to arrive.
    pub idle_timeout: Duration,
    /// The uid allowed to connect (the agent's own).
    pub uid: u32,
    /// How long a connection polls for its next request before sleeping
    /// (see [`crate::wire`]); zero never polls.
    pub spin: Duration,
}

/// Open connections, so shutdown can wake their threads.
#[derive(Default)]
struct Open {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, UnixStream>>,
}

impl Open {
    fn add(&self, s: &UnixStream) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let clone = s.try_clone().ok()?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, clone);
        Some(id)
    }
    fn remove(&self, id: u64) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
    /// Ends every connection's reading side: a thread waiting for a frame sees the end
    /// of the stream; one in the middle of a request still writes its response.
    fn close_all(&self) -> usize {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for s in streams.values() {
            let _ = s.shutdown(Shutdown::Read);
        }
        streams.len()
    }
    fn count(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Accepts connections until `shutdown` turns true, then closes the open ones (a
/// request in progress finishes and its response is written first) and waits up to
/// 5 s for their threads.
pub async fn serve(
    listener: UnixListener,
    store: Arc<KeyStore>,
    opts: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let opts = Arc::new(opts);
    let open = Arc::new(Open::default());
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let caller = match stream.peer_cred() {
            Ok(c) => Caller {
                uid: c.uid(),
                pid: c.pid(),
            },
            Err(e) => {
                warn!(error = %e, "cannot read peer credentials; connection refused");
                continue;
            }
        };
        let stream = match stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot prepare the connection");
                continue;
            }
        };
        let (store, opts, open) = (store.clone(), opts.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("waxseal-conn".into())
            .stack_size(STACK)
            .spawn(move || {
                if let Some(id) = open.add(&stream) {
                    connection(&stream, &store, &opts, &caller);
                    open.remove(id);
                }
                drop(permit);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a connection thread; connection dropped");
        }
    }
    let n = open.close_all();
    info!(open = n, "no longer accepting connections");
    let deadline = Instant::now() + Duration::from_secs(5);
    while open.count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if open.count() > 0 {
        warn!(open = open.count(), "connections still busy after 5 s");
    }
}

fn send(mut w: &UnixStream, payload: &[u8]) -> io::Result<()> {
    w.write_all(&proto::encode_frame(payload))
}

fn connection(stream: &UnixStream, store: &KeyStore, opts: &ServeOptions, caller: &Caller) {
    let pid = caller.pid.unwrap_or(0);
    if caller.uid != opts.uid {
        warn!(uid = caller.uid, pid, "connection from another uid refused");
        let e = WireError::new(
            ErrorCode::PolicyDenied,
            format!(
                "uid {} may not use this agent (it serves uid {} only)",
                caller.uid, opts.uid
            ),
        );
        let _ = send(stream, &encode_error(None, &e));
        return;
    }
    if let Err(e) = stream.set_read_timeout(Some(opts.idle_timeout)) {
        warn!(error = %e, "cannot set the idle timeout; connection closed");
        return;
    }
    debug!(uid = caller.uid, pid, "client connected");
    let mut reader = FrameReader::new();
    loop {
        let frame = match reader.read(stream, opts.spin, Some(opts.idle_timeout)) {
            Ok(frame) => frame,
            Err(ReadError::Closed) => return,
            Err(ReadError::Idle) => {
                debug!(pid, "idle or too slow; closing");
                return;
            }
            Err(ReadError::TooLarge(len)) => {
                warn!(pid, len, "frame over the limit; closing the connection");
                let e = WireError::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame of {len} bytes announced; the limit is {MAX_FRAME} bytes"),
                );
                let _ = send(stream, &encode_error(None, &e));
                return;
            }
            Err(ReadError::Broken(e)) => {
                debug!(pid, error = %e, "connection broke");
                return;
            }
        };
        let (response, close) = match decode_request(frame) {
            Ok(req) => (handle(store, req.id, req.op, caller), false),
            Err(e) => {
                debug!(pid, error = %e.error, "bad request");
                (encode_error(e.id, &e.error), e.malformed)
            }
        };
        if send(stream, &response).is_err() || close {
            return;
        }
    }
}

/// Answers one request; returns the response payload.
fn handle(store: &KeyStore, id: u64, op: Op, caller: &Caller) -> Vec<u8> {
    fn reply<T: serde::Serialize>(id: u64, r: Result<T, WireError>) -> Vec<u8> {
        match r {
            Ok(ok) => encode_ok(id, &ok),
            Err(e) => encode_error(Some(id), &e),
        }
    }
    let pid = caller.pid.unwrap_or(0);
    match op {
        Op::Hello(_) => encode_ok(
            id,
            &HelloOk {
                version: PROTOCOL_VERSION,
                agent: AGENT_NAME.to_string(),
            },
        ),
        Op::Status => encode_ok(id, &store.status()),
        Op::ListKeys => encode_ok(id, &store.list_keys()),
        Op::PublicKey(k) => reply(id, store.public_key(&k.key)),
        Op::GenerateKey(g) => {
            let r = store.generate(&g.key, g.alg);
            if r.is_ok() {
                info!(key = %g.key, alg = %g.alg, uid = caller.uid, pid, "key generated");
            }
            reply(id, r)
        }
        Op::Sign(s) => {
            let r = store.sign(&s, caller);
            match &r {
                Ok(_) => debug!(key = %s.key, purpose = %s.purpose, pid, "signed"),
                Err(e) => {
                    info!(key = %s.key, purpose = %s.purpose, pid, code = %e.code, "sign refused or failed")
                }
            }
            reply(id, r)
        }
    }
}
