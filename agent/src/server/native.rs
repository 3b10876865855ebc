//! The native protocol server on `agent.sock`.
//!
//! One task per connection, at most `max_connections` at once (a semaphore: further
//! clients wait in the listen backlog). Each connection: peer credentials checked
//! (same uid as the agent), then frames read one at a time, each answered before the
//! next is read. A frame over 1 MiB or a payload that is not JSON gets an error
//! response and the connection is closed; nothing else is affected. A connection idle
//! for `idle_timeout`, or that takes longer than that to deliver a frame, is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::keystore::KeyStore;
use crate::policy::Caller;
use crate::proto::{
    self, decode_request, encode_error, encode_ok, ErrorCode, HelloOk, Op, WireError, AGENT_NAME,
    MAX_FRAME, PROTOCOL_VERSION,
};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Cap on concurrent connections.
    pub max_connections: usize,
    /// Idle timeout per connection.
    pub idle_timeout: Duration,
    /// The uid allowed to connect (the agent's own).
    pub uid: u32,
}

/// Accepts connections until `shutdown` turns true, then waits (up to 5 s) for the
/// connections in progress to finish their current request.
pub async fn serve(
    listener: UnixListener,
    store: Arc<KeyStore>,
    opts: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let opts = Arc::new(opts);
    let mut tasks = tokio::task::JoinSet::new();
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
        let store = store.clone();
        let opts = opts.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            connection(stream, store, &opts, shutdown).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    info!(open = tasks.len(), "no longer accepting connections");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        warn!("connections still busy after 5 s; closing them");
    }
}

/// Writes one response frame.
async fn send(w: &mut OwnedWriteHalf, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&proto::encode_frame(payload)).await
}

async fn connection(stream: UnixStream, store: Arc<KeyStore>, opts: &ServeOptions, mut shutdown: watch::Receiver<bool>) {
    let caller = match stream.peer_cred() {
        Ok(c) => Caller {
            uid: c.uid(),
            pid: c.pid(),
        },
        Err(e) => {
            warn!(error = %e, "cannot read peer credentials; connection refused");
            return;
        }
    };
    let (r, mut w) = stream.into_split();
    if caller.uid != opts.uid {
        warn!(uid = caller.uid, pid = caller.pid.unwrap_or(0), "connection from another uid refused");
        let e = WireError::new(
            ErrorCode::PolicyDenied,
            format!("uid {} may not use this agent (it serves uid {} only)", caller.uid, opts.uid),
        );
        let _ = send(&mut w, &encode_error(None, &e)).await;
        return;
    }
    debug!(uid = caller.uid, pid = caller.pid.unwrap_or(0), "client connected");
    let mut r = BufReader::with_capacity(8 * 1024, r);
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(opts.idle_timeout, read_frame(&mut r, &mut buf)) => r,
            _ = shutdown.changed() => return,
        };
        let frame = match read {
            Err(_) => {
                debug!(pid = caller.pid.unwrap_or(0), "idle timeout; closing");
                return;
            }
            Ok(Ok(Some(()))) => &buf,
            Ok(Ok(None)) => return, // clean close
            Ok(Err(FrameRead::TooLarge(len))) => {
                warn!(pid = caller.pid.unwrap_or(0), len, "frame over the limit; closing the connection");
                let e = WireError::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame of {len} bytes announced; the limit is {MAX_FRAME} bytes"),
                );
                let _ = send(&mut w, &encode_error(None, &e)).await;
                return;
            }
            Ok(Err(FrameRead::Io(e))) => {
                debug!(error = %e, "connection broke mid-frame");
                return;
            }
        };
        let (response, close) = match decode_request(frame) {
            Ok(req) => (handle(&store, req.id, req.op, &caller).await, false),
            Err(e) => {
                debug!(error = %e.error, "bad request");
                (encode_error(e.id, &e.error), e.malformed)
            }
        };
        if send(&mut w, &response).await.is_err() || close {
            return;
        }
    }
}

enum FrameRead {
    TooLarge(u64),
    Io(std::io::Error),
}

/// Reads one frame's payload into `buf`; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<()>, FrameRead> {
    let mut prefix = [0u8; proto::PREFIX_LEN];
    match r.read_exact(&mut prefix[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameRead::Io(e)),
    }
    r.read_exact(&mut prefix[1..]).await.map_err(FrameRead::Io)?;
    let len = match proto::frame::payload_len(&prefix) {
        Ok(Some(len)) => len,
        Ok(None) => return Err(FrameRead::Io(std::io::ErrorKind::UnexpectedEof.into())),
        Err(proto::FrameError::TooLarge(len)) => return Err(FrameRead::TooLarge(len)),
    };
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(FrameRead::Io)?;
    Ok(Some(()))
}

/// Answers one request; returns the response payload.
async fn handle(store: &KeyStore, id: u64, op: Op, caller: &Caller) -> Vec<u8> {
    fn reply<T: serde::Serialize>(id: u64, r: Result<T, WireError>) -> Vec<u8> {
        match r {
            Ok(ok) => encode_ok(id, &ok),
            Err(e) => encode_error(Some(id), &e),
        }
    }
    match op {
        Op::Hello(_) => encode_ok(
            id,
            &HelloOk {
                version: PROTOCOL_VERSION,
                agent: AGENT_NAME.to_string(),
            },
        ),
        Op::Status => encode_ok(id, &store.status().await),
        Op::ListKeys => encode_ok(id, &store.list_keys().await),
        Op::PublicKey(k) => reply(id, store.public_key(&k.key).await),
        Op::GenerateKey(g) => {
            let r = store.generate(&g.key, g.alg).await;
            if r.is_ok() {
                info!(key = %g.key, alg = %g.alg, uid = caller.uid, pid = caller.pid.unwrap_or(0), "key generated");
            }
            reply(id, r)
        }
        Op::Sign(s) => {
            let key = s.key.clone();
            let purpose = s.purpose;
            let r = store.sign(s, caller).await;
            match &r {
                Ok(_) => debug!(%key, %purpose, pid = caller.pid.unwrap_or(0), "signed"),
                Err(e) => info!(%key, %purpose, pid = caller.pid.unwrap_or(0), code = %e.code, "sign refused or failed"),
            }
            reply(id, r)
        }
    }
}
