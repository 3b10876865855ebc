//! The agent's D-Bus face: `dev.waxseal.Agent1` on the session bus, confirmations
//! through the desktop notification service, and logind's sleep and screen-lock
//! signals. A thin adapter over [`KeyStore`], like the sockets.
//!
//! # `dev.waxseal.Agent1`
//!
//! The agent owns the name `dev.waxseal.Agent` on the session bus
//! (`DBUS_SESSION_BUS_ADDRESS`) and serves this interface at `/dev/waxseal/Agent`:
//!
//! | member | D-Bus signature | meaning |
//! |---|---|---|
//! | property `Devices` | `a(ssbuss)` | each configured device: name, kind (`pkcs11`, `tpm`, `yubikey`), present, number of keys, detail (token label, model…; may be empty), error (why it is absent or failing; empty when none) |
//! | property `Keys` | `a(sssas)` | each key of a present device: name (`DEVICE/LABEL`), device, algorithm (`p256`, `rsa2048`…), purposes the policy grants (`digest`, `blob`, `x509-tbs`, `ssh`) |
//! | property `Locked` | `b` | whether the agent refuses to sign (locked by `Lock`, `waxseal lock` or `ssh-add -x`) |
//! | method `Lock() → b` | | drops cached PINs and refuses signing until `Unlock`; true if this call locked it, false if it was locked already |
//! | method `Unlock() → b` | | undoes `Lock` (or `waxseal lock`); true if this call unlocked it. An agent locked with a passphrase (`ssh-add -x`) stays locked until `ssh-add -X` |
//! | signal `DeviceAdded(s name)` | | a configured device became present |
//! | signal `DeviceRemoved(s name)` | | a configured device went absent |
//! | signal `SignatureIssued(s key, s purpose, s caller)` | | a signature was returned to a client; `caller` is e.g. `uid 1000 pid 4242 (/usr/bin/cosign)` |
//!
//! `Locked` sends `PropertiesChanged` with its value whenever it changes, whoever
//! locked the agent. `Devices` and `Keys` are read fresh from the devices on each
//! get; when the poll below sees a device come or go, they are invalidated
//! (`PropertiesChanged` naming them without a value). Devices are polled every
//! [`POLL`] with `KeyStore::presence` (off the runtime thread), which finds a device
//! without logging in (PKCS#11: `C_GetTokenInfo`; YubiKey: the PIN's metadata), so the
//! poll never takes back PINs that a lock dropped and never asks a person; the
//! `present` flags are diffed into `DeviceAdded` and `DeviceRemoved`.
//!
//! The session bus lets only the user's own processes in, as `agent.sock` does; any
//! of them may call `Lock` and `Unlock`. The first agent to own the name keeps it: a
//! second agent on the same bus runs with its D-Bus features off and says so.
//!
//! # Confirmations
//!
//! Unless `[agent] confirm_program` is set, keys with `confirm = true` are confirmed
//! through `org.freedesktop.Notifications`: `Notify` with the actions `allow` (Allow)
//! and `deny` (Deny), the summary naming the key and the body naming key, purpose,
//! caller and what is signed, with `confirm_timeout_secs` as the expiry. Only
//! `ActionInvoked(id, "allow")` allows; `deny`, `NotificationClosed`, or no answer
//! in time denies (the notification is then closed with `CloseNotification`). A
//! notification server without actions, or none at all, cannot be asked: denied,
//! and said so.
//!
//! # logind
//!
//! `PrepareForSleep(true)` of `org.freedesktop.login1.Manager` and `Lock` of the
//! agent's own session (`$XDG_SESSION_ID`, else `GetSessionByPID`) on the system bus
//! drop cached PINs ([`KeyStore::forget_pins`]). Without a system bus, logind or a
//! session, this is said once and the rest goes on.
//!
//! # Threads
//!
//! All of it runs on one thread of its own with a current-thread tokio runtime, so
//! nothing here can hold up the accept loops. Device calls (`status`, `list_keys`,
//! `lock_user`, `forget_pins`) run on the runtime's blocking pool. A confirmation
//! blocks only the connection thread that asked ([`Confirmer::confirm`] is called
//! from connection threads): it hands the question to the runtime and waits for the
//! answer on a channel. Without a session bus [`start`] says once why and returns
//! `None`; the agent runs as before.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use zbus::message::Header;
use zbus::names::InterfaceName;
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{interface, proxy, Connection, OwnedObjectPath, Variant};

use crate::config::Config;
use crate::confirm::ConfirmError;
use crate::keystore::{ConfirmRequest, Confirmer, Event, KeyStore};
use crate::policy::Caller;

