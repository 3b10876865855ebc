//! Fulcio CA certificates made with `rcgen` over keys that never leave the agent.
//!
//! The profiles follow Fulcio's docs/certificate-specification.md:
//! - **root**: subject CN and O, issuer = subject, keyUsage certSign + cRLSign
//!   (critical), basicConstraints CA:TRUE pathlen 1 (critical), a random positive
//!   160-bit serial, a subject key identifier, no EKU;
//! - **intermediate**: keyUsage certSign + cRLSign, EKU codeSigning only, CA:TRUE
//!   pathlen 0, SKID, AKI = the root's SKID, validity inside the root's;
//! - **leaf** (what Fulcio's `kmsca` issues, for tests and checks): 10 minutes,
//!   digitalSignature, EKU codeSigning, an e-mail SAN, no subject;
//! - **timestamping leaf** (`waxseal ca tsa`, as sigstore/timestamp-authority requires
//!   its signer): CN and O, basicConstraints CA:FALSE (critical), keyUsage
//!   digitalSignature only (critical), extendedKeyUsage timeStamping only and
//!   critical (RFC 3161 2.3), SKID, AKI, validity inside the issuer's.
//!
//! rcgen builds the TBSCertificate and hands it to [`RemoteSigner`], whose closure asks
//! the agent (purpose `x509-tbs`, or a digest through the KMS plug-in). Every result is
//! parsed back and its signature checked here before anyone sees it.

use std::cell::RefCell;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber, SignatureAlgorithm, SigningKey,
};
use sha2::{Digest, Sha256, Sha384, Sha512};
use spki::der::Decode;
use time::{Duration, OffsetDateTime};
use waxseal_proto::proto::HashAlg;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

use crate::verify::AnyPublicKey;

/// A public key as rcgen needs it: the SubjectPublicKeyInfo's key bits and the
/// signature algorithm this key makes.
#[derive(Debug, Clone)]
pub struct KeyMaterial {
    spki: Vec<u8>,
    bits: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    hash: HashAlg,
}

impl KeyMaterial {
    /// From a DER SubjectPublicKeyInfo (ECDSA P-256/P-384, RSA or Ed25519).
    pub fn from_spki(spki: &[u8]) -> Result<KeyMaterial> {
        let (alg, hash) = match AnyPublicKey::from_spki(spki)? {
            AnyPublicKey::P256(_) => (&rcgen::PKCS_ECDSA_P256_SHA256, HashAlg::Sha256),
            AnyPublicKey::P384(_) => (&rcgen::PKCS_ECDSA_P384_SHA384, HashAlg::Sha384),
            AnyPublicKey::Rsa(_) => (&rcgen::PKCS_RSA_SHA256, HashAlg::Sha256),
            AnyPublicKey::Ed25519(_) => (&rcgen::PKCS_ED25519, HashAlg::Sha512),
        };
        let info = spki::SubjectPublicKeyInfoRef::from_der(spki)
            .map_err(|e| anyhow!("bad SubjectPublicKeyInfo: {e}"))?;
        let bits = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| anyhow!("the public key is not a whole number of bytes"))?
            .to_vec();
        Ok(KeyMaterial {
            spki: spki.to_vec(),
            bits,
            alg,
            hash,
        })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The hash of the signatures this key makes in certificates (SHA-384 for P-384).
    pub fn hash(&self) -> HashAlg {
        self.hash
    }

    /// The subject key identifier: the leftmost 160 bits of the SHA-256 of the
    /// subjectPublicKey bits (RFC 7093, section 2, method 1).
    pub fn key_id(&self) -> Vec<u8> {
        Sha256::digest(&self.bits)[..20].to_vec()
    }
}

