//! ssh.sock: waxseal's own SSH agent session handler
//! (`waxseal_agent::server::ssh::SshSession`, which `connection` in
//! `agent/src/server/ssh.rs` runs for every message), driven with a sequence of
//! messages as a client writes them: each a 4-byte big-endian length and a body. The
//! session's store has no devices, so every answer is known in advance; a model of the
//! connection (locked with which passphrase, bound for forwarding or not) says which.
//!
//! - never panics (a panic would kill the connection's thread);
//! - every response is framed as `connection` writes it (its length, then exactly one
//!   message that decodes to the response);
//! - a message that does not decode gets `SSH_AGENT_FAILURE`; identities are an empty
//!   list; a signature, and adding or removing a key, fail; `lock` succeeds exactly when
//!   the agent is not locked, `unlock` exactly with the lock's passphrase;
//!   `session-bind@openssh.com` succeeds exactly when its host signature verifies, and
//!   any other extension fails;
//! - the connection counts as forwarded from the first bind that asks for forwarding or
//!   that does not parse or verify, and stays so.
//!
//! A wrong `unlock` costs the agent a second (against guessing), so the target skips
//! an `unlock` that the model says would be refused: it would only make the fuzzer slow.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::proto::{Request, Response};
use ssh_encoding::Decode;
use waxseal_agent::config::Config;
use waxseal_agent::keystore::KeyStore;
use waxseal_agent::policy::Caller;
use waxseal_agent::server::ssh::{encode_response, SshSession, MAX_MESSAGE};

/// What the connection should be like after the messages so far.
#[derive(Default)]
struct Model {
    /// The passphrase the agent is locked with.
    locked: Option<String>,
    /// Bound for forwarding.
    forwarded: bool,
}

impl Model {
    /// The response `body` should get, and the model after it; `None` for a message the
    /// target skips.
    fn expect(&mut self, body: &[u8]) -> Option<Response> {
        let Ok(request) = Request::decode(&mut &body[..]) else {
            return Some(Response::Failure);
        };
        Some(match request {
            Request::RequestIdentities => Response::IdentitiesAnswer(Vec::new()),
            Request::SignRequest(_)
            | Request::AddIdentity(_)
            | Request::AddIdConstrained(_)
            | Request::RemoveIdentity(_)
            | Request::RemoveAllIdentities
            | Request::AddSmartcardKey(_)
            | Request::AddSmartcardKeyConstrained(_)
            | Request::RemoveSmartcardKey(_) => Response::Failure,
            Request::Lock(passphrase) => {
                if self.locked.is_some() {
                    Response::Failure
                } else {
                    self.locked = Some(passphrase);
                    Response::Success
                }
            }
            Request::Unlock(passphrase) => {
                if self.locked.as_ref() != Some(&passphrase) {
                    return None;
                }
                self.locked = None;
                Response::Success
            }
            Request::Extension(ext) if ext.name == "session-bind@openssh.com" => {
                match ext.parse_message::<SessionBind>() {
                    Ok(Some(bind)) if bind.verify_signature().is_ok() => {
                        self.forwarded |= bind.is_forwarding;
                        Response::Success
                    }
                    _ => {
                        self.forwarded = true;
                        Response::ExtensionFailure
                    }
                }
            }
            Request::Extension(_) => Response::Failure,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(KeyStore::open(&Config::default()));
    let caller = Caller {
        uid: 1000,
        pid: Some(4242),
        exe: None,
        process: None,
        early: false,
    };
    let mut session = SshSession::new(store, caller);
    let mut model = Model::default();
    let mut rest = data;
    // Messages as `connection` reads them; it refuses a length over MAX_MESSAGE before
    // reading the body, and waits for the rest of an incomplete one.
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        if len > MAX_MESSAGE || len > tail.len() {
            break;
        }
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let Some(expected) = model.expect(body) else {
            continue;
        };
        let response = session.answer(body);
        let wire = encode_response(&response);
        let (prefix, message) = wire.split_at(4);
        // `split_at(4)` made `prefix` four bytes: the conversion cannot fail.
        assert_eq!(
            u32::from_be_bytes(prefix.try_into().unwrap()) as usize,
            message.len(),
            "the length prefix of {response:?}"
        );
        let mut reader = message;
        let decoded = Response::decode(&mut reader)
            .unwrap_or_else(|e| panic!("{response:?} was written as {message:02x?}: {e:?}"));
        assert!(reader.is_empty(), "bytes after {response:?}");
        assert_eq!(
            decoded, response,
            "the written response reads back otherwise"
        );
        assert_eq!(response, expected, "the answer to {body:02x?}");
        assert_eq!(
            session.forwarded(),
            model.forwarded,
            "forwarding after {body:02x?}"
        );
    }
});
