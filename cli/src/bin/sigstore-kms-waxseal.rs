//! `sigstore-kms-waxseal`: the KMS plug-in through which cosign, Fulcio and anything
//! else built on sigstore/sigstore use waxseal keys, with key references of the form
//! `waxseal://DEVICE/LABEL` (e.g. `cosign sign-blob --key waxseal://hsm/release`).
//!
//! # The protocol (sigstore `pkg/signature/kms/cliplugin`, protocol `v1`)
//!
//! sigstore runs this program once per method call, as
//!
//! ```text
//! sigstore-kms-waxseal v1 '<JSON PluginArgs>'
//! ```
//!
//! - `argv[1]` is the protocol version, exactly `v1` (`common.ProtocolVersion`). Any
//!   other value is refused with an `errorMessage`.
//! - `argv[2]` is one JSON object: `initOptions` (`protocolVersion`, `keyResourceID`,
//!   `hashFunc`, `ctxDeadline`, `rpcOptions`), `methodName`, and an object named after
//!   the method with its arguments.
//! - stdin carries the message for `signMessage` and `verifySignature` (empty when the
//!   caller gave a digest, as Go's `crypto.Signer` wrapper does).
//! - stdout carries exactly one JSON object, the `PluginResp`: the method's result
//!   under the method's name, or `errorMessage`. sigstore ignores the exit status
//!   (this program exits 1 after an error, for people running it by hand);
//!   diagnostics go to stderr, which sigstore passes through.
//!
//! The methods, with their results:
//!
//! | `methodName` | arguments | result |
//! |---|---|---|
//! | `defaultAlgorithm` | — | `{"defaultAlgorithm":"ecdsa-sha2-256-nistp256"}` |
//! | `supportedAlgorithms` | — | `{"supportedAlgorithms":[…]}` |
//! | `createKey` | `algorithm` | `{"publicKeyPEM":"<base64 of the PEM>"}` |
//! | `publicKey` | `publicKeyOptions.rpcOptions` | `{"publicKeyPEM":"<base64 of the PEM>"}` |
//! | `signMessage` | `signOptions.messageOptions.{digest,hashFunc}`, message on stdin | `{"signature":"<base64>"}` |
//! | `verifySignature` | `signature`, `verifyOptions.messageOptions.{digest,hashFunc}`, message on stdin | `{}` |
//!
//! `CryptoSigner` is not a protocol method: sigstore wraps `signMessage` (with the
//! digest in `messageOptions`) and `publicKey` itself.
//!
//! Encodings follow Go's `encoding/json`: byte strings (`digest`, `signature`,
//! `publicKeyPEM`) are standard base64 with padding, and hash functions are Go's
//! `crypto.Hash` numbers (5 SHA-256, 6 SHA-384, 7 SHA-512; 0 none).
//!
//! # Keys and signatures
//!
//! `keyResourceID` is what follows `waxseal://` in the user's reference (sigstore strips
//! the scheme), so `hsm/release`; a full `waxseal://hsm/release` is accepted as well.
//! Everything goes through `waxseal-agent` on `$WAXSEAL_SOCK`, or the default socket.
//!
//! The hash of a signature is, in order: `messageOptions.hashFunc`; else
//! `initOptions.hashFunc` (cosign passes SHA-256 when it loads a KMS key), as long as
//! it fits the length of a given digest; else, for a digest, the hash of its length;
//! else the key's own (SHA-384 for P-384, SHA-256 otherwise). ECDSA signatures are DER,
//! RSA signatures PKCS#1 v1.5. A digest is signed with purpose `digest`; a message
//! from stdin is hashed here and signed with purpose `blob`, named
//! `sigstore-kms-waxseal message` in the agent's audit log.
//!
//! Ed25519 keys are not offered: sigstore signs the whole message with them (PureEdDSA),
//! while the agent signs only 32-, 48- or 64-byte inputs with Ed25519 keys.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha384, Sha512};
use waxseal::kms::{
    choose_hash, Call, Message, Method, PluginResp, PublicKeyResp, SignMessageResp,
    VerifySignatureResp,
};
use waxseal::verify::AnyPublicKey;
use waxseal_proto::client::{Client, ClientError};
use waxseal_proto::paths;
use waxseal_proto::proto::{ErrorCode, HashAlg, KeyAlg, PublicKeyOk, RsaPadding};

