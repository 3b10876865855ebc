//! The OpenSSH agent protocol on `ssh.sock` (draft-miller-ssh-agent, OpenSSH's
//! PROTOCOL.agent), through `ssh-agent-lib`: its message types decode and encode every
//! frame and its [`Session`] trait dispatches; this module supplies keys and signatures.
//!
//! Separate from `agent.sock` on purpose: this socket gets forwarded to other hosts.
//! Only keys whose policy allows `ssh` are offered; on a connection bound for forwarding
//! (`session-bind@openssh.com` with the forwarding flag, its host signature checked),
//! or that sent a bind the agent could not read or verify, keys with
//! `ssh_forwarding = false` are neither listed nor usable. ssh.sock has its own,
//! smaller connection cap, and a forwarded connection a shorter idle timeout, so a host
//! reached with `ssh -A` cannot hold every slot. Keys live in
//! hardware, so add/remove requests fail; lock/unlock lock the whole agent.
//!
//! Each connection has its own thread, as on `agent.sock` ([`super::serve`]): frames
//! are read with brief polling, decoded by the library, answered synchronously.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use p256::pkcs8::DecodePublicKey;
use ssh_agent_lib::agent::Session;
use ssh_agent_lib::error::AgentError;
use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::proto::{
    AddIdentity, AddIdentityConstrained, AddSmartcardKeyConstrained, Extension, Identity,
    PublicCredential, RemoveIdentity, Request, Response, SignRequest, SmartcardKey,
};
use ssh_encoding::{Decode, Encode};
use ssh_key::public::{EcdsaPublicKey, Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, Signature};
use tracing::{debug, info, warn};

use super::ServeOptions;
use crate::keystore::{KeyStore, SshKey, SshSign};
use crate::policy::Caller;
use crate::proto::{HashAlg, KeyAlg};
use crate::wire::{FrameReader, ReadError, Sender};

/// OpenSSH's limit on an agent message (`AGENT_MAX_LEN`): 256 KiB.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// `SSH_AGENT_RSA_SHA2_256`.
const RSA_SHA2_256: u32 = 2;
/// `SSH_AGENT_RSA_SHA2_512`.
const RSA_SHA2_512: u32 = 4;

/// What [`connection`] writes for `response`: its length, then the message; a
/// response that cannot be encoded becomes `SSH_AGENT_FAILURE`.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let framed = response
        .encoded_len()
        .and_then(|len| (len as u32).encode(&mut out))
        .and_then(|()| response.encode(&mut out));
    if framed.is_err() {
        out.clear();
        out.extend_from_slice(&[0, 0, 0, 1, 5]); // SSH_AGENT_FAILURE
    }
    out
}

fn send(mut w: &UnixStream, response: &Response) -> std::io::Result<()> {
    w.write_all(&encode_response(response))
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
    if caller.uid != opts.uid {
        warn!(
            uid = caller.uid,
            pid, "ssh: connection from another uid refused"
        );
        let _ = send(stream, &Response::Failure);
        return;
    }
    if stream.set_read_timeout(Some(opts.idle_timeout)).is_err() {
        return;
    }
    let mut session = SshSession::new(store.clone(), caller.clone());
    if let Ok(peer) = stream.try_clone() {
        session = session.on(peer);
    }
    let mut reader = FrameReader::with_limit(MAX_MESSAGE).from_peer(
        Sender {
            pid,
            uid: caller.uid,
        },
        queued,
    );
    let mut idle = opts.idle_timeout;
    loop {
        if session.forwarded && idle != opts.forwarded_idle_timeout {
            // A forwarded agent is reachable from another host: it holds a slot of
            // ssh.sock for less time.
            idle = opts.forwarded_idle_timeout.min(opts.idle_timeout);
            if stream.set_read_timeout(Some(idle)).is_err() {
                return;
            }
        }
        let frame = match reader.read(stream, opts.spin, Some(idle)) {
            Ok(frame) => frame,
            Err(ReadError::TooLarge(len)) => {
                warn!(
                    pid,
                    len, "ssh: message over 256 KiB; closing the connection"
                );
                let _ = send(stream, &Response::Failure);
                return;
            }
            Err(ReadError::Closed | ReadError::Idle) => return,
            Err(ReadError::Broken(e)) => {
                debug!(pid, error = %e, "ssh: connection broke");
                return;
            }
            Err(ReadError::Foreign(sender)) => {
                store.refuse_foreign(caller, sender, "ssh.sock");
                let _ = send(stream, &Response::Failure);
                return;
            }
        };
        // At work until the answer is written: no other thread polls on this CPU.
        let _busy = crate::wire::Busy::enter();
        let len = frame.len();
        let decoded = Request::decode(&mut &frame[..]);
        session.caller.early = reader.early();
        let response = session.dispatch(decoded, len);
        if send(stream, &response).is_err() {
            return;
        }
    }
}

