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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};
use waxseal::verify::AnyPublicKey;
use waxseal_agent::client::{Client, ClientError};
use waxseal_agent::keyuri::KeyName;
use waxseal_agent::paths;
use waxseal_agent::proto::{ErrorCode, HashAlg, KeyAlg, PublicKeyOk, RsaPadding};

/// The only protocol version sigstore sends today (`common.ProtocolVersion`).
const PROTOCOL_VERSION: &str = "v1";
/// The scheme of waxseal key references; sigstore runs `sigstore-kms-<scheme>`.
const SCHEME: &str = "waxseal";
/// The artifact name recorded by the agent for messages hashed here.
const BLOB_NAME: &str = "sigstore-kms-waxseal message";
/// How the program is meant to be run, for refusals of a malformed command line.
const USAGE: &str = "sigstore-kms-waxseal is run by cosign and other sigstore tools as `sigstore-kms-waxseal v1 '<JSON arguments>'` for keys named waxseal://DEVICE/LABEL";

/// The algorithm `createKey` gets from cosign when none is asked for.
const DEFAULT_ALGORITHM: &str = "ecdsa-sha2-256-nistp256";

/// The algorithms `createKey` makes, by their sigstore names, with the agent's word.
const ALGORITHMS: [(&str, KeyAlg); 5] = [
    ("ecdsa-sha2-256-nistp256", KeyAlg::P256),
    ("ecdsa-sha2-384-nistp384", KeyAlg::P384),
    ("rsa-sign-pkcs1-2048-sha256", KeyAlg::Rsa(2048)),
    ("rsa-sign-pkcs1-3072-sha256", KeyAlg::Rsa(3072)),
    ("rsa-sign-pkcs1-4096-sha256", KeyAlg::Rsa(4096)),
];

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

// ---------------------------------------------------------------------------------
// The JSON of the protocol. Unknown members are ignored, and every member may be
// missing or `null` (Go writes `null` for a nil slice or pointer).

/// `common.PluginArgs`: `argv[2]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PluginArgs {
    init_options: Option<InitOptions>,
    method_name: Option<String>,
    create_key: Option<CreateKeyArgs>,
    public_key: Option<PublicKeyArgs>,
    sign_message: Option<SignMessageArgs>,
    verify_signature: Option<VerifySignatureArgs>,
}

/// `common.InitOptions`: what `LoadSignerVerifier` was given.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InitOptions {
    protocol_version: Option<String>,
    #[serde(rename = "keyResourceID")]
    key_resource_id: Option<String>,
    hash_func: Option<u64>,
    rpc_options: Option<RpcOptions>,
}

/// `common.RPCOptions`. `ctxDeadline` is enforced by sigstore, which kills the plug-in
/// when it passes; `remoteVerification` makes no difference here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RpcOptions {
    key_version: Option<String>,
}

/// `common.CreateKeyArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct CreateKeyArgs {
    algorithm: Option<String>,
}

/// `common.PublicKeyArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PublicKeyArgs {
    public_key_options: Option<PublicKeyOptions>,
}

/// `common.PublicKeyOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PublicKeyOptions {
    rpc_options: Option<RpcOptions>,
}

/// `common.SignMessageArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct SignMessageArgs {
    sign_options: Option<MessageCallOptions>,
}

/// `common.VerifySignatureArgs`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct VerifySignatureArgs {
    signature: Option<String>,
    verify_options: Option<MessageCallOptions>,
}

/// `common.SignOptions` and `common.VerifyOptions`, which have the same shape.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MessageCallOptions {
    rpc_options: Option<RpcOptions>,
    message_options: Option<MessageOptions>,
}

/// `common.MessageOptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MessageOptions {
    digest: Option<String>,
    hash_func: Option<u64>,
}

/// `common.PluginResp`: the one object written to stdout.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct PluginResp {
    #[serde(skip_serializing_if = "String::is_empty")]
    error_message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_algorithm: Option<DefaultAlgorithmResp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supported_algorithms: Option<SupportedAlgorithmsResp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_key: Option<PublicKeyResp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<PublicKeyResp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sign_message: Option<SignMessageResp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify_signature: Option<VerifySignatureResp>,
}

/// `common.DefaultAlgorithmResp`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DefaultAlgorithmResp {
    default_algorithm: String,
}

/// `common.SupportedAlgorithmsResp`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SupportedAlgorithmsResp {
    supported_algorithms: Vec<String>,
}

/// `common.CreateKeyResp` and `common.PublicKeyResp`: base64 of the PEM text.
#[derive(Debug, Serialize)]
struct PublicKeyResp {
    #[serde(rename = "publicKeyPEM")]
    public_key_pem: String,
}

