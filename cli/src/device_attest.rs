//! Attestation objects for ACME `device-attest-01` (draft-ietf-acme-device-attest),
//! built from the agent's `attest` evidence: `waxseal keys attest NAME --format
//! tpm|step`. The layouts, with the sections they come from, are in
//! docs/key-attestation.md.
//!
//! * `tpm`: the WebAuthn TPM attestation statement (W3C WebAuthn Level 2 §8.3) over
//!   the agent's TPM2_Certify of the key by its attestation key (AK), with the AK
//!   certificate chain the operator supplies.
//! * `step`: step-ca's format for PIV keys: the slot's attestation certificate and the
//!   f9 certificate, and the key's own signature over the challenge.
//!
//! Everything here is pure (no agent, no files), so it is unit tested on its own.

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use der::{Decode as _, DecodePem as _, Encode as _};
use sha2::{Digest as _, Sha256};
use waxseal_proto::proto::KeyAlg;
use x509_cert::Certificate;

use crate::cbor::{self, Value};

/// At most this many bytes of ACME key authorization (`token.thumbprint`, RFC 8555
/// §8.1: a token of ≥ 128 bits plus a 43-character thumbprint; 1 KiB is ample).
pub const MAX_CHALLENGE: usize = 1024;
/// At most this many bytes of `--ak-cert` file.
pub const MAX_AK_CERT_FILE: u64 = 64 * 1024;
/// At most this many certificates in an AK certificate chain.
pub const MAX_AK_CHAIN: usize = 8;

/// COSE algorithm identifiers (IANA COSE Algorithms registry; RFC 9053 §2.1, RFC 8812).
pub const COSE_ES256: i64 = -7;
/// EdDSA (RFC 9053 §2.2).
pub const COSE_EDDSA: i64 = -8;
/// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8812 §2).
pub const COSE_RS256: i64 = -257;

/// The agent's evidence format for a TPM key.
pub const TPM_EVIDENCE: &str = "tpm2-certify";
/// The agent's evidence format for a PIV key.
pub const PIV_EVIDENCE: &str = "piv-attestation";

/// The output format of `keys attest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The agent's own JSON evidence (docs/protocol.md, `attest`).
    Json,
    /// WebAuthn `tpm` attestation object.
    Tpm,
    /// step-ca `step` attestation object.
    Step,
}

impl Format {
    /// Parses `json`, `tpm` or `step`.
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "json" => Ok(Format::Json),
            "tpm" => Ok(Format::Tpm),
            "step" => Ok(Format::Step),
            _ => bail!("unknown attestation format `{s}` (expected json, tpm or step)"),
        }
    }

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Tpm => "tpm",
            Format::Step => "step",
        }
    }

    /// The agent evidence format this output is built from (`None` for json).
    pub fn needs_evidence(self) -> Option<&'static str> {
        match self {
            Format::Json => None,
            Format::Tpm => Some(TPM_EVIDENCE),
            Format::Step => Some(PIV_EVIDENCE),
        }
    }
}

/// Refuses `format` for a key whose evidence is `evidence_format`, naming the format
/// that fits the key.
pub fn check_kind(format: Format, evidence_format: &str, key: &str) -> Result<()> {
    let Some(want) = format.needs_evidence() else {
        return Ok(());
    };
    if evidence_format == want {
        return Ok(());
    }
    let fits = match evidence_format {
        TPM_EVIDENCE => "it is a TPM key: use --format tpm (or json)",
        PIV_EVIDENCE => "it is a PIV (YubiKey) key: use --format step (or json)",
        _ => "its device's evidence is neither a TPM certification nor a PIV attestation: use --format json",
    };
    bail!(
        "--format {} is for {} keys, and {key} is not one ({fits})",
        format.as_str(),
        if format == Format::Tpm { "TPM" } else { "PIV" }
    )
}

