//! What a `x509-tbs` request asks the agent to sign: a DER TBSCertificate, judged so
//! that the policy can decide on it and the log can say what was certified.
//!
//! The agent never signs a TBSCertificate it cannot read, nor one that two readers could
//! read differently. Trailing bytes, a version other than 3, an inverted validity or a
//! signature algorithm that does not fit the key are refused; so is anything that is
//! not canonical DER or carries an extension the agent does not read ([`strict`]), and
//! anything on which x509-parser and x509-cert disagree about the CA flag, keyCertSign
//! or the extended key usages. The hash comes from the TBSCertificate's own `signature`
//! field, so the certificate and its signature always agree.
//!
//! A certificate is a CA certificate when basicConstraints says cA TRUE or keyUsage
//! asserts keyCertSign (OpenSSL treats a certificate without basicConstraints but with
//! keyCertSign as a CA); `x509_issue` in README.md's `[[key]]` block decides on that.

mod strict;

use std::fmt;

use x509_cert::der::asn1::ObjectIdentifier;
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
    /// basicConstraints CA:TRUE, or keyUsage keyCertSign.
    Ca,
    /// Anything else: an end-entity certificate.
    Leaf,
}

/// The extended key usages the agent names, as [`TbsSummary::eku`] and `x509_eku`
/// (README.md, `[[key]]`) write them; any other purpose is its dotted OID.
pub const EKU_NAMES: [(&str, &str); 7] = [
    ("any", "2.5.29.37.0"),
    ("serverAuth", "1.3.6.1.5.5.7.3.1"),
    ("clientAuth", "1.3.6.1.5.5.7.3.2"),
    ("codeSigning", "1.3.6.1.5.5.7.3.3"),
    ("emailProtection", "1.3.6.1.5.5.7.3.4"),
    ("timeStamping", "1.3.6.1.5.5.7.3.8"),
    ("OCSPSigning", "1.3.6.1.5.5.7.3.9"),
];

/// An extended key usage as the agent names it: its name in [`EKU_NAMES`], else `oid`.
pub fn eku_name(oid: &str) -> String {
    EKU_NAMES
        .iter()
        .find(|(_, o)| *o == oid)
        .map_or_else(|| oid.to_string(), |(n, _)| n.to_string())
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
    /// basicConstraints cA TRUE: `Some(pathlen)` (`Some(None)`: no path length
    /// constraint).
    pub ca: Option<Option<u32>>,
    /// keyUsage asserts keyCertSign.
    pub key_cert_sign: bool,
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
        let strict = strict::read(der)?;
        let mut ca = None;
        let mut key_cert_sign = false;
        let mut eku = Vec::new();
        let mut oids = Vec::new();
        for ext in tbs.extensions() {
            oids.push(ext.oid.to_id_string());
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) if bc.ca => ca = Some(bc.path_len_constraint),
                ParsedExtension::KeyUsage(ku) => key_cert_sign = ku.key_cert_sign(),
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
                ParsedExtension::ParseError { error } => {
                    let id = ext.oid.to_id_string();
                    let name = ObjectIdentifier::new(&id).map_or(id, |o| strict::label(&o));
                    return Err(format!(
                        "extension {name} cannot be read by x509-parser ({error}) although it is DER; refused, since readers could disagree on it"
                    ));
                }
                _ => {}
            }
        }
        agree(&strict, &oids, ca, key_cert_sign, &eku)?;
        Ok(TbsSummary {
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            serial: tbs.raw_serial_as_string().replace(':', ""),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
            ca,
            key_cert_sign,
            eku,
            hash,
            family,
        })
    }

    /// Whether this makes a CA or an end-entity certificate.
    pub fn kind(&self) -> CertKind {
        if self.ca.is_some() || self.key_cert_sign {
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
            None if self.key_cert_sign => "true (keyUsage keyCertSign, no basicConstraints)".into(),
            None => "false".into(),
            Some(None) => "true".into(),
            Some(Some(n)) => format!("true (pathlen {n})"),
        }
    }
}