/// `common.SignMessageResp`.
#[derive(Debug, Serialize)]
struct SignMessageResp {
    signature: String,
}

/// `common.VerifySignatureResp`: empty; success is the absence of `errorMessage`.
#[derive(Debug, Serialize)]
struct VerifySignatureResp {}

// ---------------------------------------------------------------------------------
// Dispatch

/// Checks the command line and runs the method it names.
fn respond(args: &[OsString], stdin: &mut dyn Read) -> Result<PluginResp> {
    let version = match args.get(1) {
        Some(v) => v
            .to_str()
            .ok_or_else(|| anyhow!("the protocol version argument is not UTF-8. {USAGE}"))?,
        None => bail!("no protocol version argument. {USAGE}"),
    };
    if version != PROTOCOL_VERSION {
        bail!(
            "unsupported plug-in protocol version `{}`: this sigstore-kms-waxseal speaks `{PROTOCOL_VERSION}`. Use a cosign/sigstore release that speaks `{PROTOCOL_VERSION}`, or a sigstore-kms-waxseal that speaks yours",
            version.chars().take(32).collect::<String>()
        );
    }
    let json = match args.get(2) {
        Some(j) => j
            .to_str()
            .ok_or_else(|| anyhow!("the JSON argument is not UTF-8. {USAGE}"))?,
        None => bail!("no JSON argument after the protocol version. {USAGE}"),
    };
    let args: PluginArgs = serde_json::from_str(json)
        .map_err(|e| anyhow!("the JSON argument is not valid plug-in arguments: {e}"))?;
    let init = args.init_options.unwrap_or_default();
    if let Some(v) = init.protocol_version.as_deref() {
        if !v.is_empty() && v != PROTOCOL_VERSION {
            bail!(
                "initOptions.protocolVersion is `{}` but the command line says `{PROTOCOL_VERSION}`",
                v.chars().take(32).collect::<String>()
            );
        }
    }
    let method = args.method_name.unwrap_or_default();
    let mut resp = PluginResp::default();
    match method.as_str() {
        "defaultAlgorithm" => {
            resp.default_algorithm = Some(DefaultAlgorithmResp {
                default_algorithm: DEFAULT_ALGORITHM.to_string(),
            });
        }
        "supportedAlgorithms" => {
            resp.supported_algorithms = Some(SupportedAlgorithmsResp {
                supported_algorithms: ALGORITHMS.iter().map(|(n, _)| n.to_string()).collect(),
            });
        }
        "createKey" => {
            let algorithm = args.create_key.and_then(|a| a.algorithm).unwrap_or_default();
            let alg = key_alg(&algorithm).context("createKey")?;
            check_rpc(&init, None)?;
            let mut agent = Agent::new(&init)?;
            resp.create_key = Some(agent.create_key(&algorithm, alg).context("createKey")?);
        }
        "publicKey" => {
            let rpc = args
                .public_key
                .and_then(|a| a.public_key_options)
                .and_then(|o| o.rpc_options);
            check_rpc(&init, rpc.as_ref())?;
            let mut agent = Agent::new(&init)?;
            let key = agent.public_key().context("publicKey")?;
            resp.public_key = Some(PublicKeyResp {
                public_key_pem: B64.encode(key.pem.as_bytes()),
            });
        }
        "signMessage" => {
            let opts = args
                .sign_message
                .and_then(|a| a.sign_options)
                .unwrap_or_default();
            check_rpc(&init, opts.rpc_options.as_ref())?;
            let mut agent = Agent::new(&init)?;
            let signature = agent
                .sign(opts.message_options.unwrap_or_default(), stdin)
                .context("signMessage")?;
            resp.sign_message = Some(SignMessageResp {
                signature: B64.encode(signature),
            });
        }
        "verifySignature" => {
            let args = args.verify_signature.unwrap_or_default();
            let opts = args.verify_options.unwrap_or_default();
            check_rpc(&init, opts.rpc_options.as_ref())?;
            let signature = match args.signature.as_deref() {
                Some(s) if !s.is_empty() => B64
                    .decode(s)
                    .map_err(|e| anyhow!("verifySignature: `signature` is not base64: {e}"))?,
                _ => bail!("verifySignature: no `signature` to check"),
            };
            let mut agent = Agent::new(&init)?;
            agent
                .verify(&signature, opts.message_options.unwrap_or_default(), stdin)
                .context("verifySignature")?;
            resp.verify_signature = Some(VerifySignatureResp {});
        }
        "" => bail!("the JSON argument names no method (`methodName` is missing or empty)"),
        other => bail!(
            "unsupported method `{}`: sigstore-kms-waxseal implements defaultAlgorithm, supportedAlgorithms, createKey, publicKey, signMessage and verifySignature",
            other.chars().take(64).collect::<String>()
        ),
    }
    Ok(resp)
}