/// SHA-256 of an ACME key authorization: what device-attest-01 binds into the
/// attestation (the TPM's qualifying data; what the PIV key signs).
pub fn key_authorization_digest(key_authorization: &str) -> Result<[u8; 32]> {
    if key_authorization.is_empty() || key_authorization.len() > MAX_CHALLENGE {
        bail!("--challenge must be 1 to {MAX_CHALLENGE} bytes (the ACME key authorization, token.thumbprint)");
    }
    if key_authorization.chars().any(|c| c.is_control()) {
        bail!("--challenge holds a control character; an ACME key authorization is token.thumbprint in base64url");
    }
    Ok(Sha256::digest(key_authorization.as_bytes()).into())
}

/// The ACME challenge response body for device-attest-01: `{"attObj": base64url}`.
pub fn acme_payload(att_obj: &[u8]) -> serde_json::Value {
    serde_json::json!({ "attObj": B64URL.encode(att_obj) })
}

fn member<'a>(evidence: &'a serde_json::Value, name: &str) -> Result<&'a str> {
    evidence
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("the agent's evidence has no `{name}`"))
}

fn member_b64(evidence: &serde_json::Value, name: &str) -> Result<Vec<u8>> {
    B64.decode(member(evidence, name)?)
        .with_context(|| format!("the agent's evidence `{name}` is not base64"))
}

/// DER of the one certificate in `pem`.
fn cert_der_from_pem(pem: &str, what: &str) -> Result<Vec<u8>> {
    let cert = Certificate::from_pem(pem.as_bytes())
        .with_context(|| format!("the {what} is not a PEM certificate"))?;
    cert.to_der()
        .with_context(|| format!("cannot encode the {what}"))
}

/// The certificates of a PEM bundle, in order, as DER: at least one, at most
/// [`MAX_AK_CHAIN`].
pub fn pem_chain(text: &[u8]) -> Result<Vec<Vec<u8>>> {
    let certs = Certificate::load_pem_chain(text)
        .map_err(|e| anyhow!("not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        bail!("no -----BEGIN CERTIFICATE----- block");
    }
    if certs.len() > MAX_AK_CHAIN {
        bail!(
            "{} certificates; at most {MAX_AK_CHAIN} (the AK certificate, then its CA chain)",
            certs.len()
        );
    }
    certs
        .iter()
        .map(|c| c.to_der().context("cannot encode a certificate"))
        .collect()
}

/// What a verifier following WebAuthn §8.3.1 (TPM attestation statement certificate
/// requirements), as step-ca does, would refuse in an AK certificate: each a sentence
/// for a warning. Empty when none.
pub fn ak_cert_findings(der: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        out.push("it cannot be parsed".into());
        return out;
    };
    if cert.version() != x509_parser::x509::X509Version::V3 {
        out.push("it is not an X.509 v3 certificate".into());
    }
    if cert.subject().iter().next().is_some() {
        out.push(format!("its subject is `{}`, not empty", cert.subject()));
    }
    if cert.is_ca() {
        out.push("it is a CA certificate".into());
    }
    // tcg-kp-AIKCertificate, 2.23.133.8.3.
    let aik = der::asn1::ObjectIdentifier::new_unwrap("2.23.133.8.3").to_string();
    let has_aik_eku = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| e.value.other.iter().any(|o| o.to_id_string() == aik))
        .unwrap_or(false);
    if !has_aik_eku {
        out.push("its extended key usage lacks tcg-kp-AIKCertificate (2.23.133.8.3)".into());
    }
    out
}

