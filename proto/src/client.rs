//! A blocking client of `agent.sock`, used by the CLI and the KMS plug-in.
//!
//! One request at a time over one connection; `hello` is exchanged on connect so a
//! version mismatch is reported before anything else.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::proto::{
    self, Attest, AttestOk, AuditTail, AuditTailOk, Bytes, GenerateKey, GenerateKeyOk, HashAlg,
    Hello, HelloOk, KeyAlg, KeyRef, ListKeysOk, Op, PinPolicy, PinReply, PublicKeyOk, Purpose,
    Request, Response, ResponseError, RsaPadding, Sign, SignOk, StatusOk, StoreCertificate,
    StoreCertificateOk, TouchPolicy, Unlock, UnlockOk, WireError, MAX_FRAME, PROTOCOL_VERSION,
};
use crate::wire::{FrameReader, ReadError};
use zeroize::Zeroizing;

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens on the socket.
    #[error("cannot connect to the agent at {path}: {error}. Is waxseal-agent running? (start it with `waxseal-agent`, or try `waxseal demo`; a different socket is chosen with --socket or WAXSEAL_SOCK)")]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The connection broke mid-exchange.
    #[error("lost the connection to the agent: {0}")]
    Io(#[from] io::Error),
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(WireError),
    /// The agent's answer made no sense.
    #[error("{0}")]
    Protocol(String),
}

impl From<ResponseError> for ClientError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::Agent(w) => ClientError::Agent(w),
            ResponseError::Shape(s) => ClientError::Protocol(s),
        }
    }
}

/// What a client does with a notice (e.g. "touch your YubiKey") the agent sends while
/// a request is in progress.
pub type NoticeHandler = Box<dyn FnMut(&str) + Send>;

/// How a client answers the agent's PIN prompt (`pin = "prompt"`): the PIN, or `None`
/// to cancel.
pub type PromptHandler = Box<dyn FnMut(&str) -> Option<Zeroizing<String>> + Send>;