/// Refuses a key version: waxseal keys have none, and signing with a key other than
/// the one asked for would be worse than failing.
fn check_rpc(init: &InitOptions, call: Option<&RpcOptions>) -> Result<()> {
    let versions = [init.rpc_options.as_ref(), call]
        .into_iter()
        .flatten()
        .filter_map(|o| o.key_version.as_deref());
    for v in versions {
        if !v.is_empty() {
            bail!(
                "key version `{}` asked for, but waxseal keys have no versions: drop the key version option",
                v.chars().take(64).collect::<String>()
            );
        }
    }
    Ok(())
}

/// The key NAME (`DEVICE/LABEL`) of a `keyResourceID`.
fn key_name(resource: Option<&str>) -> Result<String> {
    let resource = resource.unwrap_or_default();
    let name = match resource.split_once("://") {
        Some((scheme, rest)) if scheme == SCHEME => rest,
        Some((scheme, _)) => bail!(
            "key reference `{}` is for the `{}` KMS, not waxseal (expected waxseal://DEVICE/LABEL, e.g. waxseal://hsm/release)",
            resource.chars().take(128).collect::<String>(),
            scheme.chars().take(32).collect::<String>()
        ),
        None => resource,
    };
    if name.is_empty() {
        bail!(
            "no key named: the key reference is waxseal://DEVICE/LABEL, e.g. waxseal://hsm/release"
        );
    }
    KeyName::parse(name).map_err(|e| anyhow!("{e}"))?;
    Ok(name.to_string())
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
    /// Checks the key reference, then connects.
    fn new(init: &InitOptions) -> Result<Agent> {
        let key = key_name(init.key_resource_id.as_deref())?;
        let socket = paths::client_socket();
        let mut client =
            Client::connect(&socket).map_err(|e| explain(e, &socket, &key, "connect"))?;
        // sigstore passes the plug-in's stderr through to the user.
        client.on_notice(Box::new(|n| eprintln!("sigstore-kms-waxseal: {n}")));
        Ok(Agent {
            client,
            socket,
            key,
            init_hash: init.hash_func,
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
    fn sign(&mut self, opts: MessageOptions, stdin: &mut dyn Read) -> Result<Vec<u8>> {
        let digest = decode_digest(opts.digest.as_deref())?;
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
    fn verify(
        &mut self,
        signature: &[u8],
        opts: MessageOptions,
        stdin: &mut dyn Read,
    ) -> Result<()> {
        let digest = decode_digest(opts.digest.as_deref())?;
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

/// The agent's algorithm for a sigstore algorithm name that `createKey` supports.
fn key_alg(algorithm: &str) -> Result<KeyAlg> {
    match ALGORITHMS.iter().find(|(n, _)| *n == algorithm) {
        Some(&(_, alg)) => Ok(alg),
        None if algorithm == "ed25519" || algorithm == "ed25519-ph" => bail!(
            "waxseal keys cannot serve sigstore's `{algorithm}`: the agent signs only 32-, 48- or 64-byte inputs with Ed25519 keys, and sigstore signs the whole message. Choose one of: {}",
            supported_list()
        ),
        None => bail!(
            "unsupported algorithm `{}`; waxseal creates {}",
            algorithm.chars().take(64).collect::<String>(),
            supported_list()
        ),
    }
}

/// The supported algorithm names, for messages.
fn supported_list() -> String {
    ALGORITHMS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `messageOptions.digest`: `None` when absent, `null` or empty (Go sends an empty or
/// nil slice when the caller gave no digest).
fn decode_digest(digest: Option<&str>) -> Result<Option<Vec<u8>>> {
    match digest {
        None | Some("") => Ok(None),
        Some(text) => B64
            .decode(text)
            .map(Some)
            .map_err(|e| anyhow!("`messageOptions.digest` is not base64: {e}")),
    }
}

/// A Go `crypto.Hash` number as a waxseal hash; `None` for 0 (no hash).
fn go_hash(number: u64) -> Result<Option<HashAlg>> {
    let name = match number {
        0 => return Ok(None),
        5 => return Ok(Some(HashAlg::Sha256)),
        6 => return Ok(Some(HashAlg::Sha384)),
        7 => return Ok(Some(HashAlg::Sha512)),
        1 => "MD4",
        2 => "MD5",
        3 => "SHA-1",
        4 => "SHA-224",
        8 => "MD5+SHA1",
        9 => "RIPEMD-160",
        10 => "SHA3-224",
        11 => "SHA3-256",
        12 => "SHA3-384",
        13 => "SHA3-512",
        14 => "SHA-512/224",
        15 => "SHA-512/256",
        16 => "BLAKE2s-256",
        17 => "BLAKE2b-256",
        18 => "BLAKE2b-384",
        19 => "BLAKE2b-512",
        _ => "unknown",
    };
    bail!("hash function {number} ({name}) is not supported: waxseal signs with SHA-256 (5), SHA-384 (6) or SHA-512 (7)")
}

/// The hash of a signature: the call's `hashFunc`; else `initOptions.hashFunc` if it
/// fits the digest; else the hash of the digest's length; else the key's default.
fn choose_hash(
    call: Option<u64>,
    init: Option<u64>,
    digest_len: Option<usize>,
    alg: KeyAlg,
) -> Result<HashAlg> {
    if let Some(hash) = go_hash(call.unwrap_or(0))? {
        if let Some(len) = digest_len.filter(|&len| len != hash.digest_len()) {
            bail!(
                "the digest is {len} bytes but hashFunc says {hash}, whose digests are {} bytes",
                hash.digest_len()
            );
        }
        return Ok(hash);
    }
    let init = go_hash(init.unwrap_or(0)).context("initOptions.hashFunc")?;
    match digest_len {
        Some(len) => init
            .filter(|h| h.digest_len() == len)
            .or_else(|| HashAlg::from_len(len))
            .ok_or_else(|| {
                anyhow!("the digest is {len} bytes, which is no SHA-256 (32), SHA-384 (48) or SHA-512 (64) digest")
            }),
        None => Ok(init.unwrap_or_else(|| alg.default_hash())),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn key_references() {
        assert_eq!(key_name(Some("hsm/release")).unwrap(), "hsm/release");
        assert_eq!(
            key_name(Some("waxseal://hsm/release")).unwrap(),
            "hsm/release"
        );
        assert!(key_name(Some("awskms://x/y")).is_err());
        assert!(key_name(Some("")).is_err());
        assert!(key_name(None).is_err());
        assert!(key_name(Some("nodevice")).is_err());
    }

    #[test]
    fn hash_choice() {
        use HashAlg::*;
        // The call's hash wins, and must fit the digest.
        assert_eq!(
            choose_hash(Some(6), Some(5), Some(48), KeyAlg::P256).unwrap(),
            Sha384
        );
        assert!(choose_hash(Some(5), None, Some(48), KeyAlg::P256).is_err());
        // initOptions.hashFunc when it fits; else the digest length.
        assert_eq!(
            choose_hash(None, Some(5), Some(32), KeyAlg::P384).unwrap(),
            Sha256
        );
        assert_eq!(
            choose_hash(None, Some(5), Some(64), KeyAlg::P256).unwrap(),
            Sha512
        );
        assert!(choose_hash(None, None, Some(10), KeyAlg::P256).is_err());
        // A message: initOptions, else the key's default.
        assert_eq!(
            choose_hash(None, Some(5), None, KeyAlg::P384).unwrap(),
            Sha256
        );
        assert_eq!(
            choose_hash(Some(0), Some(0), None, KeyAlg::P384).unwrap(),
            Sha384
        );
        assert_eq!(
            choose_hash(None, None, None, KeyAlg::Rsa(2048)).unwrap(),
            Sha256
        );
        assert!(choose_hash(Some(3), None, None, KeyAlg::P256).is_err());
        assert!(choose_hash(None, Some(17), None, KeyAlg::P256).is_err());
    }

    #[test]
    fn response_shape() {
        let resp = PluginResp {
            public_key: Some(PublicKeyResp {
                public_key_pem: B64.encode("mypem"),
            }),
            ..PluginResp::default()
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"publicKey":{"publicKeyPEM":"bXlwZW0="}}"#
        );
        let resp = PluginResp {
            error_message: "no".into(),
            ..PluginResp::default()
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"errorMessage":"no"}"#
        );
    }

    #[test]
    fn go_arguments_parse() {
        // As sigstore's PluginClient.SignMessage marshals them (nil digest → null).
        let json = r#"{"initOptions":{"protocolVersion":"v1","keyResourceID":"hsm/k","hashFunc":5,"rpcOptions":{"keyVersion":"","remoteVerification":false}},"methodName":"signMessage","signMessage":{"signOptions":{"rpcOptions":{"keyVersion":""},"messageOptions":{"digest":null}}}}"#;
        let args: PluginArgs = serde_json::from_str(json).unwrap();
        let init = args.init_options.unwrap();
        assert_eq!(init.key_resource_id.as_deref(), Some("hsm/k"));
        assert_eq!(init.hash_func, Some(5));
        let opts = args.sign_message.unwrap().sign_options.unwrap();
        let m = opts.message_options.unwrap();
        assert_eq!(decode_digest(m.digest.as_deref()).unwrap(), None);
        assert_eq!(m.hash_func, None);
    }
}