/// Checks that x509-parser's reading (the arguments) and x509-cert's strict one agree on
/// everything that decides what the certificate is and what it is for.
fn agree(
    strict: &strict::Reading,
    oids: &[String],
    ca: Option<Option<u32>>,
    key_cert_sign: bool,
    eku: &[String],
) -> Result<(), String> {
    let disagree = |what: &str, a: String, b: String| {
        Err(format!(
            "x509-parser and x509-cert read the {what} differently ({a} and {b}); refused, since verifiers could too"
        ))
    };
    let strict_oids: Vec<String> = strict.oids.iter().map(ToString::to_string).collect();
    if oids != strict_oids {
        return disagree("extensions", oids.join(","), strict_oids.join(","));
    }
    let strict_ca = strict.ca.map(|p| p.map(u32::from));
    if ca != strict_ca {
        return disagree(
            "basicConstraints",
            format!("{ca:?}"),
            format!("{strict_ca:?}"),
        );
    }
    if key_cert_sign != strict.key_cert_sign {
        return disagree(
            "keyCertSign bit",
            key_cert_sign.to_string(),
            strict.key_cert_sign.to_string(),
        );
    }
    let mut theirs: Vec<String> = eku.to_vec();
    let mut ours: Vec<String> = strict
        .eku
        .iter()
        .map(|o| eku_name(&o.to_string()))
        .collect();
    theirs.sort();
    theirs.dedup();
    ours.sort();
    ours.dedup();
    if theirs != ours {
        return disagree("extended key usages", theirs.join(","), ours.join(","));
    }
    Ok(())
}

/// At most this many revoked certificates in a CRL the agent signs.
pub const MAX_REVOKED: usize = 10_000;

/// The fields of a TBSCertList (purpose `x509-crl`) that the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// Issuer DN, RFC 4514 style.
    pub issuer: String,
    /// The issuer's DER Name, to match it with the key's certificate.
    pub issuer_der: Vec<u8>,
    /// thisUpdate, as OpenSSL prints it.
    pub this_update: String,
    /// nextUpdate, if any.
    pub next_update: Option<String>,
    /// The revoked serial numbers, hex.
    pub revoked: Vec<String>,
    /// The CRL number, decimal, if the CRL carries one.
    pub crl_number: Option<String>,
    /// The hash of the signature algorithm.
    pub hash: HashAlg,
    /// The signature algorithm's family.
    pub family: SigFamily,
}

/// The signature algorithm of an AlgorithmIdentifier the agent signs with.
fn sig_alg(alg: &x509_parser::der_parser::Oid<'_>) -> Result<(SigFamily, HashAlg), String> {
    Ok(if *alg == OID_SIG_ECDSA_WITH_SHA256 {
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
    })
}

impl CrlSummary {
    /// Parses `der`, which must be exactly one version 2 TBSCertList whose extensions
    /// are only cRLNumber and authorityKeyIdentifier (none critical), and whose entries
    /// carry at most a reasonCode and an invalidityDate: anything else is refused, so
    /// that the log says all a verifier would act on.
    pub fn parse(der: &[u8]) -> Result<CrlSummary, String> {
        use x509_parser::revocation_list::TbsCertList;
        let (rest, tbs) =
            TbsCertList::from_der(der).map_err(|e| format!("not a DER TBSCertList: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes follow the TBSCertList; send exactly one",
                rest.len()
            ));
        }
        if tbs.version != Some(X509Version::V2) {
            return Err("the TBSCertList is not version 2 (v2 CRLs carry extensions)".into());
        }
        let (family, hash) = sig_alg(&tbs.signature.algorithm)?;
        if let Some(next) = tbs.next_update {
            if next < tbs.this_update {
                return Err(format!(
                    "nextUpdate ({next}) comes before thisUpdate ({})",
                    tbs.this_update
                ));
            }
        }
        if tbs.revoked_certificates.len() > MAX_REVOKED {
            return Err(format!(
                "{} revoked certificates; at most {MAX_REVOKED} are signed",
                tbs.revoked_certificates.len()
            ));
        }
        let mut crl_number = None;
        let mut seen = Vec::new();
        for ext in tbs.extensions() {
            let id = ext.oid.to_id_string();
            if seen.contains(&id) {
                return Err(format!("CRL extension {id} appears twice"));
            }
            seen.push(id.clone());
            match ext.parsed_extension() {
                ParsedExtension::CRLNumber(n) if !ext.critical => {
                    crl_number = Some(n.to_string());
                }
                ParsedExtension::AuthorityKeyIdentifier(_) if !ext.critical => {}
                _ => {
                    return Err(format!(
                        "CRL extension {id}{} is not one the agent signs (cRLNumber, authorityKeyIdentifier, not critical)",
                        if ext.critical { " (critical)" } else { "" }
                    ))
                }
            }
        }
        let mut revoked = Vec::new();
        for entry in &tbs.revoked_certificates {
            for ext in entry.extensions() {
                match ext.parsed_extension() {
                    ParsedExtension::ReasonCode(_) | ParsedExtension::InvalidityDate(_)
                        if !ext.critical => {}
                    _ => {
                        return Err(format!(
                            "the entry of serial {} carries extension {}, which the agent does not sign (reasonCode, invalidityDate)",
                            entry.raw_serial_as_string(),
                            ext.oid.to_id_string()
                        ))
                    }
                }
            }
            revoked.push(entry.raw_serial_as_string().replace(':', ""));
        }
        Ok(CrlSummary {
            issuer: tbs.issuer.to_string(),
            issuer_der: tbs.issuer.as_raw().to_vec(),
            this_update: tbs.this_update.to_string(),
            next_update: tbs.next_update.map(|t| t.to_string()),
            revoked,
            crl_number,
            hash,
            family,
        })
    }
}