/// What the evidence says of the TPM's EK certificates (`ek_certificates`): the
/// evidence an attestation CA checks before it certifies the AK.
pub fn ek_summary(evidence: &serde_json::Value) -> String {
    let certs = evidence
        .get("ek_certificates")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if certs.is_empty() {
        return "This TPM holds no EK certificate either, or none the agent could read with the \
                owner hierarchy's authorization (NV 0x01c00002 RSA, 0x01c0000a ECC: TCG EK Credential \
                Profile §2.2.1.4; `tpm2_getekcertificate` reads them too), so the CA must vouch for it \
                another way; for swtpm, `swtpm_setup --tpm2 --create-ek-cert` provisions one."
            .to_string();
    }
    let mut text = String::from("This TPM holds EK certificates for the CA to check:");
    for c in certs.iter().take(MAX_AK_CHAIN) {
        let index = c.get("nv_index").and_then(|v| v.as_str()).unwrap_or("?");
        let issuer = c
            .get("pem")
            .and_then(|v| v.as_str())
            .and_then(|pem| cert_der_from_pem(pem, "EK certificate").ok())
            .and_then(|der| {
                x509_parser::parse_x509_certificate(&der)
                    .ok()
                    .map(|(_, cert)| cert.issuer().to_string())
            })
            .unwrap_or_else(|| "not a parsable certificate".into());
        text.push_str(&format!(" NV {index} (issuer: {issuer});"));
    }
    text.push_str(" `waxseal keys attest NAME` (json) has them as PEM (ek_certificates).");
    text
}

/// The `tpm` attestation object (WebAuthn §6.5 attestation object, §8.3 TPM
/// attestation statement) from the agent's `tpm2-certify` evidence and the AK
/// certificate chain (DER, AK certificate first). The AK certificate must hold the
/// AK's public key.
pub fn tpm_object(evidence: &serde_json::Value, ak_chain: &[Vec<u8>]) -> Result<Vec<u8>> {
    let cert_info = member_b64(evidence, "attest")?;
    let sig = member_b64(evidence, "tpmt_signature")?;
    let pub_area = member_b64(evidence, "key_public")?;
    let ak_spki = crate::verify::spki_from_pem(member(evidence, "ak_spki_pem")?)
        .context("the agent's evidence `ak_spki_pem`")?;
    let alg = match member(evidence, "signature_alg")? {
        "ecdsa-p256-sha256" => COSE_ES256,
        other => bail!("the AK signed with {other}, which this format has no COSE algorithm for"),
    };
    let Some(ak_cert) = ak_chain.first() else {
        bail!("no AK certificate");
    };
    let cert = Certificate::from_der(ak_cert).context("the AK certificate is not DER X.509")?;
    let cert_spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("cannot encode the AK certificate's public key")?;
    if cert_spki != ak_spki {
        bail!("the first certificate of --ak-cert is not for this TPM's attestation key (its public key differs from the AK's, ak_spki_pem in `waxseal keys attest NAME`)");
    }
    let statement = Value::Map(vec![
        ("ver".into(), Value::Text("2.0".into())),
        ("alg".into(), Value::Int(alg)),
        (
            "x5c".into(),
            Value::Array(ak_chain.iter().cloned().map(Value::Bytes).collect()),
        ),
        ("sig".into(), Value::Bytes(sig)),
        ("certInfo".into(), Value::Bytes(cert_info)),
        ("pubArea".into(), Value::Bytes(pub_area)),
    ]);
    attestation_object("tpm", statement)
}

/// The COSE algorithm of a `step` signature by a PIV key of `alg`, or why step-ca
/// would not verify it (it checks P-256 ECDSA and RSA PKCS#1 v1.5 over the SHA-256 of
/// the key authorization, and Ed25519 over the key authorization itself).
pub fn step_cose_alg(alg: KeyAlg) -> Result<i64> {
    match alg {
        KeyAlg::P256 => Ok(COSE_ES256),
        KeyAlg::Rsa(_) => Ok(COSE_RS256),
        KeyAlg::Ed25519 => Ok(COSE_EDDSA),
        KeyAlg::P384 => bail!("a {alg} key: step-ca's step format verifies only P-256, RSA and Ed25519 keys (ECDSA with SHA-256), so it would refuse this attestation"),
    }
}

/// The PIV key's algorithm, from the evidence's `alg`.
pub fn piv_alg(evidence: &serde_json::Value) -> Result<KeyAlg> {
    member(evidence, "alg")?
        .parse::<KeyAlg>()
        .map_err(|e| anyhow!("the agent's evidence `alg`: {e}"))
}

