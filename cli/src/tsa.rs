//! RFC 3161 timestamps for Sigstore bundles: the request, the HTTP call to a time-stamp
//! authority (TSA), and the checks its answer passes before it goes into a bundle's
//! `verificationMaterial.timestampVerificationData.rfc3161Timestamps` (the whole DER
//! `TimeStampResp`, as protobuf-specs' `RFC3161SignedTimestamp` says and sigstore-js
//! reads it).
//!
//! A bundle logged in Rekor v2 has no signed entry timestamp, so its time comes from a
//! TSA (README, "Sigstore bundles and Rekor"). The token is over the signature bytes:
//! its message imprint is SHA-256 of the signature, as sigstore-js and cosign ask.
//!
//! ASN.1 is RustCrypto's: `cms` (SignedData, SignerInfo), `x509-cert` (the TSA
//! certificate, its extended key usage), `der` (the RFC 3161 structures, derived here:
//! `TimeStampReq`, `TimeStampResp`, `TSTInfo`). The parsing is pure (bytes in, checked
//! token out); [`Tsa::timestamp`] is the one function that does I/O.

use std::io::Read as _;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::asn1::{Any, BitString, Int, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence, Tag, Tagged};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use spki::AlgorithmIdentifierOwned;
use waxseal_proto::proto::HashAlg;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::ext::Extensions;
use x509_cert::Certificate;

use crate::verify::AnyPublicKey;

// `new_unwrap` in a `const` runs at compile time: a malformed OID fails the build.
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TSTINFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const ID_SIGNING_CERTIFICATE_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
const ID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const ID_KP_TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const ID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const ID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const ID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");

/// The most a TSA answer may hold: a token with a certificate chain is a few KiB.
const MAX_RESPONSE: u64 = 1 << 20;

/// `MessageImprint` (RFC 3161, section 2.4.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct MessageImprint {
    hash_algorithm: AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

/// `TimeStampReq` (RFC 3161, section 2.4.1). No policy, no extensions.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TimeStampReq {
    version: u8,
    message_imprint: MessageImprint,
    #[asn1(optional = "true")]
    req_policy: Option<ObjectIdentifier>,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(default = "false_")]
    cert_req: bool,
}

/// `PKIStatusInfo` (RFC 3161, section 2.4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct PkiStatusInfo {
    status: u32,
    #[asn1(optional = "true")]
    status_string: Option<Vec<String>>,
    #[asn1(optional = "true")]
    fail_info: Option<BitString>,
}

/// `TimeStampResp` (RFC 3161, section 2.4.2): the token is kept as it came.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TimeStampResp {
    status: PkiStatusInfo,
    #[asn1(optional = "true")]
    time_stamp_token: Option<Any>,
}

/// `Accuracy` (RFC 3161, section 2.4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct Accuracy {
    #[asn1(optional = "true")]
    seconds: Option<u64>,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    millis: Option<u16>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    micros: Option<u16>,
}

/// `TSTInfo` (RFC 3161, section 2.4.2).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TstInfo {
    version: u8,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    /// A GeneralizedTime that may carry fractions of a second (RFC 3161, section
    /// 2.4.2), which `der`'s own type refuses: read by [`gen_time`].
    gen_time: Any,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "false_")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<GeneralName>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// `ESSCertIDv2` (RFC 5035, section 4): the hash of the TSA's certificate.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct EssCertIdV2 {
    #[asn1(optional = "true")]
    hash_algorithm: Option<AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<Any>,
}

/// `SigningCertificateV2` (RFC 5035, section 3): the first entry names the signer's
/// certificate.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    policies: Option<Any>,
}

fn false_() -> bool {
    false
}

/// A time-stamp authority reached over HTTP (RFC 3161, section 3.4).
#[derive(Debug, Clone)]
pub struct Tsa {
    /// The URL the query is POSTed to.
    pub url: String,
    /// How long the TSA has to answer.
    pub timeout: Duration,
}

/// A TSA's answer that passed [`check_response`].
#[derive(Debug, Clone)]
pub struct Timestamp {
    /// The DER `TimeStampResp` as the TSA sent it: what a bundle's
    /// `rfc3161Timestamps[].signedTimestamp` holds (protobuf-specs
    /// `RFC3161SignedTimestamp`: "the DER encoded TimeStampResponse").
    pub response: Vec<u8>,
    /// The DER `TimeStampToken` in it (a CMS `ContentInfo`).
    pub token: Vec<u8>,
    /// The TSA certificate that signed it, from the token.
    pub certificate: Certificate,
    /// The TSA's time.
    pub time: SystemTime,
}