/// Well-known name the agent owns on the session bus.
pub const BUS_NAME: &str = "dev.waxseal.Agent";
/// Object path of [`INTERFACE`].
pub const OBJECT_PATH: &str = "/dev/waxseal/Agent";
/// The interface.
pub const INTERFACE: &str = "dev.waxseal.Agent1";
/// How often devices are polled for `DeviceAdded` / `DeviceRemoved`.
pub const POLL: Duration = Duration::from_secs(2);
/// How long connecting to a bus may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a confirmation waits beyond its own timeout for the D-Bus thread.
const CONFIRM_SLACK: Duration = Duration::from_secs(5);

/// D-Bus settings, from the config.
#[derive(Debug, Clone)]
pub struct DbusOptions {
    /// Install the notification confirmer (false when `confirm_program` is set).
    pub notifications: bool,
    /// How long a confirmation waits for an answer.
    pub confirm_timeout: Duration,
}

impl DbusOptions {
    /// The settings `config` asks for.
    pub fn from_config(config: &Config) -> DbusOptions {
        DbusOptions {
            notifications: config.agent.confirm_program.is_none(),
            confirm_timeout: Duration::from_secs(config.agent.confirm_timeout_secs),
        }
    }
}

/// The running D-Bus face; dropping it stops it.
#[derive(Debug)]
pub struct DbusGuard {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for DbusGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects to the session bus, owns [`BUS_NAME`], serves [`INTERFACE`], installs
/// the notification confirmer if asked, and listens to logind — on a thread of its
/// own. Returns once the name is owned, or `None` (said once in the log) when there
/// is no usable session bus.
pub fn start(store: Arc<KeyStore>, opts: DbusOptions) -> Option<DbusGuard> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("waxseal-dbus".into())
        .spawn(move || thread_main(store, opts, ready_tx, stop_rx));
    let thread = match spawned {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "D-Bus features off: cannot start the D-Bus thread");
            return None;
        }
    };
    let why = match ready_rx.recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(2)) {
        Ok(Ok(())) => {
            return Some(DbusGuard {
                stop: Some(stop_tx),
                thread: Some(thread),
            })
        }
        Ok(Err(why)) => why,
        Err(_) => "the D-Bus thread did not answer".to_string(),
    };
    let _ = stop_tx.send(());
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        warn!("D-Bus features off: {why} (no {INTERFACE}, no notification confirmations, no logind); the agent runs without them");
    } else {
        info!("D-Bus features off: {why} (no {INTERFACE}, no notification confirmations, no logind); the agent runs without them");
    }
    None
}

