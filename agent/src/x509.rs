//! What a `x509-tbs` request asks the agent to sign: a DER TBSCertificate, parsed so
//! that the policy can judge it and the log can say what was certified.
//!
//! The agent never signs a TBSCertificate it cannot read: trailing bytes, a version other
//! than 3, an inverted validity or a signature algorithm that does not fit the key are
//! refused. The hash comes from the TBSCertificate's own `signature` field, so the
//! certificate and its signature always agree.

use std::fmt;

use x509_parser::certificate::TbsCertificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Version};

use crate::proto::{HashAlg, KeyAlg};

/// The family of a signature algorithm named in a TBSCertificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigFamily {
    /// ecdsa-with-SHA256/384/512.
    Ecdsa,
    /// sha256/384/512WithRSAEncryption (PKCS#1 v1.5).
    RsaPkcs1,
    /// Ed25519 (the whole TBSCertificate is the message).
    Ed25519,
}

/// What kind of certificate a TBSCertificate makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// basicConstraints CA:TRUE.
    Ca,
    /// Anything else: an end-entity certificate.
    Leaf,
}

impl fmt::Display for CertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertKind::Ca => "ca",
            CertKind::Leaf => "leaf",
        })
    }
}

/// The fields of a TBSCertificate that policy and the log look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TbsSummary {
    /// Subject DN, RFC 4514 style.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// notBefore, as OpenSSL prints it (`Nov 30 12:00:00 2026 +00:00`).
    pub not_before: String,
    /// notAfter, likewise.
    pub not_after: String,
    /// `Some(pathlen)` for a CA (`Some(None)`: no path length constraint).
    pub ca: Option<Option<u32>>,
    /// Extended key usages, by name where known, else dotted OID.
    pub eku: Vec<String>,
    /// The hash of the signature algorithm.
    pub hash: HashAlg,
    /// The signature algorithm's family.
    pub family: SigFamily,
}

impl TbsSummary {
    /// Parses `der`, which must be exactly one TBSCertificate.
    pub fn parse(der: &[u8]) -> Result<TbsSummary, String> {
        let (rest, tbs) =
            TbsCertificate::from_der(der).map_err(|e| format!("not a DER TBSCertificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes follow the TBSCertificate; send exactly one",
                rest.len()
            ));
        }
        if tbs.version != X509Version::V3 {
            return Err(format!(
                "the TBSCertificate is X.509 version {}, not 3",
                u64::from(tbs.version.0) + 1
            ));
        }
        let alg = &tbs.signature.algorithm;
        let (family, hash) = if *alg == OID_SIG_ECDSA_WITH_SHA256 {
            (SigFamily::Ecdsa, HashAlg::Sha256)
        } else if *alg == OID_SIG_ECDSA_WITH_SHA384 {
            (SigFamily::Ecdsa, HashAlg::Sha384)
        } else if *alg == OID_SIG_ECDSA_WITH_SHA512 {
            (SigFamily::Ecdsa, HashAlg::Sha512)
        } else if *alg == OID_PKCS1_SHA256WITHRSA {
            (SigFamily::RsaPkcs1, HashAlg::Sha256)
        } else if *alg == OID_PKCS1_SHA384WITHRSA {
            (SigFamily::RsaPkcs1, HashAlg::Sha384)
        } else if *alg == OID_PKCS1_SHA512WITHRSA {
            (SigFamily::RsaPkcs1, HashAlg::Sha512)
        } else if *alg == OID_SIG_ED25519 {
            (SigFamily::Ed25519, HashAlg::Sha512)
        } else {
            return Err(format!(
                "signature algorithm {alg} is not one the agent signs with (ecdsa-with-SHA256/384/512, sha256/384/512WithRSAEncryption, Ed25519)"
            ));
        };
        let validity = tbs.validity();
        if validity.not_before > validity.not_after {
            return Err(format!(
                "the validity ends ({}) before it starts ({})",
                validity.not_after, validity.not_before
            ));
        }
        let mut ca = None;
        let mut eku = Vec::new();
        for ext in tbs.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) if bc.ca => ca = Some(bc.path_len_constraint),
                ParsedExtension::ExtendedKeyUsage(e) => {
                    let named = [
                        (e.any, "any"),
                        (e.server_auth, "serverAuth"),
                        (e.client_auth, "clientAuth"),
                        (e.code_signing, "codeSigning"),
                        (e.email_protection, "emailProtection"),
                        (e.time_stamping, "timeStamping"),
                        (e.ocsp_signing, "OCSPSigning"),
                    ];
                    eku.extend(
                        named
                            .iter()
                            .filter(|(on, _)| *on)
                            .map(|(_, n)| n.to_string()),
                    );
                    eku.extend(e.other.iter().map(|o| o.to_id_string()));
                }
                ParsedExtension::UnsupportedExtension { .. }
                | ParsedExtension::ParseError { .. }
                    if ext.critical =>
                {
                    return Err(format!(
                        "critical extension {} cannot be read by the agent",
                        ext.oid
                    ));
                }
                _ => {}
            }
        }
        Ok(TbsSummary {
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            serial: tbs.raw_serial_as_string().replace(':', ""),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
            ca,
            eku,
            hash,
            family,
        })
    }

    /// Whether this makes a CA or an end-entity certificate.
    pub fn kind(&self) -> CertKind {
        if self.ca.is_some() {
            CertKind::Ca
        } else {
            CertKind::Leaf
        }
    }

    /// Checks that a key of `alg` can make the signature the TBSCertificate announces.
    pub fn fits(&self, alg: KeyAlg) -> Result<(), String> {
        let ok = matches!(
            (self.family, alg),
            (SigFamily::Ecdsa, KeyAlg::P256 | KeyAlg::P384)
                | (SigFamily::RsaPkcs1, KeyAlg::Rsa(_))
                | (SigFamily::Ed25519, KeyAlg::Ed25519)
        );
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the TBSCertificate announces a {} signature, which a {alg} key cannot make",
                match self.family {
                    SigFamily::Ecdsa => "ECDSA",
                    SigFamily::RsaPkcs1 => "RSA PKCS#1 v1.5",
                    SigFamily::Ed25519 => "Ed25519",
                }
            ))
        }
    }

    /// The CA flag as the log shows it.
    pub fn ca_text(&self) -> String {
        match self.ca {
            None => "false".into(),
            Some(None) => "true".into(),
            Some(Some(n)) => format!("true (pathlen {n})"),
        }
    }
}

