//! The agent's D-Bus face on a private `dbus-daemon` per test: `dev.waxseal.Agent1`
//! read and driven with the real `busctl`, its signals received by a zbus client,
//! confirmations answered by a notification service written for these tests
//! ([`NotificationsDouble`]), logind's signals from a logind written for these tests
//! on a second private bus ([`LogindDouble`]) — the two stand-ins here — a real swtpm
//! killed and restarted for `DeviceRemoved`/`DeviceAdded`, and agents with no session
//! bus at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pkcs11_tests::{bins, pkcs11_device, require, run_ok, tpm_device, Agent, SoftHsm, Spy, Swtpm};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::runtime::Runtime;
use waxseal_agent::client::{Client, ClientError};
use waxseal_agent::proto::{ErrorCode, HashAlg, KeyAlg};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedVariant};

const NAME: &str = "dev.waxseal.Agent";
const PATH: &str = "/dev/waxseal/Agent";
const IFACE: &str = "dev.waxseal.Agent1";
const NOTIFICATIONS: &str = "org.freedesktop.Notifications";
const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";

/// A private session bus: `dbus-daemon` listening in a temp dir, killed on drop.
struct Bus {
    _dir: TempDir,
    pid: i32,
    address: String,
}

impl Bus {
    fn start() -> Bus {
        require("dbus-daemon");
        let dir = tempfile::Builder::new().prefix("dbus-").tempdir().unwrap();
        let conf = dir.path().join("session.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let out = run_ok(
            Command::new("dbus-daemon")
                .arg(format!("--config-file={}", conf.display()))
                .args([
                    "--print-address=1",
                    "--print-pid=1",
                    "--fork",
                    "--nopidfile",
                ])
                .stdin(Stdio::null()),
        );
        let mut lines = out.lines();
        let address = lines
            .next()
            .expect("dbus-daemon printed its address")
            .to_string();
        let pid = lines
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("dbus-daemon printed its pid");
        assert!(address.starts_with("unix:"), "{out}");
        Bus {
            _dir: dir,
            pid,
            address,
        }
    }

    /// `busctl --address=… ARGS`, which must succeed; its stdout.
    fn busctl(&self, args: &[&str]) -> String {
        require("busctl");
        run_ok(
            Command::new("busctl")
                .arg(format!("--address={}", self.address))
                .args(args),
        )
        .trim()
        .to_string()
    }

    fn property(&self, name: &str) -> String {
        self.busctl(&["get-property", NAME, PATH, IFACE, name])
    }

    fn call(&self, method: &str) -> String {
        self.busctl(&["call", NAME, PATH, IFACE, method])
    }