/// One SSH agent connection: what [`connection`] keeps between messages. Public so
/// that the fuzz target `ssh_session` (fuzz/README.md) drives the same handler
/// without a socket.
pub struct SshSession {
    store: Arc<KeyStore>,
    caller: Caller,
    /// Bound for forwarding by `session-bind@openssh.com`.
    forwarded: bool,
    /// The identities last offered, with their keys.
    keys: Vec<(KeyData, SshKey)>,
    /// The connection, to notice a client that went away while its signature waits
    /// for approvals; `None` without a socket.
    peer: Option<UnixStream>,
}

/// An SSH client, which cannot be told or asked anything, but can go away.
struct SshPeer<'a>(Option<&'a UnixStream>);

impl crate::keystore::Interaction for SshPeer<'_> {
    fn notice(&mut self, _text: &str) {}
    fn ask_pin(&mut self, _question: &str) -> Option<secrecy::SecretString> {
        None
    }
    fn gone(&mut self) -> bool {
        self.0.is_some_and(super::peer_gone)
    }
}

impl std::fmt::Debug for SshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSession")
            .field("caller", &self.caller)
            .field("forwarded", &self.forwarded)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl SshSession {
    /// A new connection of `caller`, not bound for forwarding.
    pub fn new(store: Arc<KeyStore>, caller: Caller) -> SshSession {
        SshSession {
            store,
            caller,
            forwarded: false,
            keys: Vec::new(),
            peer: None,
        }
    }

    /// The session of the connection `peer` (see [`SshSession::peer`]).
    pub fn on(mut self, peer: UnixStream) -> SshSession {
        self.peer = Some(peer);
        self
    }

    /// Whether the connection counts as bound for forwarding (see the module doc).
    pub fn forwarded(&self) -> bool {
        self.forwarded
    }

    /// The response to one message body (the frame without its length): decoded by
    /// `ssh-agent-lib`, dispatched by its [`Session::handle`] to the methods below.
    pub fn answer(&mut self, frame: &[u8]) -> Response {
        self.dispatch(Request::decode(&mut &frame[..]), frame.len())
    }

    /// The response to a message of `len` bytes, decoded as `decoded`.
    fn dispatch(
        &mut self,
        decoded: Result<Request, <Request as Decode>::Error>,
        len: usize,
    ) -> Response {
        let pid = self.caller.pid.unwrap_or(0);
        match decoded {
            Ok(request) => {
                // Every method of SshSession completes without waiting on anything, so
                // block_on returns after one poll; the device work runs right here.
                match futures::executor::block_on(self.handle(request)) {
                    Ok(r) => r,
                    Err(AgentError::ExtensionFailure) => Response::ExtensionFailure,
                    Err(e) => {
                        debug!(pid, error = %e, "ssh: request failed");
                        Response::Failure
                    }
                }
            }
            Err(e) => {
                info!(pid, error = %e, len, "ssh: message not understood");
                Response::Failure
            }
        }
    }
}

/// The SSH public key of a key's SPKI.
fn key_data(key: &SshKey) -> Option<KeyData> {
    match key.alg {
        KeyAlg::P256 => p256::ecdsa::VerifyingKey::from_public_key_der(&key.spki)
            .ok()
            .map(|k| KeyData::Ecdsa(EcdsaPublicKey::from(k))),
        KeyAlg::P384 => p384::ecdsa::VerifyingKey::from_public_key_der(&key.spki)
            .ok()
            .map(|k| KeyData::Ecdsa(EcdsaPublicKey::from(k))),
        KeyAlg::Rsa(_) => rsa::RsaPublicKey::from_public_key_der(&key.spki)
            .ok()
            .and_then(|k| ssh_key::public::RsaPublicKey::try_from(&k).ok())
            .map(KeyData::Rsa),
        KeyAlg::Ed25519 => key
            .spki
            .get(12..)
            .and_then(|raw| Ed25519PublicKey::try_from(raw).ok())
            .map(KeyData::Ed25519),
    }
}

fn refused(why: impl Into<String>) -> AgentError {
    AgentError::Other(why.into().into())
}

impl SshSession {
    fn refresh(&mut self) {
        self.keys = self
            .store
            .ssh_keys(self.forwarded)
            .into_iter()
            .filter_map(|k| key_data(&k).map(|d| (d, k)))
            .collect();
    }

    fn find(&mut self, wanted: &KeyData) -> Option<SshKey> {
        let hit = |keys: &[(KeyData, SshKey)]| {
            keys.iter()
                .find(|(d, _)| d == wanted)
                .map(|(_, k)| k.clone())
        };
        if let Some(k) = hit(&self.keys) {
            return Some(k);
        }
        self.refresh();
        hit(&self.keys)
    }
}