/// A certificate as a device stores it (PKCS#11 CKO_CERTIFICATE attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertObject {
    /// CKA_ID: the ASCII bytes of the id.
    pub id: Vec<u8>,
    /// CKA_LABEL.
    pub label: String,
    /// CKA_SUBJECT: DER Name.
    pub subject: Vec<u8>,
    /// CKA_ISSUER: DER Name.
    pub issuer: Vec<u8>,
    /// CKA_SERIAL_NUMBER: DER INTEGER.
    pub serial: Vec<u8>,
    /// CKA_VALUE: the DER certificate.
    pub value: Vec<u8>,
    /// The certificate's DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// The subject, for messages.
    pub subject_text: String,
}

impl CertObject {
    /// Reads `der`, which must be exactly one X.509 certificate.
    pub fn from_der(id: &str, label: &str, der: &[u8]) -> Result<CertObject, String> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes follow the certificate", rest.len()));
        }
        let serial = cert.tbs_certificate.raw_serial();
        Ok(CertObject {
            id: id.as_bytes().to_vec(),
            label: label.to_string(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            serial: der_tlv(0x02, serial),
            value: der.to_vec(),
            spki: cert.public_key().raw.to_vec(),
            subject_text: cert.subject().to_string(),
        })
    }
}

/// A DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_huge_version_is_refused_without_overflow() {
        // Found while fuzzing (fuzz/regressions/tbs): version [0] INTEGER 0xFFFFFFFF.
        let der = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/tbs/version-u32-max.der"
        ))
        .unwrap();
        let e = TbsSummary::parse(&der).unwrap_err();
        assert!(e.contains("4294967296"), "{e}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(TbsSummary::parse(b"").is_err());
        assert!(TbsSummary::parse(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        assert!(TbsSummary::parse(&[0xff; 64]).is_err());
        assert!(CertObject::from_der("1", "x", &[0x30, 0x00]).is_err());
    }

    #[test]
    fn integer_encoding() {
        assert_eq!(der_tlv(0x02, &[0x01]), vec![0x02, 0x01, 0x01]);
        let long = vec![7u8; 200];
        let tlv = der_tlv(0x04, &long);
        assert_eq!(&tlv[..3], &[0x04, 0x81, 200]);
        assert_eq!(tlv.len(), 203);
    }
}
