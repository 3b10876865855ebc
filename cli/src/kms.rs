//! The sigstore KMS plug-in protocol (`sigstore-kms-waxseal v1 '<JSON>'`): the command
//! line decoded into a [`Call`], the response object, and the hash rules. The binary
//! (`src/bin/sigstore-kms-waxseal.rs`) only talks to the agent; everything a caller's
//! bytes reach is here, where the `kms_args` fuzz target can reach it too.
//!
//! The JSON is sigstore's `common.PluginArgs`. Unknown members are ignored, and every
//! member may be missing or `null` (Go writes `null` for a nil slice or pointer).

use std::ffi::OsString;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use waxseal_proto::keyuri::KeyName;
use waxseal_proto::proto::{HashAlg, KeyAlg};

/// The only protocol version sigstore sends today (`common.ProtocolVersion`).
pub const PROTOCOL_VERSION: &str = "v1";
/// The scheme of waxseal key references; sigstore runs `sigstore-kms-<scheme>`.
pub const SCHEME: &str = "waxseal";
/// How the program is meant to be run, for refusals of a malformed command line.
pub const USAGE: &str = "sigstore-kms-waxseal is run by cosign and other sigstore tools as `sigstore-kms-waxseal v1 '<JSON arguments>'` for keys named waxseal://DEVICE/LABEL";
/// The algorithm `createKey` gets from cosign when none is asked for.
pub const DEFAULT_ALGORITHM: &str = "ecdsa-sha2-256-nistp256";

/// The algorithms `createKey` makes, by their sigstore names, with the agent's word.
pub const ALGORITHMS: [(&str, KeyAlg); 5] = [
    ("ecdsa-sha2-256-nistp256", KeyAlg::P256),
    ("ecdsa-sha2-384-nistp384", KeyAlg::P384),
    ("rsa-sign-pkcs1-2048-sha256", KeyAlg::Rsa(2048)),
    ("rsa-sign-pkcs1-3072-sha256", KeyAlg::Rsa(3072)),
    ("rsa-sign-pkcs1-4096-sha256", KeyAlg::Rsa(4096)),
];

/// One decoded, checked invocation of the plug-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The key NAME (`DEVICE/LABEL`), for the methods that use a key.
    pub key: Option<String>,
    /// `initOptions.hashFunc` (a Go `crypto.Hash` number), as given.
    pub init_hash: Option<u64>,
    /// What to do.
    pub method: Method,
}

/// The methods of the protocol, with their checked arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `defaultAlgorithm`.
    DefaultAlgorithm,
    /// `supportedAlgorithms`.
    SupportedAlgorithms,
    /// `createKey` with a supported algorithm.
    CreateKey {
        /// The sigstore name.
        algorithm: String,
        /// The agent's word for it.
        alg: KeyAlg,
    },
    /// `publicKey`.
    PublicKey,
    /// `signMessage`: over `digest`, or over the digest of stdin when `None`.
    SignMessage(Message),
    /// `verifySignature` of `signature` (never empty).
    VerifySignature {
        /// The signature bytes.
        signature: Vec<u8>,
        /// What it is over.
        message: Message,
    },
}

/// `messageOptions`: a digest (`None`: hash stdin) and the call's `hashFunc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The digest; `None` when absent, `null` or empty.
    pub digest: Option<Vec<u8>>,
    /// The call's `hashFunc`, as given.
    pub hash_func: Option<u64>,
}

impl Call {
    /// Decodes and checks a command line (`argv[0]` is the program). Nothing here
    /// touches the agent.
    pub fn from_args(args: &[OsString]) -> Result<Call> {
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
        Call::from_json(json)
    }