/// The slot attestation certificate and the f9 certificate of a `piv-attestation`
/// evidence, DER.
pub fn piv_certificates(evidence: &serde_json::Value) -> Result<(Vec<u8>, Vec<u8>)> {
    let slot = cert_der_from_pem(
        member(evidence, "attestation_certificate")?,
        "slot attestation certificate",
    )?;
    let f9 = cert_der_from_pem(
        member(evidence, "intermediate_certificate")?,
        "f9 attestation certificate",
    )?;
    Ok((slot, f9))
}

/// SPKI DER of a certificate.
pub fn cert_spki(der: &[u8]) -> Result<Vec<u8>> {
    Certificate::from_der(der)
        .context("not a DER certificate")?
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("cannot encode the public key")
}

/// The `step` attestation object: `x5c` = [slot certificate, f9 certificate], `sig` =
/// the key's signature over the challenge, itself CBOR-encoded as a byte string
/// (step-ca decodes it so), `alg` its COSE algorithm.
pub fn step_object(slot_cert: &[u8], f9_cert: &[u8], sig: &[u8], alg: i64) -> Result<Vec<u8>> {
    let inner = cbor::encode(&Value::Bytes(sig.to_vec()))?;
    let statement = Value::Map(vec![
        ("alg".into(), Value::Int(alg)),
        ("sig".into(), Value::Bytes(inner)),
        (
            "x5c".into(),
            Value::Array(vec![
                Value::Bytes(slot_cert.to_vec()),
                Value::Bytes(f9_cert.to_vec()),
            ]),
        ),
    ]);
    attestation_object("step", statement)
}

/// `{fmt, attStmt}`; `authData` is left out: device-attest-01 has no relying party or
/// credential for it to describe, and step-ca does not read it.
fn attestation_object(fmt: &str, statement: Value) -> Result<Vec<u8>> {
    Ok(cbor::encode(&Value::Map(vec![
        ("fmt".into(), Value::Text(fmt.into())),
        ("attStmt".into(), statement),
    ]))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_refuse_the_wrong_kind() {
        assert_eq!(Format::parse("tpm").unwrap(), Format::Tpm);
        assert!(Format::parse("packed").is_err());
        check_kind(Format::Tpm, TPM_EVIDENCE, "tpm/k").unwrap();
        check_kind(Format::Json, PIV_EVIDENCE, "yk/9c").unwrap();
        let e = check_kind(Format::Step, TPM_EVIDENCE, "tpm/k").unwrap_err();
        assert!(e.to_string().contains("use --format tpm"), "{e}");
        let e = check_kind(Format::Tpm, PIV_EVIDENCE, "yk/9c").unwrap_err();
        assert!(e.to_string().contains("use --format step"), "{e}");
    }

    #[test]
    fn key_authorization_digest_is_sha256_and_bounded() {
        let d = key_authorization_digest("tok.thumb").unwrap();
        assert_eq!(d.to_vec(), Sha256::digest(b"tok.thumb").to_vec());
        assert!(key_authorization_digest("").is_err());
        assert!(key_authorization_digest(&"a".repeat(MAX_CHALLENGE + 1)).is_err());
        assert!(key_authorization_digest("a\nb").is_err());
    }

    #[test]
    fn step_object_layout() {
        let obj = step_object(b"SLOT", b"F9", &[0x30, 0x01], COSE_ES256).unwrap();
        // {"fmt": "step", "attStmt": {"alg": -7, "sig": h'42 3001', "x5c": [h'SLOT', h'F9']}}
        let want = concat!(
            "a2",
            "63666d74",
            "6473746570",
            "6761747453746d74",
            "a3",
            "63616c6726",
            "63736967",
            "43423001",
            "63783563",
            "82",
            "44534c4f54",
            "424639",
        );
        assert_eq!(hex::encode(&obj), want);
        let e = step_cose_alg(KeyAlg::P384).unwrap_err();
        assert!(e.to_string().contains("P-256"), "{e}");
    }

    #[test]
    fn acme_payload_is_unpadded_base64url() {
        let p = acme_payload(&[0xfb, 0xff]);
        assert_eq!(p["attObj"], "-_8");
    }
}