fn thread_main(
    store: Arc<KeyStore>,
    opts: DbusOptions,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    stop: oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the D-Bus runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let conn = match connect_session(&store).await {
            Ok(c) => c,
            Err(why) => {
                let _ = ready.send(Err(why));
                return;
            }
        };
        let iface = match conn
            .object_server()
            .interface::<_, Agent1>(OBJECT_PATH)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                let _ = ready.send(Err(format!("serving {INTERFACE}: {e}")));
                return;
            }
        };
        if opts.notifications {
            store.set_confirmer(Arc::new(NotificationConfirmer {
                runtime: Handle::current(),
                conn: conn.clone(),
                timeout: opts.confirm_timeout,
            }));
            info!("confirmations are asked through desktop notifications (org.freedesktop.Notifications)");
        }
        info!(
            name = BUS_NAME,
            path = OBJECT_PATH,
            "{INTERFACE} served on the session bus"
        );
        let _ = ready.send(Ok(()));
        tokio::spawn(forward_events(store.clone(), iface.clone()));
        tokio::spawn(poll_devices(store.clone(), iface));
        tokio::spawn(logind(store));
        tokio::select! {
            _ = stop => {}
            () = conn.closed() => warn!("the session bus connection closed; D-Bus features are off from now on"),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

async fn connect_session(store: &Arc<KeyStore>) -> Result<Connection, String> {
    // An agent that owns the name keeps it: a second agent of the same user (another
    // config, a demo) does not take the desktop's Agent1 away from it.
    let build = zbus::connection::Builder::session()
        .name(BUS_NAME)
        .allow_name_replacements(false)
        .replace_existing_names(false)
        .serve_at(
            OBJECT_PATH,
            Agent1 {
                store: store.clone(),
            },
        )
        .build();
    match tokio::time::timeout(CONNECT_TIMEOUT, build).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(zbus::Error::NameTaken)) => Err(format!(
            "another program (another waxseal-agent?) owns {BUS_NAME} on the session bus"
        )),
        Ok(Err(e)) if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() => Err(format!(
            "DBUS_SESSION_BUS_ADDRESS is not set and the default session bus is not there: {e}"
        )),
        Ok(Err(e)) => Err(format!("no session bus: {e}")),
        Err(_) => Err(format!(
            "no session bus: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Runs `f` on the blocking pool (device calls block).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> zbus::fdo::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| zbus::fdo::Error::Failed(format!("internal error: {e}")))
}

/// A `Devices` entry: name, kind, present, keys, detail, error.
type DeviceEntry = (String, String, bool, u32, String, String);
/// A `Keys` entry: name, device, algorithm, purposes.
type KeyEntry = (String, String, String, Vec<String>);

/// `dev.waxseal.Agent1`.
struct Agent1 {
    store: Arc<KeyStore>,
}

#[interface(name = "dev.waxseal.Agent1")]
impl Agent1 {
    /// Drops cached PINs and refuses signing until `Unlock`. True if this call locked
    /// the agent.
    async fn lock(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<bool> {
        let caller = sender(conn, &header).await;
        let store = self.store.clone();
        blocking(move || store.lock_user(&caller)).await
    }

    /// Undoes `Lock`. True if this call unlocked the agent.
    async fn unlock(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> zbus::fdo::Result<bool> {
        let caller = sender(conn, &header).await;
        let store = self.store.clone();
        blocking(move || store.unlock_user(&caller)).await
    }

    /// Every configured device: (name, kind, present, keys, detail, error).
    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn devices(&self) -> zbus::fdo::Result<Vec<DeviceEntry>> {
        let store = self.store.clone();
        let status = blocking(move || store.status()).await?;
        Ok(status
            .devices
            .into_iter()
            .map(|d| {
                (
                    d.name,
                    d.kind.to_string(),
                    d.present,
                    u32::try_from(d.keys).unwrap_or(u32::MAX),
                    d.detail,
                    d.error.unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Every key of the present devices: (name, device, algorithm, purposes).
    #[zbus(property(emits_changed_signal = "invalidates"))]
    async fn keys(&self) -> zbus::fdo::Result<Vec<KeyEntry>> {
        let store = self.store.clone();
        let list = blocking(move || store.list_keys()).await?;
        Ok(list
            .keys
            .into_iter()
            .map(|k| {
                (
                    k.name,
                    k.device,
                    k.alg.to_string(),
                    k.purposes.iter().map(ToString::to_string).collect(),
                )
            })
            .collect())
    }

    /// Whether the agent refuses to sign.
    #[zbus(property)]
    async fn locked(&self) -> bool {
        self.store.is_locked()
    }

    /// A configured device became present.
    #[zbus(signal)]
    async fn device_added(emitter: &SignalEmitter<'_>, name: &str) -> zbus::Result<()>;

    /// A configured device went absent.
    #[zbus(signal)]
    async fn device_removed(emitter: &SignalEmitter<'_>, name: &str) -> zbus::Result<()>;

    /// A signature was returned to a client.
    #[zbus(signal)]
    async fn signature_issued(
        emitter: &SignalEmitter<'_>,
        key: &str,
        purpose: &str,
        caller: &str,
    ) -> zbus::Result<()>;
}

/// Who sent a method call, as the bus daemon knows it (for the audit log). The bus
/// lets only the user's own processes in; when the daemon cannot say, the record
/// names the agent's own uid and no pid.
async fn sender(conn: &Connection, header: &Header<'_>) -> Caller {
    let own = rustix::process::getuid().as_raw();
    let Some(name) = header.sender() else {
        return Caller::from_peer(own, None);
    };
    let creds = match zbus::fdo::DBusProxy::new(conn).await {
        Ok(bus) => bus
            .get_connection_credentials(name.clone().into())
            .await
            .ok(),
        Err(_) => None,
    };
    let uid = creds.as_ref().and_then(|c| c.unix_user_id()).unwrap_or(own);
    let pid = creds
        .and_then(|c| c.process_id())
        .and_then(|p| i32::try_from(p).ok());
    Caller::from_peer(uid, pid)
}

/// Turns the key store's [`Event`]s into `SignatureIssued` and `Locked` changes.
async fn forward_events(store: Arc<KeyStore>, iface: InterfaceRef<Agent1>) {
    let events = store.subscribe();
    drop(store);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // crossbeam's receiver blocks: a small thread moves events onto the runtime, and
    // ends within a second of the runtime dropping `rx`.
    let moved = std::thread::Builder::new()
        .name("waxseal-dbus-events".into())
        .spawn(move || loop {
            match events.recv_timeout(Duration::from_secs(1)) {
                Ok(e) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if !tx.is_closed() => {}
                Err(_) => return,
            }
        });
    if let Err(e) = moved {
        warn!(error = %e, "cannot start the D-Bus event thread: no SignatureIssued or Locked changes");
        return;
    }
    let emitter = iface.signal_emitter();
    while let Some(event) = rx.recv().await {
        let sent = match event {
            Event::SignatureIssued {
                key,
                purpose,
                caller,
            } => {
                emitter
                    .signature_issued(&key, purpose.as_str(), &caller.describe())
                    .await
            }
            Event::Locked(_) => iface.get().await.locked_changed(emitter).await,
        };
        if let Err(e) = sent {
            debug!(error = %e, "D-Bus signal not sent");
        }
    }
}

/// Checks every [`POLL`] which devices are there (without logging in: see
/// [`KeyStore::presence`]) and reports those that came or went.
async fn poll_devices(store: Arc<KeyStore>, iface: InterfaceRef<Agent1>) {
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<BTreeMap<String, (bool, usize)>> = None;
    loop {
        ticks.tick().await;
        let s = store.clone();
        let Ok(presence) = tokio::task::spawn_blocking(move || s.presence()).await else {
            continue;
        };
        let now: BTreeMap<String, (bool, usize)> = presence
            .into_iter()
            .map(|(name, present)| (name, (present, 0)))
            .collect();
        if let Some(before) = &last {
            let emitter = iface.signal_emitter();
            for (name, &(present, _)) in &now {
                let was = before.get(name).is_some_and(|&(p, _)| p);
                let sent = match (was, present) {
                    (false, true) => {
                        info!(device = %name, "device present");
                        Some(emitter.device_added(name).await)
                    }
                    (true, false) => {
                        info!(device = %name, "device absent");
                        Some(emitter.device_removed(name).await)
                    }
                    _ => None,
                };
                if let Some(Err(e)) = sent {
                    debug!(error = %e, "D-Bus signal not sent");
                }
            }
            if *before != now {
                let sent = zbus::fdo::Properties::properties_changed(
                    emitter,
                    InterfaceName::from_static_str_unchecked(INTERFACE),
                    HashMap::new(),
                    Cow::Borrowed(&["Devices", "Keys"]),
                )
                .await;
                if let Err(e) = sent {
                    debug!(error = %e, "D-Bus signal not sent");
                }
            }
        }
        last = Some(now);
    }
}

#[proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
trait Notifications {
    fn close_notification(&self, id: u32) -> zbus::Result<()>;

    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;
}

/// Asks through `org.freedesktop.Notifications`.
#[derive(Debug)]
struct NotificationConfirmer {
    /// The D-Bus thread's runtime.
    runtime: Handle,
    conn: Connection,
    timeout: Duration,
}

impl Confirmer for NotificationConfirmer {
    fn confirm(&self, request: &ConfirmRequest) -> Result<bool, ConfirmError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let conn = self.conn.clone();
        let request = request.clone();
        let timeout = self.timeout;
        self.runtime.spawn(async move {
            let _ = tx.send(ask(&conn, &request, timeout).await);
        });
        // A runtime that stopped drops `tx`: the answer is then an error, never a hang.
        match rx.recv_timeout(self.timeout + CONFIRM_SLACK) {
            Ok(answer) => answer,
            Err(_) => Err(ConfirmError::NoAnswer),
        }
    }
}

/// One question as a notification; see the module doc.
async fn ask(
    conn: &Connection,
    request: &ConfirmRequest,
    timeout: Duration,
) -> Result<bool, ConfirmError> {
    let fail = |e: zbus::Error| ConfirmError::Notifications(Box::new(e));
    let deadline = tokio::time::Instant::now() + timeout;
    let proxy = NotificationsProxy::new(conn).await.map_err(fail)?;
    let caps = proxy.get_capabilities().await.map_err(fail)?;
    if !caps.iter().any(|c| c == "actions") {
        return Err(ConfirmError::NoActions);
    }
    // Listen before asking, so an answer cannot come before the listener; one stream
    // for both signals keeps their order (servers send ActionInvoked, then
    // NotificationClosed).
    let mut signals = proxy.inner().receive_all_signals().await.map_err(fail)?;
    let mut body = format!(
        "{}\nDenied without an answer within {} s.",
        request.text(),
        timeout.as_secs()
    );
    if caps.iter().any(|c| c == "body-markup") {
        body = escape_markup(&body);
    }
    let summary = format!("waxseal: allow a signature with {}?", request.key);
    let mut hints = HashMap::new();
    hints.insert("urgency", Variant::from(2u8));
    let expire = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // Notify(app_name, replaces_id, app_icon, summary, body, actions, hints,
    // expire_timeout) → id, called with its arguments as one tuple.
    let id: u32 = proxy
        .inner()
        .call(
            "Notify",
            &(
                "waxseal",
                0u32,
                "dialog-password",
                summary.as_str(),
                body.as_str(),
                &["allow", "Allow", "deny", "Deny"][..],
                hints,
                expire,
            ),
        )
        .await
        .map_err(fail)?;
    let answer = async {
        while let Some(signal) = signals.next().await {
            let header = signal.header();
            let body = signal.body();
            match header.member().map(|m| m.as_str()) {
                Some("ActionInvoked") => match body.deserialize::<(u32, String)>() {
                    Ok((n, action)) if n == id => return action == "allow",
                    _ => {}
                },
                Some("NotificationClosed")
                    if body.deserialize::<(u32, u32)>().is_ok_and(|(n, _)| n == id) =>
                {
                    return false
                }
                _ => {}
            }
        }
        false
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(allowed) => {
            info!(key = %request.key, allowed, "answer from the desktop notification");
            Ok(allowed)
        }
        Err(_) => {
            info!(key = %request.key, "no answer to the desktop notification in time: denied");
            if let Err(e) = proxy.close_notification(id).await {
                debug!(error = %e, "CloseNotification failed");
            }
            Ok(false)
        }
    }
}

/// Escapes the body for servers that read it as markup.
fn escape_markup(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait LoginManager {
    fn get_session(&self, session_id: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(name = "GetSessionByPID")]
    fn get_session_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn prepare_for_sleep(&self, start: bool) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.login1.Session",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1/session/auto"
)]
trait LoginSession {
    #[zbus(signal)]
    fn lock(&self) -> zbus::Result<()>;
}

/// Drops cached PINs when logind says the machine sleeps or the session locks.
async fn logind(store: Arc<KeyStore>) {
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, Connection::system()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!(error = %e, "no system bus: sleep and screen lock do not drop cached PINs");
            return;
        }
        Err(_) => {
            info!("no system bus (no answer): sleep and screen lock do not drop cached PINs");
            return;
        }
    };
    let manager = match LoginManagerProxy::new(&conn).await {
        Ok(m) => m,
        Err(e) => {
            info!(error = %e, "no logind: sleep and screen lock do not drop cached PINs");
            return;
        }
    };
    let mut sleep = match manager.receive_prepare_for_sleep().await {
        Ok(s) => s,
        Err(e) => {
            info!(error = %e, "no logind: sleep and screen lock do not drop cached PINs");
            return;
        }
    };
    let mut lock = match session_lock(&conn, &manager).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            info!(error = %e, "logind: no session of the agent to watch; a screen lock does not drop cached PINs");
            None
        }
    };
    debug!("listening to logind's PrepareForSleep");
    loop {
        let reason = tokio::select! {
            s = sleep.next() => match s {
                Some(s) if s.args().is_ok_and(|a| a.start) => "the machine goes to sleep",
                Some(_) => {
                    // Said so that a test knows the wake-up was read (pkcs11-tests/tests/dbus.rs).
                    debug!("logind: the machine woke up; cached PINs kept");
                    continue;
                }
                None => break,
            },
            Some(_) = async {
                match lock.as_mut() {
                    Some(l) => l.next().await,
                    None => std::future::pending().await,
                }
            } => "the session is locked",
        };
        info!("logind: {reason}; dropping cached PINs");
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || s.forget_pins()).await;
    }
    debug!("logind's signals ended");
}

/// `Lock` of the agent's logind session: `$XDG_SESSION_ID`, else the session of its pid.
async fn session_lock(
    conn: &Connection,
    manager: &LoginManagerProxy<'_>,
) -> zbus::Result<LockStream> {
    let path = match std::env::var("XDG_SESSION_ID") {
        Ok(id) if !id.is_empty() => manager.get_session(&id).await?,
        _ => manager.get_session_by_pid(std::process::id()).await?,
    };
    debug!(session = %path.as_str(), "listening to logind's Lock");
    LoginSessionProxy::builder(conn)
        .path(path)
        .build()
        .await?
        .receive_lock()
        .await
}