/// Checks that a key of `alg` can make a signature of `family`.
pub fn family_fits(family: SigFamily, alg: KeyAlg) -> Result<(), String> {
    let ok = matches!(
        (family, alg),
        (SigFamily::Ecdsa, KeyAlg::P256 | KeyAlg::P384)
            | (SigFamily::RsaPkcs1, KeyAlg::Rsa(_))
            | (SigFamily::Ed25519, KeyAlg::Ed25519)
    );
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the request announces a {} signature, which a {alg} key cannot make",
            match family {
                SigFamily::Ecdsa => "ECDSA",
                SigFamily::RsaPkcs1 => "RSA PKCS#1 v1.5",
                SigFamily::Ed25519 => "Ed25519",
            }
        ))
    }
}

/// A certificate as a device stores it (PKCS#11 CKO_CERTIFICATE attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertObject {
    /// CKA_ID: the ASCII bytes of `object_id`, or the raw bytes of `raw_id`.
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
    pub fn from_der(id: &[u8], label: &str, der: &[u8]) -> Result<CertObject, String> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes follow the certificate", rest.len()));
        }
        let serial = cert.tbs_certificate.raw_serial();
        Ok(CertObject {
            id: id.to_vec(),
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

/// The DER SubjectPublicKeyInfo of `der`, when it is exactly one X.509 certificate:
/// what a device's certificate is matched to its key by (docs/protocol.md,
/// `public_key`).
pub fn certificate_spki(der: &[u8]) -> Option<&[u8]> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Some(cert.tbs_certificate.subject_pki.raw),
        _ => None,
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
        assert!(CertObject::from_der(b"1", "x", &[0x30, 0x00]).is_err());
    }

    // --- the judge: hand-made TBSCertificates, one trick each -------------------------

    use x509_cert::der::Encode as _;

    fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        der_tlv(tag, &parts.concat())
    }

    fn oid(dotted: &str) -> Vec<u8> {
        ObjectIdentifier::new(dotted).unwrap().to_der().unwrap()
    }

    fn name(cn: &str) -> Vec<u8> {
        let atv = tlv(0x30, &[&oid("2.5.4.3"), &tlv(0x0c, &[cn.as_bytes()])]);
        tlv(0x30, &[&tlv(0x31, &[&atv])])
    }

    /// One extension; `critical` is the raw BOOLEAN to write, if any.
    fn ext(dotted: &str, critical: &[u8], value: &[u8]) -> Vec<u8> {
        tlv(0x30, &[&oid(dotted), critical, &tlv(0x04, &[value])])
    }

    const CRITICAL: &[u8] = &[0x01, 0x01, 0xff];
    const BC: &str = "2.5.29.19";
    const KU: &str = "2.5.29.15";

    /// A P-256, ecdsa-with-SHA256 TBSCertificate with these extensions (none: no [3]).
    fn tbs_with(exts: &[Vec<u8>]) -> Vec<u8> {
        let point = hex::decode(
            "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
        )
        .unwrap();
        let spki = tlv(
            0x30,
            &[
                &tlv(
                    0x30,
                    &[&oid("1.2.840.10045.2.1"), &oid("1.2.840.10045.3.1.7")],
                ),
                &tlv(0x03, &[&[0], &point]),
            ],
        );
        let validity = tlv(
            0x30,
            &[
                &tlv(0x17, &[b"260101000000Z"]),
                &tlv(0x17, &[b"270101000000Z"]),
            ],
        );
        let mut fields = vec![
            vec![0xa0, 0x03, 0x02, 0x01, 0x02],
            vec![0x02, 0x01, 0x2a],
            tlv(0x30, &[&oid("1.2.840.10045.4.3.2")]),
            name("issuer"),
            validity,
            name("subject"),
            spki,
        ];
        if !exts.is_empty() {
            fields.push(tlv(0xa3, &[&tlv(0x30, &[&exts.concat()])]));
        }
        tlv(0x30, &[&fields.concat()])
    }

    #[test]
    fn a_certificate_is_matched_by_its_whole_spki() {
        let tbs = tbs_with(&[]);
        let alg = tlv(0x30, &[&oid("1.2.840.10045.4.3.2")]);
        let cert = tlv(0x30, &[&tbs, &alg, &tlv(0x03, &[&[0], &[0x30, 0x00]])]);
        let spki = certificate_spki(&cert).unwrap();
        assert_eq!(spki[..2], [0x30, 0x59], "a P-256 SubjectPublicKeyInfo");
        assert!(tbs.ends_with(spki));
        let mut trailing = cert.clone();
        trailing.push(0);
        assert_eq!(certificate_spki(&trailing), None);
        assert_eq!(certificate_spki(&tbs), None);
        assert_eq!(certificate_spki(b""), None);
    }

    fn refused(exts: &[Vec<u8>], want: &[&str]) -> String {
        let e = TbsSummary::parse(&tbs_with(exts)).unwrap_err();
        for w in want {
            assert!(e.contains(w), "{w:?} not in: {e}");
        }
        e
    }

    #[test]
    fn a_leaf_and_a_ca_in_der_are_read() {
        let leaf = TbsSummary::parse(&tbs_with(&[
            ext(BC, CRITICAL, &[0x30, 0x00]),
            ext(KU, CRITICAL, &[0x03, 0x02, 0x07, 0x80]),
            ext(
                "2.5.29.37",
                &[],
                &tlv(0x30, &[&oid("1.3.6.1.5.5.7.3.3"), &oid("1.2.3.4")]),
            ),
        ]))
        .unwrap();
        assert_eq!(leaf.kind(), CertKind::Leaf);
        assert_eq!(leaf.ca_text(), "false");
        assert_eq!(leaf.eku, ["codeSigning", "1.2.3.4"]);
        assert!(!leaf.key_cert_sign);
        assert_eq!(leaf.subject, "CN=subject");

        let ca = TbsSummary::parse(&tbs_with(&[
            ext(
                BC,
                CRITICAL,
                &[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00],
            ),
            ext(KU, CRITICAL, &[0x03, 0x02, 0x01, 0x06]),
        ]))
        .unwrap();
        assert_eq!(ca.kind(), CertKind::Ca);
        assert_eq!(ca.ca, Some(Some(0)));
        assert!(ca.key_cert_sign);
        assert_eq!(ca.ca_text(), "true (pathlen 0)");

        // No extensions at all: a leaf.
        let bare = TbsSummary::parse(&tbs_with(&[])).unwrap();
        assert_eq!(bare.kind(), CertKind::Leaf);
    }

    #[test]
    fn basic_constraints_in_indefinite_length_form_is_refused() {
        // OpenSSL reads CA:TRUE here; x509-parser alone skipped it as unreadable.
        let bc = [0x30, 0x80, 0x01, 0x01, 0xff, 0x00, 0x00];
        refused(
            &[ext(BC, &[], &bc)],
            &["basicConstraints (2.5.29.19)", "indefinite length"],
        );
        refused(
            &[ext(BC, CRITICAL, &bc)],
            &["basicConstraints (2.5.29.19)", "indefinite length"],
        );
    }

    #[test]
    fn non_minimal_lengths_are_refused() {
        // Inside the extension's value: a long-form length for 3 bytes.
        refused(
            &[ext(BC, &[], &[0x30, 0x81, 0x03, 0x01, 0x01, 0xff])],
            &["basicConstraints (2.5.29.19)", "long-form length"],
        );
        // In the extension's own header.
        let mut e = ext(BC, &[], &[0x30, 0x00]);
        e.splice(1..2, [0x81, e[1]]);
        refused(&[e], &["basicConstraints (2.5.29.19)", "long-form length"]);
        // A leading zero byte in the TBSCertificate's outer length.
        let tbs = tbs_with(&[ext(BC, CRITICAL, &[0x30, 0x00])]);
        assert_eq!(
            tbs[1], 0x81,
            "the test TBSCertificate is 128 to 255 bytes long"
        );
        let mut long = vec![0x30, 0x82, 0x00];
        long.extend_from_slice(&tbs[2..]);
        let e = TbsSummary::parse(&long).unwrap_err();
        assert!(
            e.contains("not DER") || e.contains("DER TBSCertificate"),
            "{e}"
        );
    }

    #[test]
    fn a_boolean_other_than_ff_is_refused() {
        refused(
            &[ext(BC, CRITICAL, &[0x30, 0x03, 0x01, 0x01, 0x01])],
            &["basicConstraints (2.5.29.19)", "BOOLEAN"],
        );
        refused(
            &[ext(BC, &[0x01, 0x01, 0x01], &[0x30, 0x00])],
            &["basicConstraints", "BOOLEAN"],
        );
    }

    #[test]
    fn critical_false_written_out_is_refused() {
        refused(
            &[ext(
                BC,
                &[0x01, 0x01, 0x00],
                &[0x30, 0x03, 0x01, 0x01, 0xff],
            )],
            &[
                "basicConstraints (2.5.29.19)",
                "critical FALSE is written out",
            ],
        );
        // Likewise cA FALSE inside basicConstraints.
        refused(
            &[ext(BC, CRITICAL, &[0x30, 0x03, 0x01, 0x01, 0x00])],
            &["basicConstraints (2.5.29.19)", "not canonical DER"],
        );
    }

    #[test]
    fn unknown_extensions_are_refused_critical_or_not() {
        for critical in [&[][..], CRITICAL] {
            refused(
                &[ext("1.2.3.4", critical, &[0x05, 0x00])],
                &["1.2.3.4", "not one the agent signs"],
            );
            // Netscape's certificate type: SSL CA (OpenSSL's CA without basicConstraints).
            refused(
                &[ext(
                    "2.16.840.1.113730.1.1",
                    critical,
                    &[0x03, 0x02, 0x02, 0x04],
                )],
                &[
                    "Netscape certificate type (2.16.840.1.113730.1.1)",
                    "not one the agent signs",
                ],
            );
        }
    }

    #[test]
    fn a_duplicate_extension_is_refused() {
        refused(
            &[
                ext(BC, CRITICAL, &[0x30, 0x00]),
                ext(BC, CRITICAL, &[0x30, 0x03, 0x01, 0x01, 0xff]),
            ],
            &["basicConstraints (2.5.29.19)", "appears twice"],
        );
        refused(
            &[
                ext(KU, CRITICAL, &[0x03, 0x02, 0x07, 0x80]),
                ext(KU, CRITICAL, &[0x03, 0x02, 0x07, 0x80]),
            ],
            &["keyUsage (2.5.29.15)", "appears twice"],
        );
    }

    #[test]
    fn key_cert_sign_without_basic_constraints_is_a_ca() {
        let s =
            TbsSummary::parse(&tbs_with(&[ext(KU, CRITICAL, &[0x03, 0x02, 0x02, 0x84])])).unwrap();
        assert!(s.key_cert_sign);
        assert_eq!(s.ca, None);
        assert_eq!(s.kind(), CertKind::Ca);
        assert!(s.ca_text().contains("keyCertSign"), "{}", s.ca_text());
        // A keyUsage with trailing zero bits is not DER.
        refused(
            &[ext(KU, CRITICAL, &[0x03, 0x03, 0x00, 0x84, 0x00])],
            &["keyUsage (2.5.29.15)", "not canonical DER"],
        );
    }

    #[test]
    fn malformed_known_extensions_are_refused() {
        refused(
            &[ext(BC, CRITICAL, &[0x30, 0x03, 0x02, 0x01, 0x00])],
            &["pathLenConstraint without cA"],
        );
        refused(
            &[ext(KU, CRITICAL, &[0x03, 0x01, 0x00])],
            &["keyUsage", "no key usage"],
        );
        refused(
            &[ext("2.5.29.37", &[], &[0x30, 0x00])],
            &["extKeyUsage", "no purpose"],
        );
        refused(
            &[ext(BC, CRITICAL, &[0x04, 0x00])],
            &["basicConstraints", "not DER"],
        );
        // Trailing bytes after the value.
        refused(
            &[ext(BC, CRITICAL, &[0x30, 0x00, 0x00])],
            &["basicConstraints", "not DER"],
        );
    }

    #[test]
    fn fulcio_leaf_extensions_are_signed_when_well_formed() {
        let sigstore = "1.3.6.1.4.1.57264.1";
        // One RFC 6962 SCT: v1, log id, timestamp, no extensions, ECDSA-SHA256, signature.
        let one = [
            &[0u8][..],
            &[7; 32],
            &[0; 8],
            &[0, 0],
            &[4, 3],
            &[0, 2, 0xaa, 0xbb],
        ]
        .concat();
        let list = [
            &(one.len() as u16 + 2).to_be_bytes()[..],
            &(one.len() as u16).to_be_bytes(),
            &one,
        ]
        .concat();
        let sct = tlv(0x04, &[&list]);
        let s = TbsSummary::parse(&tbs_with(&[
            ext(KU, CRITICAL, &[0x03, 0x02, 0x07, 0x80]),
            ext("2.5.29.37", &[], &tlv(0x30, &[&oid("1.3.6.1.5.5.7.3.3")])),
            ext(
                &format!("{sigstore}.1"),
                &[],
                b"https://accounts.example.com",
            ),
            ext(
                &format!("{sigstore}.8"),
                &[],
                &tlv(0x0c, &[b"https://accounts.example.com"]),
            ),
            ext(
                &format!("{sigstore}.12"),
                &[],
                &tlv(0x0c, &[b"https://example.com/repo"]),
            ),
            ext("1.3.6.1.4.1.11129.2.4.2", &[], &sct),
        ]))
        .unwrap();
        assert_eq!(s.kind(), CertKind::Leaf);
        // The precertificate poison: critical NULL.
        TbsSummary::parse(&tbs_with(&[ext(
            "1.3.6.1.4.1.11129.2.4.3",
            CRITICAL,
            &[0x05, 0x00],
        )]))
        .unwrap();

        refused(
            &[ext(&format!("{sigstore}.8"), &[], b"raw")],
            &["Fulcio .8 (1.3.6.1.4.1.57264.1.8)", "not DER"],
        );
        refused(
            &[ext(&format!("{sigstore}.7"), &[], &[0x05, 0x00])],
            &["not a Sigstore certificate extension"],
        );
        refused(
            &[ext(&format!("{sigstore}.1"), CRITICAL, b"x")],
            &["never critical"],
        );
        refused(
            &[ext("1.3.6.1.4.1.11129.2.4.3", &[], &[0x05, 0x00])],
            &["poison", "critical"],
        );
        refused(
            &[ext(
                "1.3.6.1.4.1.11129.2.4.2",
                &[],
                &tlv(0x04, &[&[0x00, 0x09, 0x00]]),
            )],
            &["timestamps", "SignedCertificateTimestampList"],
        );
    }

    #[test]
    fn a_timestamping_leaf_is_a_leaf_and_names_its_eku() {
        // As `waxseal ca tsa` makes it: CA:FALSE, digitalSignature, critical
        // timeStamping alone. x509_issue = ["leaf"] allows it (policy: kind Leaf).
        let s = TbsSummary::parse(&tbs_with(&[
            ext(BC, CRITICAL, &[0x30, 0x00]),
            ext(KU, CRITICAL, &[0x03, 0x02, 0x07, 0x80]),
            ext(
                "2.5.29.37",
                CRITICAL,
                &tlv(0x30, &[&oid("1.3.6.1.5.5.7.3.8")]),
            ),
        ]))
        .unwrap();
        assert_eq!(s.kind(), CertKind::Leaf);
        assert_eq!(s.eku, ["timeStamping"]);
    }

    #[test]
    fn crl_garbage_is_refused() {
        assert!(CrlSummary::parse(b"").is_err());
        assert!(CrlSummary::parse(&[0x30, 0x00]).is_err());
        assert!(CrlSummary::parse(&[0xff; 64]).is_err());
        // A TBSCertificate is not a TBSCertList.
        assert!(CrlSummary::parse(&tbs_with(&[])).is_err());
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