    /// A zbus client connection on this bus.
    async fn connect(&self) -> Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// The client side of `dev.waxseal.Agent1`, for its signals.
#[zbus::proxy(
    interface = "dev.waxseal.Agent1",
    default_service = "dev.waxseal.Agent",
    default_path = "/dev/waxseal/Agent"
)]
trait Agent1 {
    #[zbus(signal)]
    fn device_added(&self, name: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn device_removed(&self, name: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn signature_issued(&self, key: String, purpose: String, caller: String) -> zbus::Result<()>;
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits up to `within` for the next item of `stream`.
fn next<S: futures::Stream + Unpin>(
    rt: &Runtime,
    stream: &mut S,
    within: Duration,
) -> Option<S::Item> {
    rt.block_on(async {
        tokio::time::timeout(within, stream.next())
            .await
            .ok()
            .flatten()
    })
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// A token `label` with one P-256 key `hsm/k`, an agent on `bus` with `extra` config.
fn agent_with_key(bus: &Bus, label: &str, extra: &str) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token(label, "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", label, &pin))
        .config(extra)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    (hsm, agent)
}

#[test]
fn busctl_reads_devices_keys_and_locked_and_lock_stops_signing_until_unlock() {
    let bus = Bus::start();
    let (_hsm, agent) = agent_with_key(&bus, "props", "");
    let digest = Sha256::digest(b"before the lock");

    let keys = bus.property("Keys");
    assert_eq!(
        keys,
        r#"a(sssas) 1 "hsm/k" "hsm" "p256" 4 "digest" "blob" "ssh" "attest""#,
        "log:\n{}",
        agent.log()
    );
    let devices = bus.property("Devices");
    assert!(
        devices.starts_with(r#"a(ssbuss) 1 "hsm" "pkcs11" true 1 "#),
        "{devices}"
    );
    // busctl escapes the quotes around the label: token \'props\'.
    assert!(devices.contains(r"token \'props\' serial"), "{devices}");
    assert!(devices.ends_with(r#" """#), "no error: {devices}");
    assert_eq!(bus.property("Locked"), "b false");

    // PropertiesChanged for Locked, seen by a client on the bus.
    let rt = runtime();
    let mut changes = rt.block_on(async {
        let conn = bus.connect().await;
        let props = zbus::fdo::PropertiesProxy::builder(&conn)
            .destination(NAME)
            .path(PATH)
            .build()
            .await
            .unwrap();
        props.receive_properties_changed().await.unwrap()
    });
    let mut locked_change = |what: &str| -> bool {
        let signal = next(&rt, &mut changes, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no PropertiesChanged after {what}"));
        let args = signal.args().unwrap();
        assert_eq!(args.interface_name().as_str(), IFACE);
        let v = args
            .changed_properties()
            .get("Locked")
            .unwrap_or_else(|| panic!("{what}: {:?}", args.changed_properties()));
        v.downcast_ref::<bool>().unwrap()
    };

    agent
        .client()
        .sign_digest("hsm/k", &digest, None, None)
        .unwrap();
    assert_eq!(bus.call("Lock"), "b true");
    assert!(locked_change("Lock"));
    assert_eq!(bus.property("Locked"), "b true");
    assert_eq!(bus.call("Lock"), "b false", "already locked");
    let (c, m) = code(agent.client().sign_digest("hsm/k", &digest, None, None));
    assert_eq!(c, ErrorCode::Locked, "{m}");
    assert!(
        agent.log().contains("cached PINs dropped"),
        "{}",
        agent.log()
    );

    assert_eq!(bus.call("Unlock"), "b true");
    assert!(!locked_change("Unlock"));
    assert_eq!(bus.property("Locked"), "b false");
    assert_eq!(bus.call("Unlock"), "b false", "not locked");
    agent
        .client()
        .sign_digest("hsm/k", &digest, None, None)
        .unwrap();

    // Locking through agent.sock shows on D-Bus too.
    agent.client().lock().unwrap();
    assert!(locked_change("waxseal lock"));
    assert_eq!(bus.property("Locked"), "b true");

    // Every Lock and Unlock is in the audit log, with the caller the bus daemon names.
    let locks: Vec<serde_json::Value> = pkcs11_tests::audit_records(&agent.state_dir)
        .into_iter()
        .filter(|r| r["event"] == "lock" || r["event"] == "unlock")
        .collect();
    let events: Vec<&str> = locks.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["lock", "lock", "unlock", "unlock", "lock"],
        "{locks:?}"
    );
    let me = rustix::process::getuid().as_raw();
    for r in &locks {
        assert_eq!(r["caller"]["uid"], me, "{r}");
        assert!(r["caller"]["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
    }
}

#[test]
fn a_second_agent_on_the_same_bus_leaves_the_name_to_the_first() {
    let bus = Bus::start();
    let (_hsm, first) = agent_with_key(&bus, "first", "");
    let hsm = SoftHsm::new();
    hsm.init_token("second", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let second = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("other", "second", &pin))
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .start();
    let off: Vec<String> = second
        .log()
        .lines()
        .filter(|l| l.contains("D-Bus features off"))
        .map(String::from)
        .collect();
    assert_eq!(off.len(), 1, "{}", second.log());
    assert!(off[0].contains("owns dev.waxseal.Agent"), "{}", off[0]);
    // The first still answers, the second signs without D-Bus.
    assert!(bus.property("Devices").contains(r#""hsm" "pkcs11" true"#));
    second
        .client()
        .generate_key("other/k", KeyAlg::P256)
        .unwrap();
    drop(first);
}

#[test]
fn signature_issued_names_key_purpose_and_caller() {
    let bus = Bus::start();
    let (_hsm, agent) = agent_with_key(&bus, "sigs", "");
    let rt = runtime();
    let mut issued = rt.block_on(async {
        let conn = bus.connect().await;
        Agent1Proxy::new(&conn)
            .await
            .unwrap()
            .receive_signature_issued()
            .await
            .unwrap()
    });
    let mut client = agent.client();
    client
        .sign_digest("hsm/k", &Sha256::digest(b"one"), None, None)
        .unwrap();
    let signal = next(&rt, &mut issued, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no SignatureIssued; log:\n{}", agent.log()));
    let args = signal.args().unwrap();
    assert_eq!(args.key(), "hsm/k");
    assert_eq!(args.purpose(), "digest");
    let me = format!("pid {}", std::process::id());
    assert!(args.caller().contains(&me), "{} lacks {me}", args.caller());
    assert!(args.caller().starts_with("uid "), "{}", args.caller());

    client
        .sign_blob(
            "hsm/k",
            "release.tar.gz",
            &Sha256::digest(b"two"),
            HashAlg::Sha256,
        )
        .unwrap();
    let signal = next(&rt, &mut issued, Duration::from_secs(10)).expect("second SignatureIssued");
    assert_eq!(signal.args().unwrap().purpose(), "blob");

    // A refused signature is not a signature issued: the agent sends its signals in
    // order, so the next one after the refusal is the signature that follows it.
    let refused = client.sign_digest("hsm/missing", &[0u8; 32], None, None);
    assert!(refused.is_err(), "{refused:?}");
    client
        .sign_digest("hsm/k", &Sha256::digest(b"three"), None, None)
        .unwrap();
    let signal = next(&rt, &mut issued, Duration::from_secs(10)).expect("third SignatureIssued");
    assert_eq!(
        signal.args().unwrap().key(),
        "hsm/k",
        "SignatureIssued for a refused signature"
    );
}

/// How [`NotificationsDouble`] answers the next notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// `ActionInvoked(id, "allow")`, then `NotificationClosed(id, 2)`, as a server does.
    Allow,
    /// `ActionInvoked(id, "deny")`, then `NotificationClosed(id, 2)`.
    Deny,
    /// `NotificationClosed(id, 2)`: dismissed without choosing.
    Dismiss,
    /// Nothing at all.
    Nothing,
}

/// One `Notify` the double received.
#[derive(Debug, Clone)]
struct Note {
    id: u32,
    app: String,
    summary: String,
    body: String,
    actions: Vec<String>,
    expire: i32,
}

#[derive(Debug)]
struct Seen {
    answer: Answer,
    notes: Vec<Note>,
    closed: Vec<u32>,
}

/// A TEST DOUBLE of the desktop notification service (`org.freedesktop.Notifications`,
/// as in the Desktop Notifications Specification 1.2): it records every notification
/// and answers as told.
struct NotificationsDouble {
    seen: Arc<Mutex<Seen>>,
    next_id: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl NotificationsDouble {
    fn get_capabilities(&self) -> Vec<String> {
        vec!["actions".into(), "body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "notifications-test-double".into(),
            "waxseal tests".into(),
            "0".into(),
            "1.2".into(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &mut self,
        #[zbus(connection)] conn: &Connection,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let answer = {
            let mut seen = self.seen.lock().unwrap();
            seen.notes.push(Note {
                id,
                app: app_name,
                summary,
                body,
                actions,
                expire: expire_timeout,
            });
            seen.answer
        };
        let conn = conn.clone();
        // Answer at once, possibly before the reply reaches the agent: it listens for
        // the answer before it asks (`ask` in agent/src/server/dbus.rs), so an early
        // answer must still count.
        tokio::spawn(async move {
            let emitter = SignalEmitter::new(&conn, NOTIFICATIONS_PATH).unwrap();
            let action = match answer {
                Answer::Allow => Some("allow"),
                Answer::Deny => Some("deny"),
                Answer::Dismiss => None,
                Answer::Nothing => return,
            };
            if let Some(action) = action {
                emitter
                    .emit(NOTIFICATIONS, "ActionInvoked", &(id, action))
                    .await
                    .unwrap();
            }
            emitter
                .emit(NOTIFICATIONS, "NotificationClosed", &(id, 2u32))
                .await
                .unwrap();
        });
        id
    }

    async fn close_notification(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        id: u32,
    ) -> zbus::fdo::Result<()> {
        self.seen.lock().unwrap().closed.push(id);
        emitter
            .emit(NOTIFICATIONS, "NotificationClosed", &(id, 3u32))
            .await?;
        Ok(())
    }
}

#[test]
fn confirm_keys_ask_through_desktop_notifications() {
    let bus = Bus::start();
    let (_hsm, agent) = agent_with_key(
        &bus,
        "confirm",
        "[agent]\nconfirm_timeout_secs = 2\n\n[[key]]\nname = \"hsm/asked\"\npurposes = [\"digest\"]\nconfirm = true\n",
    );
    agent
        .client()
        .generate_key("hsm/asked", KeyAlg::P256)
        .unwrap();
    assert!(
        agent
            .log()
            .contains("confirmations are asked through desktop notifications"),
        "{}",
        agent.log()
    );
    let digest = Sha256::digest(b"confirm me");

    // No notification service on the bus yet: nobody can be asked.
    let (c, m) = code(agent.client().sign_digest("hsm/asked", &digest, None, None));
    assert_eq!(c, ErrorCode::ConfirmDenied, "{m}");
    assert!(m.contains("could not be asked"), "{m}");
    assert!(m.contains(NOTIFICATIONS), "{m}");

    let seen = Arc::new(Mutex::new(Seen {
        answer: Answer::Allow,
        notes: Vec::new(),
        closed: Vec::new(),
    }));
    let rt = runtime();
    let _service = rt.block_on(async {
        zbus::connection::Builder::address(bus.address.as_str())
            .name(NOTIFICATIONS)
            .serve_at(
                NOTIFICATIONS_PATH,
                NotificationsDouble {
                    seen: seen.clone(),
                    next_id: 0,
                },
            )
            .build()
            .await
            .unwrap()
    });
    let set = |a: Answer| seen.lock().unwrap().answer = a;
    let notes = || seen.lock().unwrap().notes.clone();

    // Allow.
    let sig = agent
        .client()
        .sign_digest("hsm/asked", &digest, None, None)
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", agent.log()));
    assert!(!sig.signature.0.is_empty());
    let asked = notes();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let note = &asked[0];
    assert_eq!(note.app, "waxseal");
    assert_eq!(note.actions, ["allow", "Allow", "deny", "Deny"]);
    assert_eq!(note.expire, 2000);
    assert!(note.summary.contains("hsm/asked"), "{note:?}");
    assert!(note.body.contains("hsm/asked"), "{note:?}");
    assert!(note.body.contains("digest"), "{note:?}");
    assert!(
        note.body.contains(&hex::encode(digest)),
        "what is signed: {note:?}"
    );
    let me = format!("pid {}", std::process::id());
    assert!(note.body.contains(&me), "caller {me}: {note:?}");

    // Deny.
    set(Answer::Deny);
    let (c, m) = code(agent.client().sign_digest("hsm/asked", &digest, None, None));
    assert_eq!(c, ErrorCode::ConfirmDenied, "{m}");
    assert!(m.contains("denied"), "{m}");

    // Dismissed without a choice.
    set(Answer::Dismiss);
    let (c, _) = code(agent.client().sign_digest("hsm/asked", &digest, None, None));
    assert_eq!(c, ErrorCode::ConfirmDenied);

    // No answer: denied after confirm_timeout_secs, and the notification is closed.
    // Meanwhile other clients are served at once.
    set(Answer::Nothing);
    let start = Instant::now();
    let (c, took) = std::thread::scope(|s| {
        let waiting = s.spawn(|| {
            let r = agent.client().sign_digest("hsm/asked", &digest, None, None);
            (code(r).0, start.elapsed())
        });
        // The question is out (the double recorded it): now the other client.
        let deadline = Instant::now() + Duration::from_secs(10);
        while notes().len() < 4 {
            assert!(
                Instant::now() < deadline,
                "no fourth notification: {:?}",
                notes()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let other = Instant::now();
        agent
            .client()
            .sign_digest("hsm/k", &digest, None, None)
            .unwrap();
        assert_eq!(agent.client().status().unwrap().devices.len(), 1);
        assert!(
            other.elapsed() < Duration::from_secs(1),
            "a pending confirmation held up another client for {:?}",
            other.elapsed()
        );
        waiting.join().unwrap()
    });
    assert_eq!(c, ErrorCode::ConfirmDenied);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "denied after {took:?}"
    );
    let last = notes().last().unwrap().id;
    assert_eq!(seen.lock().unwrap().closed, [last]);
    assert_eq!(notes().len(), 4);

    // Allowed again: the earlier questions left nothing behind.
    set(Answer::Allow);
    agent
        .client()
        .sign_digest("hsm/asked", &digest, None, None)
        .unwrap_or_else(|e| panic!("{e}\n{:?}\nlog:\n{}", notes(), agent.log()));
    assert_eq!(notes().len(), 5);

    // A key without `confirm` never asks.
    set(Answer::Deny);
    agent
        .client()
        .sign_digest("hsm/k", &digest, None, None)
        .unwrap();
    assert_eq!(notes().len(), 5);
}

#[test]
fn confirm_program_wins_over_notifications() {
    let bus = Bus::start();
    let tmp = tempfile::tempdir().unwrap();
    let program = pkcs11_tests::write_script(tmp.path(), "yes", "exit 0");
    let (_hsm, agent) = agent_with_key(
        &bus,
        "program",
        &format!(
            "[agent]\nconfirm_program = \"{}\"\n\n[[key]]\nname = \"hsm/k\"\npurposes = [\"digest\"]\nconfirm = true\n",
            program.display()
        ),
    );
    // No notification service on the bus: the program answers.
    agent
        .client()
        .sign_digest("hsm/k", &[1u8; 32], None, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(
        !agent.log().contains("desktop notifications"),
        "{}",
        agent.log()
    );
    // The D-Bus face itself is up.
    assert_eq!(bus.property("Locked"), "b false");
}

#[test]
fn a_tpm_that_goes_and_comes_back_sends_device_removed_then_added() {
    let bus = Bus::start();
    let mut tpm = Swtpm::start();
    let keys = tempfile::tempdir().unwrap();
    // A second device, after the TPM and behind pkcs11-spy, shows when the agent's
    // presence poll has run: it checks the devices in order, and its C_GetTokenInfo
    // lands in the spy's log.
    let hsm = SoftHsm::new();
    hsm.init_token("beside", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let spy = Spy::new(&hsm);
    let agent = spy
        .env(Agent::builder())
        .softhsm(&hsm)
        .config(&tpm_device("tpm", &tpm, keys.path(), None))
        .config(&spy.device("hsm", "beside", &pin, ""))
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .start();
    let devices = bus.property("Devices");
    assert!(
        devices.starts_with(r#"a(ssbuss) 2 "tpm" "tpm" true 0 "#),
        "{devices}"
    );
    let rt = runtime();
    let (mut removed, mut added, mut changes, props) = rt.block_on(async {
        let conn = bus.connect().await;
        let proxy = Agent1Proxy::new(&conn).await.unwrap();
        let props = zbus::fdo::PropertiesProxy::builder(&conn)
            .destination(NAME)
            .path(PATH)
            .build()
            .await
            .unwrap();
        (
            proxy.receive_device_removed().await.unwrap(),
            proxy.receive_device_added().await.unwrap(),
            props.receive_properties_changed().await.unwrap(),
            props,
        )
    });
    // Wait for the agent's poll to see the TPM present before it goes: a poll that
    // starts after the property read above checks the TPM, then the spied token.
    spy.wait_more("C_GetTokenInfo", spy.calls("C_GetTokenInfo"));

    tpm.kill();
    let gone = next(&rt, &mut removed, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no DeviceRemoved; log:\n{}", agent.log()));
    assert_eq!(gone.args().unwrap().name(), "tpm");
    let devices = bus.property("Devices");
    assert!(devices.contains(r#""tpm" "tpm" false 0"#), "{devices}");
    let invalidated = next(&rt, &mut changes, Duration::from_secs(5)).expect("PropertiesChanged");
    let args = invalidated.args().unwrap();
    assert!(
        args.invalidated_properties().contains(&"Devices"),
        "{:?}",
        args.invalidated_properties()
    );
    assert!(args.invalidated_properties().contains(&"Keys"));
    // No DeviceAdded while the TPM is down: let one whole poll run without it (the
    // spied token's C_GetTokenInfo of the poll after it says it has ended), then read a
    // property on the connection that receives the signals: the bus delivers the
    // agent's messages in order, so any signal the agent sent before is in by then.
    let polled = spy.wait_more("C_GetTokenInfo", spy.calls("C_GetTokenInfo"));
    spy.wait_more("C_GetTokenInfo", polled);
    rt.block_on(props.get(IFACE.try_into().unwrap(), "Devices"))
        .unwrap();
    assert!(
        next(&rt, &mut added, Duration::ZERO).is_none(),
        "DeviceAdded while the TPM is down"
    );

    tpm.restart();
    let back = next(&rt, &mut added, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no DeviceAdded; log:\n{}", agent.log()));
    assert_eq!(back.args().unwrap().name(), "tpm");
    assert!(
        bus.property("Devices").contains(r#""tpm" "tpm" true"#),
        "{}",
        bus.property("Devices")
    );
    agent
        .client()
        .generate_key("tpm/after", KeyAlg::P256)
        .unwrap();
}

/// A variable of the agent's environment set (`Some`) or removed (`None`).
type EnvChange<'a> = (&'a str, Option<&'a str>);

/// Starts the agent binary with `env` changes, waits until it answers, signs once with
/// `hsm/k`, stops it and returns its log.
fn sign_without_dbus(hsm: &SoftHsm, config: &Path, env: &[EnvChange]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().join("run");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(&bins().agent);
    cmd.arg("--config")
        .arg(config)
        .arg("--runtime-dir")
        .arg(&runtime_dir)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--log-level", "debug"])
        .env("SOFTHSM2_CONF", hsm.conf())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().unwrap();
    let socket = runtime_dir.join("agent.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = loop {
        if let Ok(c) = Client::connect(&socket) {
            break c;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "agent exited with {status}:\n{}",
                std::fs::read_to_string(&log_path).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "agent not ready");
        std::thread::sleep(Duration::from_millis(10));
    };
    let signed = client.sign_digest("hsm/k", &[9u8; 32], None, None);
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    signed.unwrap_or_else(|e| panic!("{e}\n{text}"));
    text
}

#[test]
fn without_a_session_bus_the_agent_signs_and_says_once_why_dbus_is_off() {
    let hsm = SoftHsm::new();
    hsm.init_token("nobus", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, pkcs11_device("hsm", "nobus", &pin)).unwrap();
    // The key, made by an agent with no bus.
    let maker = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "nobus", &pin))
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .start();
    maker.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    drop(maker);

    let empty = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:path={}/no-bus-here", empty.path().display());
    let cases: [(&str, Vec<EnvChange>); 3] = [
        (
            "pointing nowhere",
            vec![("DBUS_SESSION_BUS_ADDRESS", Some(nowhere.as_str()))],
        ),
        (
            "unset",
            vec![
                ("DBUS_SESSION_BUS_ADDRESS", None),
                ("XDG_RUNTIME_DIR", Some(empty.path().to_str().unwrap())),
            ],
        ),
        (
            "not an address",
            vec![("DBUS_SESSION_BUS_ADDRESS", Some("this is no address"))],
        ),
    ];
    for (what, env) in &cases {
        let log = sign_without_dbus(&hsm, &config, env);
        let off: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("D-Bus features off"))
            .collect();
        assert_eq!(off.len(), 1, "{what}: said once:\n{log}");
        if *what == "unset" {
            assert!(
                off[0].contains("DBUS_SESSION_BUS_ADDRESS is not set"),
                "{}",
                off[0]
            );
            assert!(off[0].contains("INFO"), "{}", off[0]);
        } else {
            assert!(off[0].contains("WARN"), "{}", off[0]);
        }
        if *what == "pointing nowhere" {
            assert!(off[0].contains("no-bus-here"), "{}", off[0]);
        }
        assert!(
            !log.contains(IFACE) || log.contains("no dev.waxseal.Agent1"),
            "{log}"
        );
        assert!(!log.contains("served on the session bus"), "{log}");
    }
}

/// A TEST DOUBLE of logind's `org.freedesktop.login1.Manager`: it knows one session,
/// `/org/freedesktop/login1/session/_37`, and records how it was looked up.
struct LogindDouble {
    asked: Arc<Mutex<Vec<String>>>,
}

const SESSION_PATH: &str = "/org/freedesktop/login1/session/_37";

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl LogindDouble {
    fn get_session(&self, id: String) -> zbus::fdo::Result<zbus::OwnedObjectPath> {
        self.asked.lock().unwrap().push(format!("GetSession {id}"));
        if id != "37" {
            return Err(zbus::fdo::Error::Failed(format!("no session {id}")));
        }
        Ok(zbus::OwnedObjectPath::try_from(SESSION_PATH).unwrap())
    }

    #[zbus(name = "GetSessionByPID")]
    fn get_session_by_pid(&self, pid: u32) -> zbus::OwnedObjectPath {
        self.asked
            .lock()
            .unwrap()
            .push(format!("GetSessionByPID {pid}"));
        zbus::OwnedObjectPath::try_from(SESSION_PATH).unwrap()
    }
}

/// The session object of [`LogindDouble`] (its `Lock` signal is emitted by the test).
struct SessionDouble;

#[zbus::interface(name = "org.freedesktop.login1.Session")]
impl SessionDouble {
    #[zbus(property)]
    fn id(&self) -> String {
        "37".into()
    }
}

/// Waits until the agent's log has `needle` `times` times.
fn wait_log(agent: &Agent, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.log().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "{times}× {needle:?} not in the log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn logind_sleep_and_session_lock_drop_cached_pins() {
    let session_bus = Bus::start();
    let system_bus = Bus::start();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let rt = runtime();
    let logind = rt.block_on(async {
        zbus::connection::Builder::address(system_bus.address.as_str())
            .name("org.freedesktop.login1")
            .serve_at(
                "/org/freedesktop/login1",
                LogindDouble {
                    asked: asked.clone(),
                },
            )
            .serve_at(SESSION_PATH, SessionDouble)
            .build()
            .await
            .unwrap()
    });
    let hsm = SoftHsm::new();
    hsm.init_token("logind", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    // What a PIN drop does to the token, counted by pkcs11-spy: one C_Logout, and the
    // next signature logs in again.
    let spy = Spy::new(&hsm);
    let agent = spy
        .env(Agent::builder())
        .softhsm(&hsm)
        .config(&spy.device("hsm", "logind", &pin, "sessions = 1\n"))
        .env("DBUS_SESSION_BUS_ADDRESS", &session_bus.address)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &system_bus.address)
        .env("XDG_SESSION_ID", "37")
        .start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    wait_log(&agent, "listening to logind's PrepareForSleep", 1);
    wait_log(&agent, "listening to logind's Lock", 1);
    assert_eq!(*asked.lock().unwrap(), ["GetSession 37"]);
    let sign = |n: u8| {
        agent
            .client()
            .sign_digest("hsm/k", &[n; 32], None, None)
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", agent.log()))
    };
    sign(1);
    let logins = spy.calls("C_Login");
    let logouts = spy.calls("C_Logout");
    assert_eq!(logins, 1, "logged in once; spy log {}", spy.log.display());
    sign(2);
    assert_eq!(spy.calls("C_Login"), logins, "the PIN is held");

    let emit = |path: &str, iface: &str, member: &str, body: Option<bool>| {
        rt.block_on(async {
            let emitter = SignalEmitter::new(&logind, path).unwrap();
            match body {
                Some(b) => emitter.emit(iface, member, &(b,)).await.unwrap(),
                None => emitter.emit(iface, member, &()).await.unwrap(),
            }
        })
    };
    let manager = "org.freedesktop.login1.Manager";
    let dropped = "cached PINs dropped";
    let drops = agent.log().matches(dropped).count();

    // Going to sleep logs the token out; the next signature logs in again.
    emit(
        "/org/freedesktop/login1",
        manager,
        "PrepareForSleep",
        Some(true),
    );
    spy.wait_calls("C_Logout", logouts + 1);
    sign(3);
    assert_eq!(spy.calls("C_Login"), logins + 1);

    // Waking up drops nothing: once the agent has read the wake-up, the token is still
    // logged in and the next signature needs no C_Login.
    emit(
        "/org/freedesktop/login1",
        manager,
        "PrepareForSleep",
        Some(false),
    );
    wait_log(&agent, "logind: the machine woke up; cached PINs kept", 1);
    assert_eq!(spy.calls("C_Logout"), logouts + 1);
    sign(4);
    assert_eq!(
        spy.calls("C_Login"),
        logins + 1,
        "the PIN was dropped on waking"
    );
    assert_eq!(agent.log().matches(dropped).count(), drops + 1);

    // Locking the session logs the token out too. Signing goes on: locking the screen
    // is not locking the agent.
    emit(SESSION_PATH, "org.freedesktop.login1.Session", "Lock", None);
    spy.wait_calls("C_Logout", logouts + 2);
    sign(5);
    assert_eq!(spy.calls("C_Login"), logins + 2);
    assert_eq!(spy.calls("C_Logout"), logouts + 2);
}