impl PublicKeyData for KeyMaterial {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A boxed signing function for [`RemoteSigner`].
pub type SignFn<'a> = Box<dyn Fn(&[u8]) -> Result<Vec<u8>> + 'a>;

/// A key that signs elsewhere: `sign` gets the DER TBSCertificate and returns the
/// signature (DER for ECDSA). A failure is kept for [`RemoteSigner::take_error`],
/// since rcgen's own error cannot carry it.
pub struct RemoteSigner<F> {
    key: KeyMaterial,
    sign: F,
    error: RefCell<Option<anyhow::Error>>,
}

impl<F> std::fmt::Debug for RemoteSigner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSigner")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>>> RemoteSigner<F> {
    /// A signer for `key` that signs with `sign`.
    pub fn new(key: KeyMaterial, sign: F) -> Self {
        RemoteSigner {
            key,
            sign,
            error: RefCell::new(None),
        }
    }

    /// The public key.
    pub fn key(&self) -> &KeyMaterial {
        &self.key
    }

    /// Explains an rcgen failure with the signer's own error when it had one.
    pub fn explain(&self, e: rcgen::Error) -> anyhow::Error {
        match self.error.borrow_mut().take() {
            Some(own) => own,
            None => anyhow!("cannot build the certificate: {e}"),
        }
    }
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>>> PublicKeyData for RemoteSigner<F> {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>>> SigningKey for RemoteSigner<F> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        (self.sign)(msg).map_err(|e| {
            *self.error.borrow_mut() = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A random positive serial number of 160 bits (RFC 5280 allows 20 octets).
pub fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow!("no randomness for a serial: {e}"))?;
    // Positive, and still 20 octets long once encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn name(cn: &str, org: &str) -> Result<DistinguishedName> {
    if cn.trim().is_empty() || org.trim().is_empty() {
        bail!("the common name (--cn) and the organization (--org) must not be empty");
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    Ok(dn)
}

/// The root profile: self-signed, `days` long from now.
pub fn root_params(cn: &str, org: &str, days: u32, key: &KeyMaterial) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn, org)?;
    p.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    p.not_before = now;
    p.not_after = now + Duration::days(i64::from(days));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
    Ok(p)
}

/// What the intermediate profile needs to know of its root.
#[derive(Debug, Clone)]
pub struct RootInfo {
    /// The DER certificate.
    pub der: Vec<u8>,
    /// Its DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// Validity.
    pub not_before: OffsetDateTime,
    /// Validity.
    pub not_after: OffsetDateTime,
    /// Subject, for messages.
    pub subject: String,
}

impl RootInfo {
    /// Reads a CA certificate (PEM or DER) and checks it can issue certificates.
    pub fn parse(data: &[u8]) -> Result<RootInfo> {
        let der = pem_or_der(data, "CERTIFICATE")?;
        let (rest, cert) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            bail!("{} bytes follow the certificate", rest.len());
        }
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => bail!(
                "{} is not a CA certificate (basicConstraints CA:TRUE missing)",
                cert.subject()
            ),
        }
        if !matches!(cert.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign()) {
            bail!(
                "{} may not sign certificates (keyUsage keyCertSign missing)",
                cert.subject()
            );
        }
        if cert.subject_key_identifier().is_none() {
            bail!(
                "{} has no subject key identifier, which the intermediate's authority key identifier must name",
                cert.subject()
            );
        }
        Ok(RootInfo {
            spki: cert.public_key().raw.to_vec(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            subject: cert.subject().to_string(),
            der,
        })
    }
}

/// Extension to find an X.509 certificate's SKID without importing the trait everywhere.
trait SubjectKeyId {
    fn subject_key_identifier(&self) -> Option<Vec<u8>>;
}

impl SubjectKeyId for X509Certificate<'_> {
    fn subject_key_identifier(&self) -> Option<Vec<u8>> {
        self.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
    }
}