    /// Decodes and checks the JSON argument (`common.PluginArgs`).
    pub fn from_json(json: &str) -> Result<Call> {
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
        let key = || key_name(init.key_resource_id.as_deref()).map(Some);
        let method_name = args.method_name.unwrap_or_default();
        let (key, method) = match method_name.as_str() {
            "defaultAlgorithm" => (None, Method::DefaultAlgorithm),
            "supportedAlgorithms" => (None, Method::SupportedAlgorithms),
            "createKey" => {
                let algorithm = args.create_key.and_then(|a| a.algorithm).unwrap_or_default();
                let alg = key_alg(&algorithm).context("createKey")?;
                check_rpc(&init, None)?;
                (key()?, Method::CreateKey { algorithm, alg })
            }
            "publicKey" => {
                let rpc = args
                    .public_key
                    .and_then(|a| a.public_key_options)
                    .and_then(|o| o.rpc_options);
                check_rpc(&init, rpc.as_ref())?;
                (key()?, Method::PublicKey)
            }
            "signMessage" => {
                let opts = args
                    .sign_message
                    .and_then(|a| a.sign_options)
                    .unwrap_or_default();
                check_rpc(&init, opts.rpc_options.as_ref())?;
                let key = key()?;
                let message = Message::decode(opts.message_options.unwrap_or_default())
                    .context("signMessage")?;
                (key, Method::SignMessage(message))
            }
            "verifySignature" => {
                let args = args.verify_signature.unwrap_or_default();
                let opts = args.verify_options.unwrap_or_default();
                check_rpc(&init, opts.rpc_options.as_ref())?;
                let signature = match args.signature.as_deref() {
                    Some(s) if !s.is_empty() => B64.decode(s).map_err(|e| {
                        anyhow!("verifySignature: `signature` is not base64: {e}")
                    })?,
                    _ => bail!("verifySignature: no `signature` to check"),
                };
                let key = key()?;
                let message = Message::decode(opts.message_options.unwrap_or_default())
                    .context("verifySignature")?;
                (key, Method::VerifySignature { signature, message })
            }
            "" => bail!("the JSON argument names no method (`methodName` is missing or empty)"),
            other => bail!(
                "unsupported method `{}`: sigstore-kms-waxseal implements defaultAlgorithm, supportedAlgorithms, createKey, publicKey, signMessage and verifySignature",
                other.chars().take(64).collect::<String>()
            ),
        };
        Ok(Call {
            key,
            init_hash: init.hash_func,
            method,
        })
    }

    /// The JSON argument sigstore would send for this call (as its Go client marshals
    /// `common.PluginArgs`); [`Call::from_json`] decodes it back to an equal call.
    pub fn to_json(&self) -> String {
        let mut init = Map::new();
        init.insert("protocolVersion".into(), json!(PROTOCOL_VERSION));
        if let Some(key) = &self.key {
            init.insert("keyResourceID".into(), json!(format!("{SCHEME}://{key}")));
        }
        init.insert("hashFunc".into(), json!(self.init_hash));
        init.insert("rpcOptions".into(), json!({"keyVersion": ""}));
        let message = |m: &Message| {
            json!({
                "rpcOptions": {"keyVersion": "", "remoteVerification": false},
                "messageOptions": {
                    "digest": m.digest.as_ref().map(|d| B64.encode(d)),
                    "hashFunc": m.hash_func,
                },
            })
        };
        let (name, member, value) = match &self.method {
            Method::DefaultAlgorithm => ("defaultAlgorithm", None, Value::Null),
            Method::SupportedAlgorithms => ("supportedAlgorithms", None, Value::Null),
            Method::CreateKey { algorithm, .. } => (
                "createKey",
                Some("createKey"),
                json!({ "algorithm": algorithm }),
            ),
            Method::PublicKey => (
                "publicKey",
                Some("publicKey"),
                json!({"publicKeyOptions": {"rpcOptions": {"keyVersion": ""}}}),
            ),
            Method::SignMessage(m) => (
                "signMessage",
                Some("signMessage"),
                json!({ "signOptions": message(m) }),
            ),
            Method::VerifySignature {
                signature,
                message: m,
            } => (
                "verifySignature",
                Some("verifySignature"),
                json!({ "signature": B64.encode(signature), "verifyOptions": message(m) }),
            ),
        };
        let mut args = Map::new();
        args.insert("initOptions".into(), Value::Object(init));
        args.insert("methodName".into(), json!(name));
        if let Some(member) = member {
            args.insert(member.into(), value);
        }
        Value::Object(args).to_string()
    }
}

impl Message {
    fn decode(m: MessageOptions) -> Result<Message> {
        Ok(Message {
            digest: decode_digest(m.digest.as_deref())?,
            hash_func: m.hash_func,
        })
    }
}

// ---------------------------------------------------------------------------------
// The JSON of the arguments.

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

// ---------------------------------------------------------------------------------
// The response.

/// `common.PluginResp`: the one object written to stdout.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PluginResp {
    /// Set on failure; success is its absence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_message: String,
    /// `defaultAlgorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_algorithm: Option<DefaultAlgorithmResp>,
    /// `supportedAlgorithms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_algorithms: Option<SupportedAlgorithmsResp>,
    /// `createKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_key: Option<PublicKeyResp>,
    /// `publicKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyResp>,
    /// `signMessage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_message: Option<SignMessageResp>,
    /// `verifySignature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_signature: Option<VerifySignatureResp>,
}

/// `common.DefaultAlgorithmResp`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DefaultAlgorithmResp {
    /// A sigstore algorithm name.
    pub default_algorithm: String,
}

