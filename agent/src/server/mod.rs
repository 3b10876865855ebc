//! Listeners: the runtime directory and sockets ([`listen`]), the accept loop shared
//! by both sockets ([`serve`]), the native protocol ([`native`]) and the OpenSSH agent
//! protocol ([`ssh`]).
//!
//! tokio accepts; each connection then has its own thread, which reads a request,
//! applies the policy, borrows a device lane, signs and writes the response itself —
//! one wake-up per request, no hand-off between threads (docs/architecture.md, "Threads
//! and lanes"). At most `max_connections` connections per socket are
//! served at once; further clients wait in the listen backlog.

#[cfg(feature = "dbus")]
pub mod dbus;
pub mod listen;
pub mod native;
pub mod ssh;

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::keystore::KeyStore;
use crate::policy::Caller;

/// Whether the peer of `stream` closed its end (a read would see end of stream, or
/// the connection broke), without reading anything: what it sent stays unread. A
/// request waiting for approvals asks this (docs/protocol.md, "Approvals").
pub fn peer_gone(stream: &UnixStream) -> bool {
    use rustix::net::{recv, RecvFlags};
    let mut byte = [0u8; 1];
    match recv(stream, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, n)) => n == 0,
        Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
    }
}

/// Stack of a connection thread: the request path (serde, cryptoki, the module) is shallow.
const STACK: usize = 512 * 1024;

/// Serves one accepted connection on its own thread, until it closes. The last
/// argument is how many bytes were queued when the caller was identified (see
/// [`crate::wire::FrameReader::from_peer`]).
pub type Handler = fn(&UnixStream, &Arc<KeyStore>, &ServeOptions, &Caller, u64);

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Cap on concurrent connections.
    pub max_connections: usize,
    /// Idle timeout per connection, and the longest one frame may take to arrive.
    pub idle_timeout: Duration,
    /// The agent's own uid, always admitted.
    pub uid: u32,
    /// Other uids admitted (`[agent] allow_uids`; `agent.sock` only): each may use
    /// only the keys whose `[[key]] allow_uids` names it.
    pub allow_uids: Vec<u32>,
    /// Idle timeout of an SSH connection bound for forwarding (`ssh.sock`).
    pub forwarded_idle_timeout: Duration,
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

impl ServeOptions {
    /// Whether `uid` may connect.
    pub fn admits(&self, uid: u32) -> bool {
        uid == self.uid || self.allow_uids.contains(&uid)
    }
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
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
) {
    // Every message then carries its sender's credentials, read with it (accepted
    // sockets inherit the option, so none arrives without them).
    if let Err(e) = rustix::net::sockopt::set_socket_passcred(&listener, true) {
        warn!(error = %e, "cannot set SO_PASSCRED: requests cannot be tied to their sender; not serving this socket");
        return;
    }
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
            Ok(c) => Caller::from_peer(c.uid(), c.pid()),
            Err(e) => {
                warn!(error = %e, "cannot read peer credentials; connection refused");
                continue;
            }
        };
        // A connection made before the listener had SO_PASSCRED (under socket
        // activation: before the agent started) does not inherit it; set it here so
        // that every message reports its sender.
        if let Err(e) = rustix::net::sockopt::set_socket_passcred(&stream, true) {
            warn!(error = %e, "cannot set SO_PASSCRED on the connection; connection refused");
            continue;
        }
        // What was written before the process was identified (read just above) may
        // come from the program it ran before an exec.
        let queued = match rustix::io::ioctl_fionread(&stream) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot read the connection's queue; connection refused");
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
                    handler(&stream, &store, &opts, &caller, queued);
                    open.remove(id);
                }
                drop(permit);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a connection thread; connection dropped");
        }
    }
    let n = open.close_all();
    info!(open = n, "no longer accepting connections on this socket");
    let deadline = Instant::now() + Duration::from_secs(5);
    while open.count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if open.count() > 0 {
        warn!(open = open.count(), "connections still busy after 5 s");
    }
}