/// The intermediate profile: `days` long from now, clipped inside the root's validity.
pub fn intermediate_params(
    cn: &str,
    org: &str,
    days: u32,
    key: &KeyMaterial,
    root: &RootInfo,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn, org)?;
    p.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    p.not_before = now.max(root.not_before);
    p.not_after = (now + Duration::days(i64::from(days))).min(root.not_after);
    if p.not_after <= p.not_before {
        bail!(
            "the root {} is valid only until {}: no room for an intermediate",
            root.subject,
            root.not_after
        );
    }
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The leaf profile of Fulcio's `kmsca`: 10 minutes from now, digitalSignature,
/// codeSigning, the e-mail address as the only name.
pub fn leaf_params(email: &str, key: &KeyMaterial) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::Rfc822Name(email.try_into()?)];
    p.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    p.not_before = now;
    p.not_after = now + Duration::minutes(10);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// DER of an extendedKeyUsage value naming only timeStamping (1.3.6.1.5.5.7.3.8).
const EKU_TIME_STAMPING: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08,
];

/// The timestamping leaf profile: `days` long from now, clipped inside the issuer's
/// validity. rcgen writes extendedKeyUsage non-critical, so the extension is written
/// here, critical, as RFC 3161 section 2.3 and sigstore/timestamp-authority require.
pub fn tsa_params(
    cn: &str,
    org: &str,
    days: u32,
    key: &KeyMaterial,
    issuer: &RootInfo,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn, org)?;
    p.serial_number = Some(random_serial()?);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    p.not_before = now.max(issuer.not_before);
    p.not_after = (now + Duration::days(i64::from(days))).min(issuer.not_after);
    if p.not_after <= p.not_before {
        bail!(
            "the issuer {} is valid only until {}: no room for a timestamping certificate",
            issuer.subject,
            issuer.not_after
        );
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut eku =
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], EKU_TIME_STAMPING.to_vec());
    eku.set_criticality(true);
    p.custom_extensions = vec![eku];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The DER certificates of a PEM file (every CERTIFICATE block, in order), at most
/// `max`.
pub fn pem_certificates(data: &[u8], max: usize) -> Result<Vec<Vec<u8>>> {
    let text = std::str::from_utf8(data).map_err(|_| anyhow!("not a PEM file (not UTF-8)"))?;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[start..];
        let end = block
            .find("-----END CERTIFICATE-----")
            .ok_or_else(|| anyhow!("a -----BEGIN CERTIFICATE----- block has no end"))?;
        let end = end + "-----END CERTIFICATE-----".len();
        if out.len() == max {
            bail!("more than {max} certificates");
        }
        out.push(pem_or_der(&block.as_bytes()[..end], "CERTIFICATE")?);
        rest = &block[end..];
    }
    if out.is_empty() {
        bail!("no -----BEGIN CERTIFICATE----- block");
    }
    Ok(out)
}

