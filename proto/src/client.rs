//! A blocking client of `agent.sock`, used by the CLI and the KMS plug-in.
//!
//! Requests over one connection, answered in order; `hello` is exchanged on connect so
//! a version mismatch is reported before anything else. [`Client::call`] sends one
//! request and waits for its answer; [`Client::pipeline`] keeps up to a window of
//! requests in flight, which the protocol allows (docs/protocol.md, "Pipelining").

use std::collections::VecDeque;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::proto::{
    self, ApprovalInfo, ApprovalRef, ApprovalsOk, Approve, ApproveOk, Attest, AttestOk, AuditTail,
    AuditTailOk, Bytes, GenerateKey, GenerateKeyOk, HashAlg, Hello, HelloOk, ImportKey,
    ImportKeyOk, KeyAlg, KeyRef, ListKeysOk, Op, PcrSelection, PinPolicy, PinReply, PublicKeyOk,
    Purpose, Request, Response, ResponseError, RsaPadding, Sign, SignOk, StatusOk,
    StoreCertificate, StoreCertificateOk, TouchPolicy, Unlock, UnlockOk, WireError, MAX_FRAME,
    PROTOCOL_VERSION,
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
        Self::over(stream)
    }

    /// Exchanges `hello` over a stream already connected to an agent.
    pub fn over(stream: UnixStream) -> Result<Self, ClientError> {
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

    /// Sends requests while earlier ones are still being answered: up to `window` (at
    /// least 1) in flight on this connection. Each item of `ops` is a tag of the
    /// caller's (a file name, an index) and its request; the pipeline yields each tag
    /// with its answer, in the order of `ops`. Notices and PIN prompts go to the
    /// handlers, as with [`Client::call`]: a prompt comes before the answer it belongs to.
    ///
    /// `ops` is drawn lazily, in batches of about half a window, while the agent works
    /// on the requests already sent; the caller may do work there (hash a file).
    ///
    /// An answer with an error (`ClientError::Agent`), or a request too large to send,
    /// concerns its item only. When the connection breaks, the item being read gets the
    /// error, every item already sent gets one too, and the pipeline ends without
    /// drawing more from `ops`.
    ///
    /// It cannot deadlock: the client writes at most `window` requests (and about
    /// [`PIPELINE_BATCH_BYTES`] at a time) before reading, so the agent, which answers
    /// one request before reading the next, never has more than `window` answers unread
    /// in the socket's buffer while the client writes.
    pub fn pipeline<T, R, I>(&mut self, ops: I, window: usize) -> Pipeline<'_, T, I::IntoIter, R>
    where
        I: IntoIterator<Item = (T, Op)>,
        R: DeserializeOwned,
    {
        Pipeline {
            client: self,
            ops: ops.into_iter(),
            window: window.max(1),
            pending: VecDeque::new(),
            batch: Vec::new(),
            drawn_all: false,
            broken: None,
            answer: PhantomData,
        }
    }

    fn round_trip(&mut self, op: Op) -> Result<Response, ClientError> {
        let (id, frame) = self.frame(op)?;
        self.stream.write_all(&frame)?;
        self.answer(id)
    }

    /// The next request id and the framed request.
    fn frame(&mut self, op: Op) -> Result<(u64, Vec<u8>), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = Request { id, op }.to_json();
        if payload.len() > MAX_FRAME {
            return Err(ClientError::Protocol(format!(
                "request of {} bytes is over the {MAX_FRAME}-byte frame limit",
                payload.len()
            )));
        }
        Ok((id, proto::encode_frame(&payload)))
    }

    /// Reads the answer to request `id`, handling the notices and prompts before it.
    fn answer(&mut self, id: u64) -> Result<Response, ClientError> {
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
            id: None,
            pcrs: None,
            pcr_values: None,
        }))
    }

    /// `generate_key` on a TPM, bound to the PCRs of `pcrs`: to `values` (one per PCR,
    /// in the selection's order), or to the PCRs' current values when `None`.
    pub fn generate_key_pcrs(
        &mut self,
        key: &str,
        alg: KeyAlg,
        pcrs: PcrSelection,
        values: Option<Vec<Vec<u8>>>,
    ) -> Result<GenerateKeyOk, ClientError> {
        self.call(Op::GenerateKey(GenerateKey {
            key: key.into(),
            alg,
            touch: None,
            pin_policy: None,
            id: None,
            pcrs: Some(pcrs),
            pcr_values: values.map(|v| v.into_iter().map(Bytes).collect()),
        }))
    }

    /// `import_key`: brings a key made elsewhere into its device (docs/protocol.md).
    pub fn import_key(&mut self, req: ImportKey) -> Result<ImportKeyOk, ClientError> {
        self.call(Op::ImportKey(req))
    }

    /// `generate_key` on a PKCS#11 device with `id` as the new key pair's raw CKA_ID.
    pub fn generate_key_id(
        &mut self,
        key: &str,
        alg: KeyAlg,
        id: &[u8],
    ) -> Result<GenerateKeyOk, ClientError> {
        self.call(Op::GenerateKey(GenerateKey {
            key: key.into(),
            alg,
            touch: None,
            pin_policy: None,
            id: Some(Bytes(id.to_vec())),
            pcrs: None,
            pcr_values: None,
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

    /// `approve`: hands in an approver's armored SSH signature over the text of the
    /// pending request `approval` (docs/protocol.md, "Approvals").
    pub fn approve(&mut self, approval: &str, signature: &str) -> Result<ApproveOk, ClientError> {
        self.call(Op::Approve(Approve {
            approval: approval.into(),
            signature: signature.into(),
        }))
    }

    /// `approvals`: the requests waiting for approvals.
    pub fn approvals(&mut self) -> Result<ApprovalsOk, ClientError> {
        self.call(Op::Approvals)
    }

    /// `approval_show`: one pending request, with the exact text to sign.
    pub fn approval_show(&mut self, approval: &str) -> Result<ApprovalInfo, ClientError> {
        self.call(Op::ApprovalShow(ApprovalRef {
            approval: approval.into(),
        }))
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
            message: None,
            statement: None,
        }))
    }

    /// `sign` with purpose `digest` and a whole `message` (Ed25519 keys only: PureEdDSA
    /// signs the message itself, up to [`crate::proto::MAX_MESSAGE`] bytes).
    pub fn sign_message(&mut self, key: &str, message: &[u8]) -> Result<SignOk, ClientError> {
        self.call(Op::Sign(Sign {
            key: key.into(),
            purpose: Purpose::Digest,
            hash: None,
            digest: Bytes::default(),
            tbs: None,
            name: None,
            padding: None,
            message: Some(Bytes(message.to_vec())),
            statement: None,
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
            message: None,
            statement: None,
        }))
    }

    /// `sign` with purpose `attest`: the agent reads the in-toto `statement`, and
    /// signs the DSSE PAE of it (payload type [`crate::intoto::PAYLOAD_TYPE`]) with the
    /// key's hash.
    pub fn sign_statement(&mut self, key: &str, statement: &[u8]) -> Result<SignOk, ClientError> {
        self.call(Op::Sign(Sign {
            key: key.into(),
            purpose: Purpose::Attest,
            hash: None,
            digest: Bytes::default(),
            tbs: None,
            name: None,
            padding: None,
            message: None,
            statement: Some(Bytes(statement.to_vec())),
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
            message: None,
            statement: None,
        }))
    }

    /// `sign` with purpose `x509-crl`: the signature over a DER TBSCertList, made with
    /// the hash its signature algorithm names (RSA: PKCS#1 v1.5).
    pub fn sign_crl(&mut self, key: &str, tbs: &[u8]) -> Result<SignOk, ClientError> {
        self.call(Op::Sign(Sign {
            key: key.into(),
            purpose: Purpose::X509Crl,
            hash: None,
            digest: Bytes::default(),
            tbs: Some(Bytes(tbs.to_vec())),
            name: None,
            padding: None,
            message: None,
            statement: None,
        }))
    }

    /// `store_certificate`: `cert` (DER) stored on the device of `key` as object `id`
    /// (CKA_ID = the ASCII bytes of `id`).
    pub fn store_certificate(
        &mut self,
        key: &str,
        id: &str,
        label: Option<&str>,
        cert: &[u8],
    ) -> Result<StoreCertificateOk, ClientError> {
        self.call(Op::StoreCertificate(StoreCertificate {
            key: key.into(),
            object_id: Some(id.into()),
            id: None,
            label: label.map(Into::into),
            cert: Bytes(cert.to_vec()),
        }))
    }

    /// `store_certificate` with `id` as the raw CKA_ID bytes (not ASCII text).
    pub fn store_certificate_id(
        &mut self,
        key: &str,
        id: &[u8],
        label: Option<&str>,
        cert: &[u8],
    ) -> Result<StoreCertificateOk, ClientError> {
        self.call(Op::StoreCertificate(StoreCertificate {
            key: key.into(),
            object_id: None,
            id: Some(Bytes(id.to_vec())),
            label: label.map(Into::into),
            cert: Bytes(cert.to_vec()),
        }))
    }
}