/// A connection to the agent.
pub struct Client {
    stream: UnixStream,
    next_id: u64,
    agent: String,
    reader: FrameReader,
    spin: Duration,
    on_notice: Option<NoticeHandler>,
    on_prompt: Option<PromptHandler>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("stream", &self.stream)
            .field("next_id", &self.next_id)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// How long the client polls for a response before sleeping: a software token signs
/// in well under this; slower devices are waited for asleep (see [`crate::wire`]).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(250);

impl Client {
    /// Connects to `path` and exchanges `hello`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|error| ClientError::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        let mut client = Client {
            stream,
            next_id: 0,
            agent: String::new(),
            reader: FrameReader::new(),
            spin: DEFAULT_SPIN,
            on_notice: None,
            on_prompt: None,
        };
        let hello: HelloOk = client.call(Op::Hello(Hello {
            version: PROTOCOL_VERSION,
        }))?;
        if hello.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "the agent speaks protocol version {} and this client version {PROTOCOL_VERSION}; use matching waxseal and waxseal-agent",
                hello.version
            )));
        }
        client.agent = hello.agent;
        Ok(client)
    }

    /// Sets a read/write timeout on the connection (none by default: a touch or PIN
    /// prompt may take a while).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Sets how long to poll for a response before sleeping (zero: never poll).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Shows the agent's notices (ignored without a handler).
    pub fn on_notice(&mut self, handler: NoticeHandler) {
        self.on_notice = Some(handler);
    }

    /// Answers the agent's PIN prompts (without a handler they are cancelled).
    pub fn on_prompt(&mut self, handler: PromptHandler) {
        self.on_prompt = Some(handler);
    }

    /// The agent's self-description from `hello`.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Sends one request and waits for its response.
    pub fn call<T: DeserializeOwned>(&mut self, op: Op) -> Result<T, ClientError> {
        let response = self.round_trip(op)?;
        Ok(response.into_result()?)
    }

    fn round_trip(&mut self, op: Op) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = Request { id, op }.to_json();
        if payload.len() > MAX_FRAME {
            return Err(ClientError::Protocol(format!(
                "request of {} bytes is over the {MAX_FRAME}-byte frame limit",
                payload.len()
            )));
        }
        self.stream.write_all(&proto::encode_frame(&payload))?;
        loop {
            let response = self.read_response(id)?;
            if let Some(notice) = &response.notice {
                if let Some(handler) = self.on_notice.as_mut() {
                    handler(notice);
                }
                continue;
            }
            if let Some(prompt) = &response.prompt {
                let pin = self.on_prompt.as_mut().and_then(|h| h(prompt));
                let reply = match pin {
                    Some(p) => PinReply::Pin(p),
                    None => PinReply::Cancel,
                }
                .encode(id);
                let framed = Zeroizing::new(proto::encode_frame(&reply));
                self.stream.write_all(&framed)?;
                continue;
            }
            return Ok(response);
        }
    }

    /// Reads the next frame answering request `id`: a notice or the response.
    fn read_response(&mut self, id: u64) -> Result<Response, ClientError> {
        let payload = match self.reader.read(&self.stream, self.spin, None) {
            Ok(p) => p,
            Err(ReadError::Closed) => {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()))
            }
            Err(ReadError::Idle) => return Err(ClientError::Io(io::ErrorKind::TimedOut.into())),
            Err(ReadError::TooLarge(len)) => {
                return Err(ClientError::Protocol(format!(
                    "agent announced a {len}-byte response, over the frame limit"
                )))
            }
            Err(ReadError::Broken(e)) => return Err(ClientError::Io(e)),
            // The client reads without a peer check; kept for completeness.
            Err(ReadError::Foreign(_)) => {
                return Err(ClientError::Protocol(
                    "bytes from an unexpected sender on the agent's socket".into(),
                ))
            }
        };
        let response = Response::decode(payload).map_err(ClientError::Protocol)?;
        if response.id.is_some_and(|rid| rid != id) {
            return Err(ClientError::Protocol(format!(
                "agent answered request {} while {id} was pending",
                response.id.unwrap_or_default()
            )));
        }
        Ok(response)
    }

    /// `status`.
    pub fn status(&mut self) -> Result<StatusOk, ClientError> {
        self.call(Op::Status)
    }

    /// `list_keys`.
    pub fn list_keys(&mut self) -> Result<ListKeysOk, ClientError> {
        self.call(Op::ListKeys)
    }

    /// `public_key`.
    pub fn public_key(&mut self, key: &str) -> Result<PublicKeyOk, ClientError> {
        self.call(Op::PublicKey(KeyRef { key: key.into() }))
    }

    /// `generate_key`.
    pub fn generate_key(&mut self, key: &str, alg: KeyAlg) -> Result<GenerateKeyOk, ClientError> {
        self.generate_key_with(key, alg, None, None)
    }

    /// `generate_key` with a YubiKey's touch and PIN policies.
    pub fn generate_key_with(
        &mut self,
        key: &str,
        alg: KeyAlg,
        touch: Option<TouchPolicy>,
        pin_policy: Option<PinPolicy>,
    ) -> Result<GenerateKeyOk, ClientError> {
        self.call(Op::GenerateKey(GenerateKey {
            key: key.into(),
            alg,
            touch,
            pin_policy,
        }))
    }

    /// `unlock`: with a device, the user's go-ahead to try its PIN again; without,
    /// ends a `lock`.
    pub fn unlock(&mut self, device: Option<&str>) -> Result<UnlockOk, ClientError> {
        self.call(Op::Unlock(Unlock {
            device: device.map(Into::into),
        }))
    }

    /// `audit_tail`: the last `n` audit records.
    pub fn audit_tail(&mut self, n: Option<u32>) -> Result<AuditTailOk, ClientError> {
        self.call(Op::AuditTail(AuditTail { n }))
    }

    /// `lock`: drop cached PINs and refuse signing until `unlock`.
    pub fn lock(&mut self) -> Result<UnlockOk, ClientError> {
        self.call(Op::Lock)
    }

    /// `attest`: the device's evidence for `key`, bound to `nonce` (random if `None`).
    pub fn attest(&mut self, key: &str, nonce: Option<&[u8]>) -> Result<AttestOk, ClientError> {
        self.call(Op::Attest(Attest {
            key: key.into(),
            nonce: nonce.map(|n| Bytes(n.to_vec())),
        }))
    }

    /// `sign` with purpose `digest`.
    pub fn sign_digest(
        &mut self,
        key: &str,
        digest: &[u8],
        hash: Option<HashAlg>,
        padding: Option<RsaPadding>,
    ) -> Result<SignOk, ClientError> {
        self.call(Op::Sign(Sign {
            key: key.into(),
            purpose: Purpose::Digest,
            hash,
            digest: Bytes(digest.to_vec()),
            tbs: None,
            name: None,
            padding,
        }))
    }

    /// `sign` with purpose `blob`: the digest of the artifact called `name`.
    pub fn sign_blob(
        &mut self,
        key: &str,
        name: &str,
        digest: &[u8],
        hash: HashAlg,
    ) -> Result<SignOk, ClientError> {
        self.call(Op::Sign(Sign {
            key: key.into(),
            purpose: Purpose::Blob,
            hash: Some(hash),
            digest: Bytes(digest.to_vec()),
            tbs: None,
            name: Some(name.into()),
            padding: None,
        }))
    }

    /// `sign` with purpose `x509-tbs`: the signature over a DER TBSCertificate, made with
    /// the hash its signature algorithm names (RSA: PKCS#1 v1.5).
    pub fn sign_tbs(&mut self, key: &str, tbs: &[u8]) -> Result<SignOk, ClientError> {
        self.call(Op::Sign(Sign {
            key: key.into(),
            purpose: Purpose::X509Tbs,
            hash: None,
            digest: Bytes::default(),
            tbs: Some(Bytes(tbs.to_vec())),
            name: None,
            padding: None,
        }))
    }

    /// `store_certificate`: `cert` (DER) stored on the device of `key` as object `id`.
    pub fn store_certificate(
        &mut self,
        key: &str,
        id: &str,
        label: Option<&str>,
        cert: &[u8],
    ) -> Result<StoreCertificateOk, ClientError> {
        self.call(Op::StoreCertificate(StoreCertificate {
            key: key.into(),
            object_id: id.into(),
            label: label.map(Into::into),
            cert: Bytes(cert.to_vec()),
        }))
    }
}