/// The artifact name recorded by the agent for messages hashed here.
const BLOB_NAME: &str = "sigstore-kms-waxseal message";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let response = match respond(&args, &mut io::stdin().lock()) {
        Ok(r) => r,
        Err(e) => PluginResp {
            error_message: format!("{e:#}"),
            ..PluginResp::default()
        },
    };
    let failed = !response.error_message.is_empty();
    // A struct of strings and options always serialises.
    let mut json = serde_json::to_vec(&response).unwrap_or_default();
    json.push(b'\n');
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_all(&json).and_then(|()| stdout.flush()) {
        eprintln!("sigstore-kms-waxseal: cannot write the response to stdout: {e}");
        return ExitCode::FAILURE;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Decodes the command line (`waxseal::kms`) and runs the method it names.
fn respond(args: &[OsString], stdin: &mut dyn Read) -> Result<PluginResp> {
    let call = Call::from_args(args)?;
    if let Some(resp) = PluginResp::without_agent(&call.method) {
        return Ok(resp);
    }
    let mut agent = Agent::new(&call)?;
    let mut resp = PluginResp::default();
    match call.method {
        Method::DefaultAlgorithm | Method::SupportedAlgorithms => {}
        Method::CreateKey { algorithm, alg } => {
            resp.create_key = Some(agent.create_key(&algorithm, alg).context("createKey")?);
        }
        Method::PublicKey => {
            let key = agent.public_key().context("publicKey")?;
            resp.public_key = Some(PublicKeyResp {
                public_key_pem: B64.encode(key.pem.as_bytes()),
            });
        }
        Method::SignMessage(message) => {
            let signature = agent.sign(message, stdin).context("signMessage")?;
            resp.sign_message = Some(SignMessageResp {
                signature: B64.encode(signature),
            });
        }
        Method::VerifySignature { signature, message } => {
            agent
                .verify(&signature, message, stdin)
                .context("verifySignature")?;
            resp.verify_signature = Some(VerifySignatureResp {});
        }
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------
// Work with the agent

/// A connection to the agent for one key.
struct Agent {
    client: Client,
    socket: PathBuf,
    key: String,
    /// `initOptions.hashFunc`.
    init_hash: Option<u64>,
}

impl Agent {
    /// Connects, for the call's key.
    fn new(call: &Call) -> Result<Agent> {
        let Some(key) = call.key.clone() else {
            bail!("no key named: the key reference is waxseal://DEVICE/LABEL, e.g. waxseal://hsm/release");
        };
        let socket = paths::client_socket();
        let mut client =
            Client::connect(&socket).map_err(|e| explain(e, &socket, &key, "connect"))?;
        // sigstore passes the plug-in's stderr through to the user.
        client.on_notice(Box::new(|n| eprintln!("sigstore-kms-waxseal: {n}")));
        Ok(Agent {
            client,
            socket,
            key,
            init_hash: call.init_hash,
        })
    }

    fn fail(&self, e: ClientError, doing: &str) -> anyhow::Error {
        explain(e, &self.socket, &self.key, doing)
    }

    fn public_key(&mut self) -> Result<PublicKeyOk> {
        let key = self.key.clone();
        self.client
            .public_key(&key)
            .map_err(|e| self.fail(e, "reading the public key"))
    }

    /// Generates the key (`algorithm` is the sigstore name of `alg`), or returns the
    /// existing key of that name.
    fn create_key(&mut self, algorithm: &str, alg: KeyAlg) -> Result<PublicKeyResp> {
        let key = self.key.clone();
        let pem = match self.client.generate_key(&key, alg) {
            Ok(made) => made.pem,
            Err(ClientError::Agent(e)) if e.code == ErrorCode::KeyExists => {
                // sigstore's KMS providers answer CreateKey for an existing key with its
                // public key, so that `cosign generate-key-pair --kms` can be re-run.
                let existing = self.public_key()?;
                if existing.alg != alg {
                    eprintln!(
                        "sigstore-kms-waxseal: {key} already exists as a {} key; returning it rather than a new {algorithm} key",
                        existing.alg
                    );
                }
                existing.pem
            }
            Err(e) => return Err(self.fail(e, &format!("generating a {alg} key"))),
        };
        Ok(PublicKeyResp {
            public_key_pem: B64.encode(pem.as_bytes()),
        })
    }

    /// `signMessage`: the signature over the given digest, or over the digest of stdin.
    fn sign(&mut self, opts: Message, stdin: &mut dyn Read) -> Result<Vec<u8>> {
        let digest = opts.digest;
        let public = self.public_key()?;
        if public.alg == KeyAlg::Ed25519 {
            bail!(
                "{} is an Ed25519 key, which sigstore uses to sign whole messages, and the agent signs only 32-, 48- or 64-byte inputs with Ed25519 keys. Use a P-256, P-384 or RSA key",
                self.key
            );
        }
        let hash = choose_hash(
            opts.hash_func,
            self.init_hash,
            digest.as_ref().map(Vec::len),
            public.alg,
        )?;
        let key = self.key.clone();
        let (digest, signed) = match digest {
            Some(d) => {
                let padding = matches!(public.alg, KeyAlg::Rsa(_)).then_some(RsaPadding::Pkcs1);
                let signed = self.client.sign_digest(&key, &d, Some(hash), padding);
                (d, signed)
            }
            None => {
                let d = hash_reader(stdin, hash).context("cannot read the message from stdin")?;
                let signed = self.client.sign_blob(&key, BLOB_NAME, &d, hash);
                (d, signed)
            }
        };
        let signature = signed.map_err(|e| self.fail(e, "signing"))?.signature.0;
        // Check the device's work before handing it on: a bad signature found here
        // names the key; found by a verifier much later, it names nothing.
        AnyPublicKey::from_spki(&public.spki_der.0)
            .and_then(|k| k.verify_digest(&digest, hash, &signature, false))
            .with_context(|| {
                format!("the agent's signature with {key} does not verify against its public key")
            })?;
        Ok(signature)
    }

    /// `verifySignature`: checks `signature` here, against the key's public key.
    fn verify(&mut self, signature: &[u8], opts: Message, stdin: &mut dyn Read) -> Result<()> {
        let digest = opts.digest;
        let public = self.public_key()?;
        let key = AnyPublicKey::from_spki(&public.spki_der.0)
            .with_context(|| format!("cannot use the public key of {}", self.key))?;
        let result = match (&key, digest) {
            (AnyPublicKey::Ed25519(_), Some(d)) => {
                key.verify_digest(&d, HashAlg::Sha512, signature, false)
            }
            (AnyPublicKey::Ed25519(_), None) => {
                // PureEdDSA: the whole message is what was signed.
                let mut message = Vec::new();
                stdin
                    .read_to_end(&mut message)
                    .context("cannot read the message from stdin")?;
                key.verify_digest(&message, HashAlg::Sha512, signature, false)
            }
            (_, Some(d)) => {
                let hash = choose_hash(opts.hash_func, self.init_hash, Some(d.len()), public.alg)?;
                key.verify_digest(&d, hash, signature, false)
            }
            (_, None) => {
                let hash = choose_hash(opts.hash_func, self.init_hash, None, public.alg)?;
                let d = hash_reader(stdin, hash).context("cannot read the message from stdin")?;
                key.verify_digest(&d, hash, signature, false)
            }
        };
        result
            .map(|_| ())
            .with_context(|| format!("the signature does not match {}'s public key", self.key))
    }
}

/// Hashes everything `input` gives.
fn hash_reader(input: &mut dyn Read, hash: HashAlg) -> io::Result<Vec<u8>> {
    fn run<D: Digest>(input: &mut dyn Read) -> io::Result<Vec<u8>> {
        let mut hasher = D::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) => return Ok(hasher.finalize().to_vec()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    match hash {
        HashAlg::Sha256 => run::<Sha256>(input),
        HashAlg::Sha384 => run::<Sha384>(input),
        HashAlg::Sha512 => run::<Sha512>(input),
    }
}

/// An agent failure as an `errorMessage`: what failed and what to do.
fn explain(e: ClientError, socket: &Path, key: &str, doing: &str) -> anyhow::Error {
    match e {
        ClientError::Connect { path, error } => anyhow!(
            "cannot connect to waxseal-agent at {}: {error}. Start the agent (`waxseal-agent`), or set WAXSEAL_SOCK to the socket it listens on",
            path.display()
        ),
        ClientError::Agent(w) if w.code == ErrorCode::UnknownKey => anyhow!(
            "waxseal-agent has no key `{key}` ({}). `waxseal keys list` shows the keys; name one as waxseal://DEVICE/LABEL, e.g. waxseal://hsm/release",
            w.message
        ),
        ClientError::Agent(w) => anyhow!("{doing} with {key} failed: {}: {}", w.code, w.message),
        ClientError::Io(io) => anyhow!(
            "lost the connection to waxseal-agent at {} while {doing} with {key}: {io}. See the agent's log",
            socket.display()
        ),
        ClientError::Protocol(msg) => anyhow!(
            "waxseal-agent at {} answered unexpectedly while {doing} with {key}: {msg}. Use matching waxseal and waxseal-agent versions",
            socket.display()
        ),
    }
}