/// How many bytes of requests a [`Pipeline`] writes at once, at most (a batch ends
/// with the frame that crosses it): far below a Unix socket's buffer, so that the
/// agent's answers to small requests never wait behind a large batch.
pub const PIPELINE_BATCH_BYTES: usize = 64 * 1024;

/// Requests in flight on one connection, answered in order: see [`Client::pipeline`].
/// An iterator of `(tag, answer)`.
pub struct Pipeline<'c, T, I, R> {
    client: &'c mut Client,
    ops: I,
    window: usize,
    /// Requests drawn and not yet yielded, oldest first.
    pending: VecDeque<Pending<T>>,
    /// Frames being gathered for one write.
    batch: Vec<u8>,
    /// `ops` has no more items.
    drawn_all: bool,
    /// What broke the connection, once it has.
    broken: Option<(io::ErrorKind, String)>,
    answer: PhantomData<fn() -> R>,
}

/// A request drawn from a pipeline's input.
enum Pending<T> {
    /// Written; its answer is awaited.
    Sent { id: u64, tag: T },
    /// Not sent (too large): its error is yielded in its turn.
    Unsent { tag: T, error: ClientError },
}

impl<T, I, R> std::fmt::Debug for Pipeline<'_, T, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("client", &self.client)
            .field("window", &self.window)
            .field("pending", &self.pending.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<T, I, R> Pipeline<'_, T, I, R>
where
    I: Iterator<Item = (T, Op)>,
{
    /// Draws requests and writes them in one batch once half the window or less is in
    /// flight, so that the agent has work queued while the client reads.
    fn refill(&mut self) {
        if self.drawn_all || self.broken.is_some() || self.pending.len() > self.window / 2 {
            return;
        }
        self.batch.clear();
        while self.pending.len() < self.window && self.batch.len() < PIPELINE_BATCH_BYTES {
            let Some((tag, op)) = self.ops.next() else {
                self.drawn_all = true;
                break;
            };
            match self.client.frame(op) {
                Ok((id, frame)) => {
                    self.batch.extend_from_slice(&frame);
                    self.pending.push_back(Pending::Sent { id, tag });
                }
                Err(error) => self.pending.push_back(Pending::Unsent { tag, error }),
            }
        }
        if self.batch.is_empty() {
            return;
        }
        if let Err(e) = self.client.stream.write_all(&self.batch) {
            self.broken = Some((e.kind(), e.to_string()));
        }
    }
}

impl<T, I, R> Iterator for Pipeline<'_, T, I, R>
where
    I: Iterator<Item = (T, Op)>,
    R: DeserializeOwned,
{
    type Item = (T, Result<R, ClientError>);

    fn next(&mut self) -> Option<Self::Item> {
        self.refill();
        let (id, tag) = match self.pending.pop_front()? {
            Pending::Unsent { tag, error } => return Some((tag, Err(error))),
            Pending::Sent { id, tag } => (id, tag),
        };
        if let Some((kind, text)) = &self.broken {
            let error = io::Error::new(*kind, format!("{text} (before this request was answered)"));
            return Some((tag, Err(ClientError::Io(error))));
        }
        match self.client.answer(id) {
            Ok(response) => Some((tag, response.into_result().map_err(ClientError::from))),
            Err(e) => {
                self.broken = Some(match &e {
                    ClientError::Io(io) => (io.kind(), io.to_string()),
                    other => (io::ErrorKind::InvalidData, other.to_string()),
                });
                Some((tag, Err(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::proto::{decode_request, encode_error, encode_notice, encode_ok, encode_prompt};
    use crate::proto::{ErrorCode, Sign};
    use crate::wire::FrameReader;

    const WINDOW: usize = 8;
    const REQUESTS: usize = 40;
    /// Requests the fake agent treats specially.
    const REFUSED: u64 = 5;
    const NOTICE: u64 = 12;
    const PROMPT: u64 = 20;

    fn sign_op(i: usize) -> Op {
        Op::Sign(Sign {
            key: if i as u64 == REFUSED {
                "hsm/refused"
            } else {
                "hsm/k"
            }
            .into(),
            purpose: Purpose::Blob,
            hash: Some(HashAlg::Sha256),
            digest: Bytes(vec![i as u8; 32]),
            tbs: None,
            name: Some(format!("file-{i}")),
            padding: None,
            message: None,
            statement: None,
        })
    }

    fn send(mut s: &UnixStream, payload: &[u8]) {
        s.write_all(&proto::encode_frame(payload)).unwrap();
    }

    /// The next request, waiting for it (a client that does not send it fails the
    /// test through the read timeout instead of hanging it).
    fn read_request(reader: &mut FrameReader, s: &UnixStream) -> Request {
        let frame = reader
            .read(s, Duration::ZERO, None)
            .expect("the client sent no further request");
        decode_request(frame).unwrap()
    }

    /// A fake agent on one end of a socket pair, strict about order: it answers the
    /// oldest request first, each with its digest reversed as the "signature". It
    /// waits for a whole window before the first answer (which a client that does not
    /// pipeline never sends) and returns the most requests it ever held unanswered.
    fn fake_agent(s: UnixStream, requests: usize, close_after: Option<usize>) -> usize {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reader = FrameReader::new();
        let hello = read_request(&mut reader, &s);
        let ok = HelloOk {
            version: PROTOCOL_VERSION,
            agent: "fake".into(),
        };
        send(&s, &encode_ok(hello.id, &ok));
        let mut queue: VecDeque<Request> = VecDeque::new();
        let mut most = 0;
        for answered in 0..requests {
            if close_after == Some(answered) {
                return most;
            }
            let want = if answered == 0 { WINDOW } else { 1 };
            while queue.len() < want {
                queue.push_back(read_request(&mut reader, &s));
            }
            // Whatever else the client has written already, without waiting for more.
            s.set_nonblocking(true).unwrap();
            while let Ok(frame) = reader.read(&s, Duration::ZERO, None) {
                queue.push_back(decode_request(frame).unwrap());
            }
            s.set_nonblocking(false).unwrap();
            most = most.max(queue.len());
            let req = queue.pop_front().unwrap();
            assert_eq!(req.id, answered as u64 + 1, "requests arrive in order");
            let Op::Sign(sign) = req.op else {
                panic!("expected sign, got {:?}", req.op)
            };
            let n = req.id - 1;
            if n == NOTICE {
                send(&s, &encode_notice(req.id, "touch the device"));
            }
            if n == PROMPT {
                send(&s, &encode_prompt(req.id, "PIN: "));
                // Requests sent ahead of the PIN reply wait their turn.
                loop {
                    let frame = reader.read(&s, Duration::ZERO, None).unwrap();
                    if let Ok((id, reply)) = PinReply::decode(frame) {
                        assert_eq!(id, req.id);
                        assert!(reply == PinReply::Pin(Zeroizing::new("1234".into())));
                        break;
                    }
                    queue.push_back(decode_request(frame).unwrap());
                }
            }
            let answer = if n == REFUSED {
                encode_error(
                    Some(req.id),
                    &WireError::new(ErrorCode::PolicyDenied, "refused by the fake agent"),
                )
            } else {
                let mut signature = sign.digest.0.clone();
                signature.reverse();
                let ok = SignOk {
                    signature: Bytes(signature),
                    alg: "fake".into(),
                };
                encode_ok(req.id, &ok)
            };
            send(&s, &answer);
        }
        most
    }

    #[test]
    fn pipeline_answers_in_order_within_the_window_with_notices_and_prompts() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || fake_agent(theirs, REQUESTS, None));
        let mut client = Client::over(ours).unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let notices = Arc::clone(&log);
        client.on_notice(Box::new(move |n| {
            notices.lock().unwrap().push(format!("notice {n}"))
        }));
        let prompts = Arc::clone(&log);
        client.on_prompt(Box::new(move |q| {
            prompts.lock().unwrap().push(format!("prompt {q}"));
            Some(Zeroizing::new("1234".into()))
        }));
        let ops = (0..REQUESTS).map(|i| (i, sign_op(i)));
        let mut seen = Vec::new();
        for (i, result) in client.pipeline::<_, SignOk, _>(ops, WINDOW) {
            log.lock().unwrap().push(format!("answer {i}"));
            seen.push(i);
            if i as u64 == REFUSED {
                match result {
                    Err(ClientError::Agent(e)) => assert_eq!(e.code, ErrorCode::PolicyDenied),
                    other => panic!("request {i}: expected a refusal, got {other:?}"),
                }
                continue;
            }
            let mut expected = vec![i as u8; 32];
            expected.reverse();
            assert_eq!(result.unwrap().signature.0, expected, "answer {i}");
        }
        assert_eq!(seen, (0..REQUESTS).collect::<Vec<_>>());
        let most = agent.join().unwrap();
        assert_eq!(
            most, WINDOW,
            "the agent held {most} unanswered requests; the window is {WINDOW}"
        );
        let log = log.lock().unwrap();
        let at = |entry: &str| log.iter().position(|e| e == entry).unwrap();
        assert_eq!(
            at("notice touch the device") + 1,
            at(&format!("answer {NOTICE}"))
        );
        assert_eq!(at("prompt PIN: ") + 1, at(&format!("answer {PROMPT}")));
    }

    #[test]
    fn pipeline_ends_when_the_connection_breaks() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || fake_agent(theirs, REQUESTS, Some(3)));
        let mut client = Client::over(ours).unwrap();
        let drawn = Arc::new(Mutex::new(0usize));
        let counter = Arc::clone(&drawn);
        let ops = (0..REQUESTS).map(move |i| {
            *counter.lock().unwrap() += 1;
            (i, sign_op(i))
        });
        let results: Vec<_> = client.pipeline::<_, SignOk, _>(ops, WINDOW).collect();
        agent.join().unwrap();
        let drawn = *drawn.lock().unwrap();
        assert!(
            drawn < REQUESTS,
            "drew {drawn} requests from a broken pipeline"
        );
        assert_eq!(results.len(), drawn, "every request drawn is answered once");
        for (n, (i, result)) in results.iter().enumerate() {
            assert_eq!(*i, n);
            match (n, result) {
                (0..=2, Ok(_)) => {}
                (3.., Err(ClientError::Io(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