/// `common.SupportedAlgorithmsResp`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SupportedAlgorithmsResp {
    /// Sigstore algorithm names.
    pub supported_algorithms: Vec<String>,
}

/// `common.CreateKeyResp` and `common.PublicKeyResp`: base64 of the PEM text.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicKeyResp {
    /// Base64 of the PEM text.
    #[serde(rename = "publicKeyPEM")]
    pub public_key_pem: String,
}

/// `common.SignMessageResp`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignMessageResp {
    /// Base64 of the signature.
    pub signature: String,
}

/// `common.VerifySignatureResp`: empty; success is the absence of `errorMessage`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifySignatureResp {}

impl PluginResp {
    /// The response for `defaultAlgorithm` and `supportedAlgorithms`, which need no
    /// agent; `None` for the other methods.
    pub fn without_agent(method: &Method) -> Option<PluginResp> {
        match method {
            Method::DefaultAlgorithm => Some(PluginResp {
                default_algorithm: Some(DefaultAlgorithmResp {
                    default_algorithm: DEFAULT_ALGORITHM.to_string(),
                }),
                ..PluginResp::default()
            }),
            Method::SupportedAlgorithms => Some(PluginResp {
                supported_algorithms: Some(SupportedAlgorithmsResp {
                    supported_algorithms: ALGORITHMS.iter().map(|(n, _)| n.to_string()).collect(),
                }),
                ..PluginResp::default()
            }),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// Checks.

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
pub fn key_name(resource: Option<&str>) -> Result<String> {
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

/// The agent's algorithm for a sigstore algorithm name that `createKey` supports.
pub fn key_alg(algorithm: &str) -> Result<KeyAlg> {
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
            .map(|d| (!d.is_empty()).then_some(d))
            .map_err(|e| anyhow!("`messageOptions.digest` is not base64: {e}")),
    }
}

/// A Go `crypto.Hash` number as a waxseal hash; `None` for 0 (no hash).
pub fn go_hash(number: u64) -> Result<Option<HashAlg>> {
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
pub fn choose_hash(
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
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(text, r#"{"publicKey":{"publicKeyPEM":"bXlwZW0="}}"#);
        assert_eq!(serde_json::from_str::<PluginResp>(&text).unwrap(), resp);
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
    fn go_arguments_parse_and_round_trip() {
        // As sigstore's PluginClient.SignMessage marshals them (nil digest → null).
        let json = r#"{"initOptions":{"protocolVersion":"v1","keyResourceID":"hsm/k","hashFunc":5,"rpcOptions":{"keyVersion":"","remoteVerification":false}},"methodName":"signMessage","signMessage":{"signOptions":{"rpcOptions":{"keyVersion":""},"messageOptions":{"digest":null}}}}"#;
        let call = Call::from_json(json).unwrap();
        assert_eq!(
            call,
            Call {
                key: Some("hsm/k".into()),
                init_hash: Some(5),
                method: Method::SignMessage(Message::default()),
            }
        );
        assert_eq!(Call::from_json(&call.to_json()).unwrap(), call);
        let verify = Call {
            key: Some("hsm/k".into()),
            init_hash: None,
            method: Method::VerifySignature {
                signature: vec![1, 2, 3],
                message: Message {
                    digest: Some(vec![7; 32]),
                    hash_func: Some(5),
                },
            },
        };
        assert_eq!(Call::from_json(&verify.to_json()).unwrap(), verify);
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |json: &str| format!("{:#}", Call::from_json(json).unwrap_err());
        assert!(err("[").contains("not valid plug-in arguments"));
        assert!(err("{}").contains("names no method"));
        assert!(err(r#"{"methodName":"explode"}"#).contains("unsupported method `explode`"));
        assert!(err(r#"{"methodName":"publicKey","initOptions":{"keyResourceID":"hsm/k","rpcOptions":{"keyVersion":"3"}}}"#).contains("no versions"));
        assert!(
            err(r#"{"methodName":"verifySignature","initOptions":{"keyResourceID":"hsm/k"}}"#)
                .contains("no `signature`")
        );
        assert!(err(r#"{"methodName":"createKey","initOptions":{"keyResourceID":"hsm/k"},"createKey":{"algorithm":"ed25519"}}"#).contains("Ed25519"));
        assert!(err(r#"{"methodName":"signMessage","initOptions":{"keyResourceID":"hsm/k"},"signMessage":{"signOptions":{"messageOptions":{"digest":"%%"}}}}"#).contains("not base64"));
        assert!(err(r#"{"methodName":"publicKey","initOptions":{"protocolVersion":"v2","keyResourceID":"hsm/k"}}"#).contains("protocolVersion"));
    }
}