impl Tsa {
    /// Asks the TSA for a token over `signature` and checks the answer. Every error
    /// names the TSA's URL and what failed.
    pub fn timestamp(&self, signature: &[u8]) -> Result<Timestamp> {
        let url = &self.url;
        let imprint: [u8; 32] = Sha256::digest(signature).into();
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| anyhow!("no randomness for a TSA nonce: {e}"))?;
        let query = request(&imprint, &nonce)?;
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        let response = agent
            .post(url)
            .set("Content-Type", "application/timestamp-query")
            .set("Accept", "application/timestamp-reply")
            .send_bytes(&query);
        let answer = match response {
            Ok(r) => {
                let mut body = Vec::new();
                r.into_reader()
                    .take(MAX_RESPONSE)
                    .read_to_end(&mut body)
                    .with_context(|| format!("TSA at {url}: cannot read the answer"))?;
                body
            }
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                bail!(
                    "TSA at {url} refused the query: HTTP {code}: {}",
                    body.trim().chars().take(300).collect::<String>()
                );
            }
            Err(e) => bail!("cannot reach the TSA at {url}: {e}"),
        };
        check_response(&answer, &imprint, &nonce)
            .with_context(|| format!("TSA at {url}: the timestamp does not check out"))
    }
}

/// The DER `TimeStampReq` for a SHA-256 `imprint`, with `nonce` and certReq true.
pub fn request(imprint: &[u8; 32], nonce: &[u8; 8]) -> Result<Vec<u8>> {
    let req = TimeStampReq {
        version: 1,
        message_imprint: sha256_imprint(imprint)?,
        req_policy: None,
        nonce: Some(nonce_int(nonce)?),
        cert_req: true,
    };
    Ok(req.to_der()?)
}

fn sha256_imprint(imprint: &[u8]) -> Result<MessageImprint> {
    Ok(MessageImprint {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: ID_SHA256,
            parameters: None,
        },
        hashed_message: OctetString::new(imprint)?,
    })
}

/// The nonce as a positive INTEGER (a leading zero byte keeps the top bit a value bit).
fn nonce_int(nonce: &[u8; 8]) -> Result<Int> {
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(nonce);
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let start = if bytes[first] & 0x80 != 0 {
        first - 1
    } else {
        first
    };
    Ok(Int::new(&bytes[start..])?)
}

/// Checks a `TimeStampResp`: granted, a token whose imprint and nonce are ours, signed
/// by its certificate, that certificate only for time stamping. Returns the token.
pub fn check_response(answer: &[u8], imprint: &[u8; 32], nonce: &[u8; 8]) -> Result<Timestamp> {
    let resp = TimeStampResp::from_der(answer)
        .map_err(|e| anyhow!("the answer is not an RFC 3161 TimeStampResp: {e}"))?;
    // 0 granted, 1 grantedWithMods.
    if resp.status.status > 1 {
        let text = resp.status.status_string.unwrap_or_default().join("; ");
        bail!("status {} (not granted): {text}", resp.status.status);
    }
    let token = resp
        .time_stamp_token
        .ok_or_else(|| anyhow!("status granted but no timeStampToken"))?
        .to_der()?;
    let checked = check_token(&token, imprint, Some(nonce))?;
    Ok(Timestamp {
        response: answer.to_vec(),
        ..checked
    })
}

/// Checks a DER `TimeStampToken` over SHA-256 `imprint`, and its nonce when given.
/// The result's `response` is empty: a token alone has none.
pub fn check_token(token: &[u8], imprint: &[u8], nonce: Option<&[u8; 8]>) -> Result<Timestamp> {
    check_token_with(token, imprint, nonce, &[])
}