/// Checks a chain, leaf (or lowest CA) first and a self-signed root last: every
/// certificate parses, names the next as its issuer, is signed by the next one's key
/// and lies inside its validity; every certificate but the first is a CA; the root
/// signed itself. `purpose`, when given, is an extended key usage OID that every CA
/// certificate in the chain must allow when it lists any (Go's crypto/x509, which
/// sigstore/timestamp-authority and Fulcio verify with, requires this nesting).
pub fn check_chain(ders: &[Vec<u8>], purpose: Option<(&str, &str)>) -> Result<()> {
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (rest, c) = X509Certificate::from_der(d)
                .map_err(|e| anyhow!("certificate {i} of the chain does not parse: {e}"))?;
            if !rest.is_empty() {
                bail!("certificate {i} of the chain has trailing bytes");
            }
            Ok(c)
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(root) = certs.last() else {
        bail!("the chain is empty");
    };
    if root.subject().as_raw() != root.issuer().as_raw() {
        bail!(
            "the chain ends with {}, issued by {}: it must end with a self-signed root",
            root.subject(),
            root.issuer()
        );
    }
    for (i, cert) in certs.iter().enumerate() {
        let issuer = certs.get(i + 1).unwrap_or(root);
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if i > 0 && !is_ca {
            bail!(
                "{} issues a certificate in the chain but is not a CA",
                cert.subject()
            );
        }
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            bail!(
                "{} names {} as its issuer, but the next certificate of the chain is {}",
                cert.subject(),
                cert.issuer(),
                issuer.subject()
            );
        }
        check_signature(&ders[i], issuer.public_key().raw)
            .with_context(|| format!("{} is not signed by {}", cert.subject(), issuer.subject()))?;
        let (v, w) = (cert.validity(), issuer.validity());
        if v.not_before < w.not_before || v.not_after > w.not_after {
            bail!(
                "{} is valid {} to {}, outside its issuer's {} to {}",
                cert.subject(),
                v.not_before,
                v.not_after,
                w.not_before,
                w.not_after
            );
        }
        if let (Some((oid, label)), true) = (purpose, is_ca) {
            if let Ok(Some(eku)) = cert.extended_key_usage() {
                let e = eku.value;
                let listed = e.any
                    || e.other.iter().any(|o| o.to_id_string() == oid)
                    || (oid == "1.3.6.1.5.5.7.3.8" && e.time_stamping)
                    || (oid == "1.3.6.1.5.5.7.3.3" && e.code_signing);
                if !listed {
                    bail!(
                        "the CA {} limits its extended key usages and {label} is not among them, so Go's crypto/x509 (sigstore/timestamp-authority, Fulcio) refuses the chain for {label}. Issue from a CA without extendedKeyUsage or one that lists {label} (e.g. the root)",
                        cert.subject()
                    );
                }
            }
        }
    }
    Ok(())
}

/// An issuer over `signer` from its CA certificate: its subject (the same attribute
/// types, strings and order) and its subject key identifier.
pub fn issuer_from_cert<S: SigningKey>(ca_der: &[u8], signer: S) -> Result<Issuer<'static, S>> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let (_, cert) = X509Certificate::from_der(ca_der)
        .map_err(|e| anyhow!("the CA certificate does not parse: {e}"))?;
    let mut dn = DistinguishedName::new();
    for rdn in cert.subject().iter() {
        let attrs: Vec<_> = rdn.iter().collect();
        let [attr] = attrs.as_slice() else {
            bail!("the CA's subject has a multi-valued name part, which waxseal cannot reproduce");
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| anyhow!("the CA's subject has an oversized attribute type"))?
            .collect();
        let text = std::str::from_utf8(attr.attr_value().data)
            .map_err(|_| anyhow!("the CA's subject holds a string that is not UTF-8"))?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(text.try_into()?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into()?),
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            other => bail!("the CA's subject holds a {other:?}, which waxseal cannot reproduce"),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    let ski = cert
        .subject_key_identifier()
        .ok_or_else(|| anyhow!("the CA certificate has no subject key identifier"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(Issuer::new(params, signer))
}

/// Checks `der`'s signature with the issuer's SubjectPublicKeyInfo: the device's
/// work is checked before it is written anywhere.
pub fn check_signature(der: &[u8], issuer_spki: &[u8]) -> Result<()> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow!("the new certificate does not parse: {e}"))?;
    let hash = hash_of(&cert.signature_algorithm.algorithm)?;
    let digest = digest(hash, cert.tbs_certificate.as_ref());
    let key = AnyPublicKey::from_spki(issuer_spki)?;
    let message = if matches!(key, AnyPublicKey::Ed25519(_)) {
        cert.tbs_certificate.as_ref().to_vec()
    } else {
        digest
    };
    key.verify_digest(&message, hash, &cert.signature_value.data, false)
        .context("the certificate's signature does not verify with the issuer's key")?;
    Ok(())
}

/// A certificate's subject key identifier, if it has one.
pub fn subject_key_id(der: &[u8]) -> Option<Vec<u8>> {
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| c.subject_key_identifier())
}