#[ssh_agent_lib::async_trait]
impl Session for SshSession {
    async fn request_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        self.refresh();
        Ok(self
            .keys
            .iter()
            .map(|(data, key)| Identity {
                credential: PublicCredential::Key(data.clone()),
                comment: key.name.clone(),
            })
            .collect())
    }

    async fn sign(&mut self, request: SignRequest) -> Result<Signature, AgentError> {
        let pid = self.caller.pid.unwrap_or(0);
        let Some(key) = self.find(request.credential.key_data()) else {
            info!(
                pid,
                "ssh: sign request for a key this agent does not offer here"
            );
            return Err(AgentError::Failure);
        };
        let rsa_hash = if request.flags & RSA_SHA2_512 != 0 {
            Some(HashAlg::Sha512)
        } else if request.flags & RSA_SHA2_256 != 0 {
            Some(HashAlg::Sha256)
        } else {
            None
        };
        let sign = SshSign {
            key: &key.name,
            alg: key.alg,
            data: &request.data,
            rsa_hash,
            forwarded: self.forwarded,
        };
        let mut peer = SshPeer(self.peer.as_ref());
        let sig = match self.store.sign_ssh_with(&sign, &self.caller, &mut peer) {
            Ok(sig) => sig,
            Err(e) => {
                info!(pid, key = %key.name, code = %e.code, "ssh: sign refused or failed: {}", e.message);
                return Err(refused(e.to_string()));
            }
        };
        debug!(pid, key = %key.name, "ssh: signed");
        let bad = |e: &dyn std::fmt::Display| {
            refused(format!("device returned an unusable signature: {e}"))
        };
        match key.alg {
            KeyAlg::P256 => {
                let s = p256::ecdsa::Signature::from_der(&sig.bytes).map_err(|e| bad(&e))?;
                Signature::try_from(s).map_err(|e| bad(&e))
            }
            KeyAlg::P384 => {
                let s = p384::ecdsa::Signature::from_der(&sig.bytes).map_err(|e| bad(&e))?;
                Signature::try_from(s).map_err(|e| bad(&e))
            }
            KeyAlg::Rsa(_) => {
                let h = if sig.hash == HashAlg::Sha512 {
                    ssh_key::HashAlg::Sha512
                } else {
                    ssh_key::HashAlg::Sha256
                };
                Signature::new(Algorithm::Rsa { hash: Some(h) }, sig.bytes).map_err(|e| bad(&e))
            }
            KeyAlg::Ed25519 => Signature::new(Algorithm::Ed25519, sig.bytes).map_err(|e| bad(&e)),
        }
    }

    async fn add_identity(&mut self, _: AddIdentity) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn add_identity_constrained(
        &mut self,
        _: AddIdentityConstrained,
    ) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn remove_identity(&mut self, _: RemoveIdentity) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn remove_all_identities(&mut self) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn add_smartcard_key(&mut self, _: SmartcardKey) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn add_smartcard_key_constrained(
        &mut self,
        _: AddSmartcardKeyConstrained,
    ) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn remove_smartcard_key(&mut self, _: SmartcardKey) -> Result<(), AgentError> {
        Err(hardware_only())
    }

    async fn lock(&mut self, passphrase: String) -> Result<(), AgentError> {
        if self.store.lock(passphrase.as_bytes(), &self.caller) {
            Ok(())
        } else {
            Err(refused("the agent is already locked"))
        }
    }

    async fn unlock(&mut self, passphrase: String) -> Result<(), AgentError> {
        if self.store.unlock(passphrase.as_bytes(), &self.caller) {
            Ok(())
        } else {
            Err(refused("wrong passphrase, or the agent is not locked"))
        }
    }

    async fn extension(&mut self, extension: Extension) -> Result<Option<Extension>, AgentError> {
        if extension.name != "session-bind@openssh.com" {
            debug!(name = %extension.name, "ssh: unknown extension");
            return Err(AgentError::Failure);
        }
        // A bind the agent cannot read or verify may hide a forwarding: from then on
        // the connection counts as forwarded (keys with ssh_forwarding = false are
        // neither listed nor usable on it).
        let bind = match extension.parse_message::<SessionBind>() {
            Ok(Some(bind)) => bind,
            _ => {
                self.forwarded = true;
                warn!(
                    "ssh: malformed session-bind@openssh.com; the connection counts as forwarded"
                );
                return Err(AgentError::ExtensionFailure);
            }
        };
        if let Err(e) = bind.verify_signature() {
            self.forwarded = true;
            warn!(error = %e, "ssh: session-bind signature does not verify; refused, and the connection counts as forwarded");
            return Err(AgentError::ExtensionFailure);
        }
        if bind.is_forwarding {
            self.forwarded = true;
            info!(
                pid = self.caller.pid.unwrap_or(0),
                "ssh: connection bound for forwarding"
            );
        } else {
            debug!("ssh: connection bound for authentication");
        }
        Ok(None)
    }
}

fn hardware_only() -> AgentError {
    info!("ssh: refused to add or remove an identity: waxseal keys live in hardware");
    refused("waxseal keys live in hardware; create them with `waxseal keys generate`, not ssh-add")
}