/// [`check_token`], where the signer's certificate may also be one of `trusted` (a
/// token need not carry its certificate when the query did not ask for it, and a
/// verifier's trusted root names the TSA's).
pub fn check_token_with(
    token: &[u8],
    imprint: &[u8],
    nonce: Option<&[u8; 8]>,
    trusted: &[Certificate],
) -> Result<Timestamp> {
    let info = ContentInfo::from_der(token)
        .map_err(|e| anyhow!("the token is not a CMS ContentInfo: {e}"))?;
    if info.content_type != ID_SIGNED_DATA {
        bail!("the token is a {}, not a SignedData", info.content_type);
    }
    let sd: SignedData = info
        .content
        .decode_as()
        .map_err(|e| anyhow!("the token's SignedData does not parse: {e}"))?;
    if sd.encap_content_info.econtent_type != ID_CT_TSTINFO {
        bail!(
            "the token's content is a {}, not a TSTInfo",
            sd.encap_content_info.econtent_type
        );
    }
    let tst_der = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| anyhow!("the token carries no TSTInfo"))?
        .decode_as::<OctetString>()
        .map_err(|e| anyhow!("the token's eContent is not an OCTET STRING: {e}"))?
        .into_bytes();
    let tst =
        TstInfo::from_der(&tst_der).map_err(|e| anyhow!("the TSTInfo does not parse: {e}"))?;

    // 1. The token is over our signature, and answers our query.
    // SHA-256's AlgorithmIdentifier comes with absent parameters or with NULL ones
    // (RFC 5754 section 2: both are accepted); Sigstore's timestamp-authority writes NULL.
    let alg = &tst.message_imprint.hash_algorithm;
    let null_or_absent = alg
        .parameters
        .as_ref()
        .is_none_or(|p| p.tag() == Tag::Null && p.value().is_empty());
    if alg.oid != ID_SHA256
        || !null_or_absent
        || tst.message_imprint.hashed_message.as_bytes() != imprint
    {
        bail!("the message imprint is not SHA-256 of the signature");
    }
    if let Some(nonce) = nonce {
        let ours = nonce_int(nonce)?;
        match &tst.nonce {
            Some(n) if *n == ours => {}
            Some(n) => bail!(
                "the nonce {} is not the query's {}",
                hex::encode(n.as_bytes()),
                hex::encode(ours.as_bytes())
            ),
            None => bail!("the token has no nonce, and the query sent one"),
        }
    }

    // 2. One signer, whose signed attributes bind the TSTInfo.
    let signer = match sd.signer_infos.0.as_slice() {
        [one] => one,
        more => bail!("the token has {} signers, not one", more.len()),
    };
    let hash = digest_hash(&signer.digest_alg.oid)?;
    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or_else(|| anyhow!("the signer has no signed attributes"))?;
    let attr = |oid: ObjectIdentifier, name: &str| -> Result<&Any> {
        let found: Vec<_> = attrs.iter().filter(|a| a.oid == oid).collect();
        match found.as_slice() {
            [a] if a.values.len() == 1 => a
                .values
                .get(0)
                .ok_or_else(|| anyhow!("the {name} attribute is empty")),
            _ => bail!("the signed attributes need exactly one {name}"),
        }
    };
    let content_type: ObjectIdentifier = attr(ID_CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(|e| anyhow!("the contentType attribute: {e}"))?;
    if content_type != ID_CT_TSTINFO {
        bail!("the signed contentType is {content_type}, not TSTInfo");
    }
    let message_digest: OctetString = attr(ID_MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(|e| anyhow!("the messageDigest attribute: {e}"))?;
    if message_digest.as_bytes() != digest(hash, &tst_der).as_slice() {
        bail!("the signed messageDigest is not the TSTInfo's");
    }

    // 3. The signature verifies with the TSA certificate in the token.
    let cert = signer_certificate(&sd, &signer.sid, trusted)?;
    // RFC 3161 section 2.4.1 / RFC 5816: a signed signingCertificateV2 binds the
    // certificate to the signature; when there is one, it must name this certificate.
    if attrs.iter().any(|a| a.oid == ID_SIGNING_CERTIFICATE_V2) {
        let ess: SigningCertificateV2 = attr(ID_SIGNING_CERTIFICATE_V2, "signingCertificateV2")?
            .decode_as()
            .map_err(|e| anyhow!("the signingCertificateV2 attribute: {e}"))?;
        let first = ess
            .certs
            .first()
            .ok_or_else(|| anyhow!("the signingCertificateV2 attribute names no certificate"))?;
        let ess_hash = match &first.hash_algorithm {
            None => HashAlg::Sha256,
            Some(alg) => digest_hash(&alg.oid)?,
        };
        let cert_der = cert.to_der().context("the TSA certificate")?;
        if first.cert_hash.as_bytes() != digest(ess_hash, &cert_der).as_slice() {
            bail!("the signingCertificateV2 attribute names another certificate than the signer's");
        }
    }
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .context("the TSA certificate's public key")?;
    let key = AnyPublicKey::from_spki(&spki).context("the TSA certificate's public key")?;
    check_signature_algorithm(&signer.signature_algorithm.oid, &key, hash)?;
    let signed = attrs.to_der().context("the signed attributes")?;
    key.verify_digest(
        &digest(hash, &signed),
        hash,
        signer.signature.as_bytes(),
        false,
    )
    .context("the TSA's signature does not verify with the certificate in the token")?;

    // 4. The certificate is for time stamping only, and valid at the token's time.
    check_time_stamping_eku(cert)?;
    let time = gen_time(&tst.gen_time)?;
    let validity = &cert.tbs_certificate.validity;
    if time < validity.not_before.to_system_time() || time > validity.not_after.to_system_time() {
        bail!("the token's time is outside the TSA certificate's validity");
    }
    Ok(Timestamp {
        response: Vec::new(),
        token: token.to_vec(),
        certificate: cert.clone(),
        time,
    })
}

/// `genTime`: `YYYYMMDDhhmmss[.f…]Z` (RFC 3161, section 2.4.2: UTC, fractions without
/// trailing zeros).
fn gen_time(any: &Any) -> Result<SystemTime> {
    let bad = || anyhow!("the TSTInfo's genTime is not a UTC GeneralizedTime");
    if any.tag() != Tag::GeneralizedTime {
        return Err(bad());
    }
    let text = std::str::from_utf8(any.value()).map_err(|_| bad())?;
    let body = text.strip_suffix('Z').ok_or_else(bad)?;
    let (whole, fraction) = match body.split_once('.') {
        Some((w, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (w, f),
        Some(_) => return Err(bad()),
        None => (body, ""),
    };
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| whole[r].parse::<u32>().map_err(|_| bad());
    let month =
        time::Month::try_from(u8::try_from(n(4..6)?).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(n(0..4)? as i32, month, n(6..8)? as u8)
        .map_err(|_| bad())?;
    let clock = time::Time::from_hms(n(8..10)? as u8, n(10..12)? as u8, n(12..14)? as u8)
        .map_err(|_| bad())?;
    let seconds = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    let nanos: u32 = format!("{fraction:0<9}")[..9].parse().map_err(|_| bad())?;
    let since = u64::try_from(seconds).map_err(|_| bad())?;
    Ok(SystemTime::UNIX_EPOCH + Duration::new(since, nanos))
}

/// The TSAs a verifier trusts: certificates from a PEM file (a TSA's chain, as a
/// Sigstore trusted root's `timestampAuthorities[].certChain` lists it). A token's
/// signing certificate is trusted if it is one of them or is issued and signed by one.
#[derive(Debug, Clone)]
pub struct TrustedTsa {
    certs: Vec<Certificate>,
}

impl TrustedTsa {
    /// From PEM certificates.
    pub fn from_pem(pem: &[u8]) -> Result<TrustedTsa> {
        let certs =
            Certificate::load_pem_chain(pem).map_err(|e| anyhow!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            bail!("no certificate in it");
        }
        Ok(TrustedTsa { certs })
    }

    /// From DER certificates (a trusted root's `certChain.certificates[].rawBytes`).
    pub fn from_der(certs: &[Vec<u8>]) -> Result<TrustedTsa> {
        let certs = certs
            .iter()
            .map(|c| Certificate::from_der(c).map_err(|e| anyhow!("not a DER certificate: {e}")))
            .collect::<Result<Vec<_>>>()?;
        if certs.is_empty() {
            bail!("no certificate in it");
        }
        Ok(TrustedTsa { certs })
    }

    /// Checks a bundle's `signedTimestamp` (a DER `TimeStampResp`) over `signature`:
    /// a sound token (as [`check_token`] says) signed by a trusted TSA. Returns its time.
    pub fn check(&self, response: &[u8], signature: &[u8]) -> Result<SystemTime> {
        let resp = TimeStampResp::from_der(response)
            .map_err(|e| anyhow!("not an RFC 3161 TimeStampResp: {e}"))?;
        if resp.status.status > 1 {
            bail!("status {} (not granted)", resp.status.status);
        }
        let token = resp
            .time_stamp_token
            .ok_or_else(|| anyhow!("no timeStampToken"))?
            .to_der()?;
        let stamp = check_token_with(&token, &Sha256::digest(signature), None, &self.certs)?;
        let cert = &stamp.certificate;
        let der = cert.to_der()?;
        for t in &self.certs {
            if t.to_der()? == der {
                return Ok(stamp.time);
            }
        }
        for t in self
            .certs
            .iter()
            .filter(|t| t.tbs_certificate.subject == cert.tbs_certificate.issuer)
        {
            if issued_by(cert, t).is_ok() {
                return Ok(stamp.time);
            }
        }
        bail!("the TSA certificate in the token is not one of the trusted TSA certificates, nor issued by one")
    }
}

/// Checks that `issuer`'s key signed `cert`.
pub(crate) fn issued_by(cert: &Certificate, issuer: &Certificate) -> Result<()> {
    let spki = issuer.tbs_certificate.subject_public_key_info.to_der()?;
    let key = AnyPublicKey::from_spki(&spki)?;
    let oid = &cert.signature_algorithm.oid;
    let hash = match *oid {
        ID_ECDSA_SHA256 | ID_RSA_SHA256 => HashAlg::Sha256,
        ID_ECDSA_SHA384 | ID_RSA_SHA384 => HashAlg::Sha384,
        ID_ECDSA_SHA512 | ID_RSA_SHA512 => HashAlg::Sha512,
        other => bail!("certificate signature algorithm {other} is not supported"),
    };
    check_signature_algorithm(oid, &key, hash)?;
    let tbs = cert.tbs_certificate.to_der()?;
    let sig = cert
        .signature
        .as_bytes()
        .ok_or_else(|| anyhow!("the certificate's signature is not whole bytes"))?;
    key.verify_digest(&digest(hash, &tbs), hash, sig, false)?;
    Ok(())
}

fn digest_hash(oid: &ObjectIdentifier) -> Result<HashAlg> {
    match *oid {
        ID_SHA256 => Ok(HashAlg::Sha256),
        ID_SHA384 => Ok(HashAlg::Sha384),
        ID_SHA512 => Ok(HashAlg::Sha512),
        other => bail!("the token's digest algorithm {other} is not SHA-256/384/512"),
    }
}

/// `data` hashed with `hash`.
pub fn digest(hash: HashAlg, data: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// ECDSA or RSA PKCS#1 v1.5, matching the key, and naming the digest's hash if it
/// names one.
fn check_signature_algorithm(
    oid: &ObjectIdentifier,
    key: &AnyPublicKey,
    hash: HashAlg,
) -> Result<()> {
    let (ecdsa, named) = match *oid {
        ID_EC_PUBLIC_KEY => (true, None),
        ID_ECDSA_SHA256 => (true, Some(HashAlg::Sha256)),
        ID_ECDSA_SHA384 => (true, Some(HashAlg::Sha384)),
        ID_ECDSA_SHA512 => (true, Some(HashAlg::Sha512)),
        ID_RSA_ENCRYPTION => (false, None),
        ID_RSA_SHA256 => (false, Some(HashAlg::Sha256)),
        ID_RSA_SHA384 => (false, Some(HashAlg::Sha384)),
        ID_RSA_SHA512 => (false, Some(HashAlg::Sha512)),
        other => bail!("the token's signature algorithm {other} is not ECDSA or RSA PKCS#1 v1.5"),
    };
    let key_is_ecdsa = matches!(key, AnyPublicKey::P256(_) | AnyPublicKey::P384(_));
    let key_is_rsa = matches!(key, AnyPublicKey::Rsa(_));
    if (ecdsa && !key_is_ecdsa) || (!ecdsa && !key_is_rsa) {
        bail!("the token's signature algorithm {oid} does not fit the TSA certificate's key");
    }
    if named.is_some_and(|n| n != hash) {
        bail!("the signature algorithm {oid} names another hash than the digest algorithm");
    }
    Ok(())
}

/// The certificate in the token that `sid` names.
fn signer_certificate<'a>(
    sd: &'a SignedData,
    sid: &SignerIdentifier,
    trusted: &'a [Certificate],
) -> Result<&'a Certificate> {
    let carried = sd.certificates.as_ref();
    if carried.is_none() && trusted.is_empty() {
        bail!("the token carries no certificate (the query asked for one)");
    }
    carried
        .map(|c| c.0.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => Some(c),
            CertificateChoices::Other(_) => None,
        })
        .chain(trusted.iter())
        .find(|c| match sid {
            SignerIdentifier::IssuerAndSerialNumber(is) => {
                c.tbs_certificate.issuer == is.issuer
                    && c.tbs_certificate.serial_number == is.serial_number
            }
            SignerIdentifier::SubjectKeyIdentifier(ski) => {
                c.tbs_certificate.extensions.iter().flatten().any(|e| {
                    e.extn_id == ID_SUBJECT_KEY_ID
                        && e.extn_value.as_bytes() == ski.to_der().unwrap_or_default()
                })
            }
        })
        .ok_or_else(|| anyhow!("the token carries no certificate of its signer"))
}

/// RFC 3161, section 2.3: the TSA's certificate has one extended key usage,
/// timeStamping, and the extension is critical.
fn check_time_stamping_eku(cert: &Certificate) -> Result<()> {
    let ext = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_EXT_KEY_USAGE)
        .ok_or_else(|| anyhow!("the TSA certificate has no extended key usage"))?;
    if !ext.critical {
        bail!("the TSA certificate's extended key usage is not critical");
    }
    let eku = ExtendedKeyUsage::from_der(ext.extn_value.as_bytes())
        .map_err(|e| anyhow!("the TSA certificate's extended key usage: {e}"))?;
    if eku.0 != [ID_KP_TIME_STAMPING] {
        bail!("the TSA certificate's extended key usage is not timeStamping alone");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_encodes_imprint_nonce_and_cert_req() {
        let der = request(&[7u8; 32], &[0x80, 0, 0, 0, 0, 0, 0, 1]).unwrap();
        let back = TimeStampReq::from_der(&der).unwrap();
        assert_eq!(back.version, 1);
        assert!(back.cert_req);
        assert_eq!(back.message_imprint.hashed_message.as_bytes(), &[7u8; 32]);
        // A leading zero keeps a nonce with its top bit set positive.
        assert_eq!(
            back.nonce.unwrap().as_bytes(),
            &[0, 0x80, 0, 0, 0, 0, 0, 0, 1]
        );
        let small = nonce_int(&[0, 0, 0, 0, 0, 0, 0, 5]).unwrap();
        assert_eq!(small.as_bytes(), &[5]);
    }

    #[test]
    fn gen_time_reads_fractions_and_refuses_local_times() {
        let t = |s: &str| gen_time(&Any::new(Tag::GeneralizedTime, s.as_bytes()).unwrap());
        let whole = t("20261201153440Z").unwrap();
        let since = whole.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since.as_secs(), 1_796_139_280);
        let frac = t("20261201153440.727Z").unwrap();
        assert_eq!(
            frac.duration_since(whole).unwrap(),
            Duration::from_millis(727)
        );
        for bad in [
            "20261201153440",
            "20261301153440Z",
            "2026120115344Z",
            "20261201153440.Z",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    /// What a test TSA gets wrong.
    #[derive(Clone, Copy, PartialEq)]
    enum Flaw {
        None,
        /// The TSTInfo is changed after its digest was signed.
        TstChangedAfterSigning,
        /// The signed attributes are signed by another key than the certificate's.
        OtherKey,
        /// The signed contentType is id-data, not TSTInfo.
        ContentType,
        /// The token carries no certificate.
        NoCertificate,
        /// The signed signingCertificateV2 names another certificate.
        OtherEssCertificate,
        /// Not a flaw: the imprint's SHA-256 AlgorithmIdentifier has NULL parameters,
        /// as Sigstore's timestamp-authority writes it.
        NullParameters,
        /// The imprint's SHA-256 AlgorithmIdentifier has parameters other than NULL.
        OtherParameters,
    }

    const KEY: [u8; 32] = [0x11; 32];
    const OTHER_KEY: [u8; 32] = [0x22; 32];
    const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");

    fn ecdsa(key: &[u8; 32], msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        let key = p256::ecdsa::SigningKey::from_slice(key).unwrap();
        let sig: p256::ecdsa::Signature = key.sign(msg);
        sig.to_der().as_bytes().to_vec()
    }

    /// A self-signed TSA certificate for [`KEY`], with an extended key usage of `ekus`
    /// (critical or not), or none.
    fn certificate(eku: Option<(bool, Vec<ObjectIdentifier>)>) -> Certificate {
        certificate_for(&KEY, eku)
    }

    /// The same for another key.
    fn certificate_for(
        secret: &'static [u8; 32],
        eku: Option<(bool, Vec<ObjectIdentifier>)>,
    ) -> Certificate {
        use spki::EncodePublicKey as _;
        let key = p256::ecdsa::SigningKey::from_slice(secret).unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let material = crate::ca::KeyMaterial::from_spki(spki.as_bytes()).unwrap();
        let signer = crate::ca::RemoteSigner::new(material, |msg: &[u8]| Ok(ecdsa(secret, msg)));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test tsa");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42]));
        if let Some((critical, oids)) = eku {
            let mut ext = rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 37],
                ExtendedKeyUsage(oids).to_der().unwrap(),
            );
            ext.set_criticality(critical);
            params.custom_extensions.push(ext);
        }
        let der = params.self_signed(&signer).unwrap().der().to_vec();
        Certificate::from_der(&der).unwrap()
    }

    fn time_stamping() -> Option<(bool, Vec<ObjectIdentifier>)> {
        Some((true, vec![ID_KP_TIME_STAMPING]))
    }

    /// A `TimeStampResp` over `imprint` with `nonce`, signed by [`KEY`] in `cert`.
    fn response(cert: &Certificate, imprint: &[u8; 32], nonce: &[u8; 8], flaw: Flaw) -> Vec<u8> {
        use cms::cert::IssuerAndSerialNumber;
        use cms::content_info::CmsVersion;
        use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignerInfo, SignerInfos};
        use der::asn1::SetOfVec;
        use x509_cert::attr::Attribute;

        let sha256 = AlgorithmIdentifierOwned {
            oid: ID_SHA256,
            parameters: None,
        };
        let mut tst = TstInfo {
            version: 1,
            policy: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.1"),
            message_imprint: sha256_imprint(imprint).unwrap(),
            serial_number: Int::new(&[0x01, 0x02]).unwrap(),
            gen_time: Any::new(Tag::GeneralizedTime, b"20261201153440.5Z".as_slice()).unwrap(),
            accuracy: Some(Accuracy {
                seconds: Some(1),
                millis: None,
                micros: None,
            }),
            ordering: false,
            nonce: Some(nonce_int(nonce).unwrap()),
            tsa: None,
            extensions: None,
        };
        match flaw {
            Flaw::NullParameters => {
                tst.message_imprint.hash_algorithm.parameters =
                    Some(Any::new(Tag::Null, [0u8; 0].as_slice()).unwrap());
            }
            Flaw::OtherParameters => {
                tst.message_imprint.hash_algorithm.parameters =
                    Some(Any::new(Tag::OctetString, [1u8].as_slice()).unwrap());
            }
            _ => {}
        }
        let signed_tst = tst.to_der().unwrap();
        if flaw == Flaw::TstChangedAfterSigning {
            tst.serial_number = Int::new(&[0x01, 0x03]).unwrap();
        }
        let content_type = if flaw == Flaw::ContentType {
            ID_DATA
        } else {
            ID_CT_TSTINFO
        };
        let attr = |oid, value: Any| Attribute {
            oid,
            values: SetOfVec::try_from(vec![value]).unwrap(),
        };
        let mut cert_hash = Sha256::digest(cert.to_der().unwrap()).to_vec();
        if flaw == Flaw::OtherEssCertificate {
            cert_hash[0] ^= 1;
        }
        let ess = SigningCertificateV2 {
            certs: vec![EssCertIdV2 {
                hash_algorithm: None,
                cert_hash: OctetString::new(cert_hash).unwrap(),
                issuer_serial: None,
            }],
            policies: None,
        };
        let attrs = SetOfVec::try_from(vec![
            attr(ID_SIGNING_CERTIFICATE_V2, Any::encode_from(&ess).unwrap()),
            attr(ID_CONTENT_TYPE, Any::encode_from(&content_type).unwrap()),
            attr(
                ID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(Sha256::digest(&signed_tst).to_vec()).unwrap())
                    .unwrap(),
            ),
        ])
        .unwrap();
        let signing_key = if flaw == Flaw::OtherKey {
            &OTHER_KEY
        } else {
            &KEY
        };
        let signature = ecdsa(signing_key, &attrs.to_der().unwrap());
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: cert.tbs_certificate.issuer.clone(),
                serial_number: cert.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: sha256.clone(),
            signed_attrs: Some(attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ID_ECDSA_SHA256,
                parameters: None,
            },
            signature: OctetString::new(signature).unwrap(),
            unsigned_attrs: None,
        };
        let certificates = (flaw != Flaw::NoCertificate).then(|| {
            CertificateSet(
                SetOfVec::try_from(vec![CertificateChoices::Certificate(cert.clone())]).unwrap(),
            )
        });
        let sd = SignedData {
            version: CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![sha256]).unwrap(),
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_CT_TSTINFO,
                econtent: Some(
                    Any::encode_from(&OctetString::new(tst.to_der().unwrap()).unwrap()).unwrap(),
                ),
            },
            certificates,
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).unwrap()),
        };
        let token = ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&sd).unwrap(),
        };
        TimeStampResp {
            status: PkiStatusInfo {
                status: 0,
                status_string: None,
                fail_info: None,
            },
            time_stamp_token: Some(Any::encode_from(&token).unwrap()),
        }
        .to_der()
        .unwrap()
    }

    fn refusal(cert: &Certificate, flaw: Flaw, imprint: [u8; 32], nonce: [u8; 8]) -> String {
        let answer = response(cert, &[7; 32], &[9; 8], flaw);
        let e = check_response(&answer, &imprint, &nonce).unwrap_err();
        format!("{e:#}")
    }

    #[test]
    fn a_sound_token_passes_and_keeps_the_answer() {
        let cert = certificate(time_stamping());
        let answer = response(&cert, &[7; 32], &[9; 8], Flaw::None);
        let stamp = check_response(&answer, &[7; 32], &[9; 8]).unwrap();
        assert_eq!(stamp.response, answer);
        assert!(answer.ends_with(&stamp.token));
        let since = stamp.time.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since, Duration::from_millis(1_796_139_280_500));
        // The token alone checks out too, without a nonce to compare.
        check_token(&stamp.token, &[7; 32], None).unwrap();
    }

    #[test]
    fn an_imprint_naming_sha256_with_null_parameters_is_accepted_and_others_are_not() {
        // RFC 5754 section 2: SHA-256 with absent or NULL parameters; Sigstore's TSA
        // writes NULL.
        let cert = certificate(time_stamping());
        let answer = response(&cert, &[7; 32], &[9; 8], Flaw::NullParameters);
        check_response(&answer, &[7; 32], &[9; 8]).unwrap();
        let answer = response(&cert, &[7; 32], &[9; 8], Flaw::OtherParameters);
        let e = check_response(&answer, &[7; 32], &[9; 8]).unwrap_err();
        assert!(
            format!("{e:#}").contains("message imprint is not SHA-256 of the signature"),
            "{e:#}"
        );
        // NULL parameters do not make another imprint pass.
        let answer = response(&cert, &[8; 32], &[9; 8], Flaw::NullParameters);
        assert!(check_response(&answer, &[7; 32], &[9; 8]).is_err());
    }

    #[test]
    fn each_flaw_of_a_token_is_refused_and_named() {
        let cert = certificate(time_stamping());
        let cases = [
            (
                Flaw::None,
                [8; 32],
                [9; 8],
                "message imprint is not SHA-256 of the signature",
            ),
            (Flaw::None, [7; 32], [8; 8], "is not the query's"),
            (
                Flaw::TstChangedAfterSigning,
                [7; 32],
                [9; 8],
                "messageDigest is not the TSTInfo's",
            ),
            (Flaw::OtherKey, [7; 32], [9; 8], "signature does not verify"),
            (
                Flaw::ContentType,
                [7; 32],
                [9; 8],
                "signed contentType is 1.2.840.113549.1.7.1",
            ),
            (
                Flaw::NoCertificate,
                [7; 32],
                [9; 8],
                "carries no certificate",
            ),
            (
                Flaw::OtherEssCertificate,
                [7; 32],
                [9; 8],
                "names another certificate than the signer's",
            ),
        ];
        for (flaw, imprint, nonce, said) in cases {
            let e = refusal(&cert, flaw, imprint, nonce);
            assert!(e.contains(said), "{said}: {e}");
        }
    }

    #[test]
    fn the_certificate_must_be_for_time_stamping_alone_and_critically() {
        let code_signing = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
        let cases = [
            (None, "has no extended key usage"),
            (Some((false, vec![ID_KP_TIME_STAMPING])), "is not critical"),
            (
                Some((true, vec![ID_KP_TIME_STAMPING, code_signing])),
                "not timeStamping alone",
            ),
            (Some((true, vec![code_signing])), "not timeStamping alone"),
        ];
        for (eku, said) in cases {
            let cert = certificate(eku);
            let e = refusal(&cert, Flaw::None, [7; 32], [9; 8]);
            assert!(e.contains(said), "{said}: {e}");
        }
    }

    #[test]
    fn a_verifier_trusts_only_the_tsa_it_names() {
        use der::EncodePem as _;
        let cert = certificate(time_stamping());
        let answer = response(&cert, &Sha256::digest(b"sig").into(), &[9; 8], Flaw::None);
        let pem = cert.to_pem(der::pem::LineEnding::LF).unwrap();
        let trusted = TrustedTsa::from_pem(pem.as_bytes()).unwrap();
        trusted.check(&answer, b"sig").unwrap();
        // Over another signature: refused.
        let e = trusted.check(&answer, b"other").unwrap_err();
        assert!(format!("{e:#}").contains("message imprint"), "{e:#}");
        // Another TSA of the same name (another key): not trusted.
        let other = certificate_for(&OTHER_KEY, time_stamping());
        let other_pem = other.to_pem(der::pem::LineEnding::LF).unwrap();
        let e = TrustedTsa::from_pem(other_pem.as_bytes())
            .unwrap()
            .check(&answer, b"sig")
            .unwrap_err();
        assert!(format!("{e:#}").contains("not one of the trusted"), "{e:#}");
    }

    #[test]
    fn garbage_and_refusals_are_named() {
        let e = check_response(b"<html>", &[0; 32], &[0; 8]).unwrap_err();
        assert!(
            format!("{e:#}").contains("not an RFC 3161 TimeStampResp"),
            "{e:#}"
        );
        let refused = TimeStampResp {
            status: PkiStatusInfo {
                status: 2,
                status_string: Some(vec!["bad alg".into()]),
                fail_info: None,
            },
            time_stamp_token: None,
        }
        .to_der()
        .unwrap();
        let e = check_response(&refused, &[0; 32], &[0; 8]).unwrap_err();
        assert!(
            format!("{e:#}").contains("status 2 (not granted): bad alg"),
            "{e:#}"
        );
    }
}