/// Checks a DER CRL's signature with the issuer's SubjectPublicKeyInfo.
pub fn check_crl_signature(der: &[u8], issuer_spki: &[u8]) -> Result<()> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| anyhow!("the new CRL does not parse: {e}"))?;
    if !rest.is_empty() {
        bail!("bytes follow the new CRL");
    }
    let hash = hash_of(&crl.signature_algorithm.algorithm)?;
    let tbs = crl.tbs_cert_list.as_ref();
    let key = AnyPublicKey::from_spki(issuer_spki)?;
    let message = if matches!(key, AnyPublicKey::Ed25519(_)) {
        tbs.to_vec()
    } else {
        digest(hash, tbs)
    };
    key.verify_digest(&message, hash, &crl.signature_value.data, false)
        .context("the CRL's signature does not verify with the issuer's key")?;
    Ok(())
}

/// PEM text of DER bytes with `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A CSR's public key, after checking the CSR's signature with it.
pub fn csr_key(data: &[u8]) -> Result<(KeyMaterial, String)> {
    let der = pem_or_der(data, "CERTIFICATE REQUEST")?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| anyhow!("not a PKCS#10 certificate request: {e}"))?;
    if !rest.is_empty() {
        bail!("{} bytes follow the certificate request", rest.len());
    }
    let info = &csr.certification_request_info;
    let spki = info.subject_pki.raw.to_vec();
    let key = AnyPublicKey::from_spki(&spki).context("the request's public key")?;
    let hash = hash_of(&csr.signature_algorithm.algorithm)?;
    let message = if matches!(key, AnyPublicKey::Ed25519(_)) {
        info.raw.to_vec()
    } else {
        digest(hash, info.raw)
    };
    key.verify_digest(&message, hash, &csr.signature_value.data, false)
        .map_err(|_| {
            anyhow!(
                "the certificate request's signature does not verify with its own public key: it was altered, or not made by the holder of the key"
            )
        })?;
    Ok((KeyMaterial::from_spki(&spki)?, info.subject.to_string()))
}

fn hash_of(oid: &x509_parser::der_parser::Oid<'_>) -> Result<HashAlg> {
    Ok(
        if *oid == OID_SIG_ECDSA_WITH_SHA256 || *oid == OID_PKCS1_SHA256WITHRSA {
            HashAlg::Sha256
        } else if *oid == OID_SIG_ECDSA_WITH_SHA384 || *oid == OID_PKCS1_SHA384WITHRSA {
            HashAlg::Sha384
        } else if *oid == OID_SIG_ECDSA_WITH_SHA512
            || *oid == OID_PKCS1_SHA512WITHRSA
            || *oid == OID_SIG_ED25519
        {
            HashAlg::Sha512
        } else {
            bail!("unsupported signature algorithm {oid}")
        },
    )
}

/// The digest of `data`.
pub fn digest(hash: HashAlg, data: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// DER from PEM with the given label (the first such block), or DER as given.
pub fn pem_or_der(data: &[u8], label: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(data.to_vec());
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        if text.contains("-----BEGIN") {
            bail!("no {begin} block");
        }
        return Ok(data.to_vec());
    };
    let body = &text[start + begin.len()..];
    let stop = body
        .find(&end)
        .ok_or_else(|| anyhow!("{begin} without {end}"))?;
    let b64: String = body[..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow!("bad base64 in the {label} PEM block: {e}"))
}

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn serials_are_positive_and_160_bits() {
        for _ in 0..32 {
            let s = random_serial().unwrap();
            let b = s.as_ref();
            assert_eq!(b.len(), 20);
            assert_eq!(b[0] & 0xc0, 0x40);
        }
    }

    #[test]
    fn pem_round_trip() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        assert_eq!(
            pem_or_der(cert_pem(&der).as_bytes(), "CERTIFICATE").unwrap(),
            der
        );
        assert_eq!(pem_or_der(&der, "CERTIFICATE").unwrap(), der);
        assert!(pem_or_der(b"-----BEGIN FOO-----\n", "CERTIFICATE").is_err());
    }

    #[test]
    fn names_must_not_be_empty() {
        assert!(name("", "o").is_err());
        assert!(name("cn", " ").is_err());
    }
}
