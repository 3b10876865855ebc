//! The strict reading of a TBSCertificate: the agent signs only canonical DER carrying
//! extensions it reads, so that every X.509 consumer reads the same certificate it
//! judged.
//!
//! Lenient readers disagree about non-DER input. OpenSSL reads a basicConstraints
//! written in BER (an indefinite length, a long-form length, a BOOLEAN of `01`) as
//! CA:TRUE, while x509-parser cannot decode it and skips it when it is not critical: a
//! key allowed to issue only leaves (`x509_issue = ["leaf"]`, README.md "Configure
//! devices") would then sign a CA certificate. So here:
//!
//! - the whole TBSCertificate decodes with x509-cert (strict DER through `der`) and
//!   re-encodes to exactly the same bytes, and every TLV in it, down to the contents of
//!   ANY fields, has a definite, minimal length (see [`walk`]);
//! - every extension is DER on its own (no `critical FALSE` written out), appears once,
//!   and is one of [`ALLOWED`]: the RFC 5280 extensions, decoded by their x509-cert
//!   type and re-encoded to the same bytes, and those that Fulcio's leaf certificates
//!   carry (Sigstore's `1.3.6.1.4.1.57264.1.*`, Certificate Transparency's SCT list
//!   and precertificate poison). Anything else, critical or not, is refused by OID:
//!   among them the Netscape certificate type, whose CA bits OpenSSL honours when
//!   there is no basicConstraints.
//!
//! What it reads ([`Reading`]) is compared with x509-parser's reading by the caller.

use x509_cert::der::asn1::{ObjectIdentifier, OctetStringRef, Utf8StringRef};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CertificatePolicies,
    CrlDistributionPoints, ExtendedKeyUsage, FreshestCrl, InhibitAnyPolicy, IssuerAltName,
    KeyUsage, NameConstraints, PolicyConstraints, PolicyMappings, SubjectAltName,
    SubjectInfoAccessSyntax, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::TbsCertificate;

/// What the strict reading found in the extensions that decide what a certificate is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// basicConstraints with cA TRUE: `Some(pathLenConstraint)`.
    pub ca: Option<Option<u8>>,
    /// keyUsage asserts keyCertSign.
    pub key_cert_sign: bool,
    /// The extKeyUsage purposes, in order (empty: no extKeyUsage).
    pub eku: Vec<ObjectIdentifier>,
    /// Every extension's OID, in order.
    pub oids: Vec<ObjectIdentifier>,
}

/// How the value of an allowed extension is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BasicConstraints,
    KeyUsage,
    ExtKeyUsage,
    SubjectKeyId,
    AuthorityKeyId,
    SubjectAltName,
    IssuerAltName,
    CertificatePolicies,
    CrlDistributionPoints,
    FreshestCrl,
    AuthorityInfoAccess,
    SubjectInfoAccess,
    NameConstraints,
    PolicyConstraints,
    PolicyMappings,
    InhibitAnyPolicy,
    /// RFC 6962 signed certificate timestamps: an OCTET STRING around a TLS list.
    SctList,
    /// RFC 6962 precertificate poison: critical, ASN.1 NULL.
    CtPoison,
}

/// The extensions a TBSCertificate may carry, besides Sigstore's (see [`sigstore`]).
const ALLOWED: &[(&str, &str, Kind)] = &[
    ("2.5.29.19", "basicConstraints", Kind::BasicConstraints),
    ("2.5.29.15", "keyUsage", Kind::KeyUsage),
    ("2.5.29.37", "extKeyUsage", Kind::ExtKeyUsage),
    ("2.5.29.14", "subjectKeyIdentifier", Kind::SubjectKeyId),
    ("2.5.29.35", "authorityKeyIdentifier", Kind::AuthorityKeyId),
    ("2.5.29.17", "subjectAltName", Kind::SubjectAltName),
    ("2.5.29.18", "issuerAltName", Kind::IssuerAltName),
    (
        "2.5.29.32",
        "certificatePolicies",
        Kind::CertificatePolicies,
    ),
    (
        "2.5.29.31",
        "cRLDistributionPoints",
        Kind::CrlDistributionPoints,
    ),
    ("2.5.29.46", "freshestCRL", Kind::FreshestCrl),
    (
        "1.3.6.1.5.5.7.1.1",
        "authorityInfoAccess",
        Kind::AuthorityInfoAccess,
    ),
    (
        "1.3.6.1.5.5.7.1.11",
        "subjectInfoAccess",
        Kind::SubjectInfoAccess,
    ),
    ("2.5.29.30", "nameConstraints", Kind::NameConstraints),
    ("2.5.29.36", "policyConstraints", Kind::PolicyConstraints),
    ("2.5.29.33", "policyMappings", Kind::PolicyMappings),
    ("2.5.29.54", "inhibitAnyPolicy", Kind::InhibitAnyPolicy),
    (
        "1.3.6.1.4.1.11129.2.4.2",
        "CT signed certificate timestamps",
        Kind::SctList,
    ),
    (
        "1.3.6.1.4.1.11129.2.4.3",
        "CT precertificate poison",
        Kind::CtPoison,
    ),
];

/// Names of some extensions that are refused, for the message.
const REFUSED_NAMES: &[(&str, &str)] = &[
    ("2.16.840.1.113730.1.1", "Netscape certificate type"),
    ("2.16.840.1.113730.1.13", "Netscape comment"),
    ("2.5.29.16", "privateKeyUsagePeriod"),
    ("2.5.29.9", "subjectDirectoryAttributes"),
    ("1.3.6.1.5.5.7.1.14", "proxyCertInfo"),
    ("1.3.6.1.5.5.7.1.24", "TLS feature"),
    (
        "1.3.6.1.4.1.311.20.2",
        "Microsoft certificate template name",
    ),
    ("1.3.6.1.4.1.311.21.7", "Microsoft certificate template"),
];

/// Sigstore's Fulcio arc: `1.3.6.1.4.1.57264.1.N`, registered by Sigstore.
const SIGSTORE_ARC: [u32; 8] = [1, 3, 6, 1, 4, 1, 57264, 1];

/// How deep TLVs may nest: far more than any certificate needs, and a bound on the
/// recursion of [`walk`].
const MAX_DEPTH: usize = 32;

/// Reads `der` strictly: canonical DER throughout, allowed extensions only, each once.
///
/// The extensions are looked at first, so that a refusal names the extension at fault.
pub fn read(der: &[u8]) -> Result<Reading, String> {
    let mut reading = Reading::default();
    for raw in raw_extensions(der)? {
        let ext = extension(raw)?;
        let label = label(&ext.extn_id);
        if reading.oids.contains(&ext.extn_id) {
            return Err(format!(
                "extension {label} appears twice; a certificate carries each extension once (RFC 5280 4.2)"
            ));
        }
        reading.oids.push(ext.extn_id);
        value(&ext, &label, &mut reading)?;
    }
    walk(der, 0, 0).map_err(|e| format!("the TBSCertificate is not DER: {e}"))?;
    let tbs =
        TbsCertificate::from_der(der).map_err(|e| format!("not a DER TBSCertificate: {e}"))?;
    let theirs: Vec<ObjectIdentifier> =
        tbs.extensions.iter().flatten().map(|e| e.extn_id).collect();
    if theirs != reading.oids {
        // Both come from the same bytes; a difference is a bug in one of the readers.
        return Err("the extensions could not be read consistently".into());
    }
    let again = tbs
        .to_der()
        .map_err(|e| format!("the TBSCertificate does not re-encode: {e}"))?;
    if again != der {
        return Err(format!(
            "the TBSCertificate is not canonical DER: its DER encoding differs from byte {}",
            first_difference(&again, der)
        ));
    }
    Ok(reading)
}

/// `OID (name)`, or the OID alone when no name is known.
pub fn label(oid: &ObjectIdentifier) -> String {
    let text = oid.to_string();
    let name = ALLOWED
        .iter()
        .map(|(o, n, _)| (*o, *n))
        .chain(REFUSED_NAMES.iter().copied())
        .find(|(o, _)| *o == text)
        .map(|(_, n)| n.to_string())
        .or_else(|| sigstore(oid).map(|n| format!("Sigstore's Fulcio .{n}")))
        .or_else(|| x509_cert::der::oid::db::DB.by_oid(oid).map(str::to_string));
    match name {
        Some(n) => format!("{n} ({text})"),
        None => text,
    }
}

/// The `N` of a Sigstore extension `1.3.6.1.4.1.57264.1.N`.
fn sigstore(oid: &ObjectIdentifier) -> Option<u32> {
    let arcs: Vec<u32> = oid.arcs().collect();
    match arcs.split_last() {
        Some((&n, prefix)) if prefix == SIGSTORE_ARC => Some(n),
        _ => None,
    }
}

/// One extension, which must be DER by itself (checked before its value is looked at,
/// so that the message names it). `raw` starts at byte `offset` of the input.
fn extension((raw, offset): (&[u8], usize)) -> Result<Extension, String> {
    let name = || extension_name(raw);
    walk(raw, offset, 0).map_err(|e| format!("{} is not DER: {e}", name()))?;
    let ext = Extension::from_der(raw).map_err(|e| format!("{} is not DER: {e}", name()))?;
    if ext.to_der().ok().as_deref() != Some(raw) {
        let explicit_default = tlv(raw, 0)
            .is_ok_and(|(t, _)| children(t).is_ok_and(|c| c.len() == 3 && !ext.critical));
        let why = if explicit_default {
            "critical FALSE is written out, and DER omits a DEFAULT value"
        } else {
            "it is not canonical DER"
        };
        return Err(format!("{} is not DER: {why}", name()));
    }
    Ok(ext)
}

/// `extension OID (name)` for the extension starting at `raw`, read leniently (it is
/// not DER, and the message should still say which one it is).
fn extension_name(raw: &[u8]) -> String {
    let oid = raw.get(1).and_then(|&l| {
        let skip = if l & 0x80 == 0 {
            2
        } else {
            2 + usize::from(l & 0x7f)
        };
        let (t, _) = tlv(raw.get(skip..)?, 0).ok()?;
        ObjectIdentifier::from_der(t.raw).ok()
    });
    oid.map_or("an extension".to_string(), |oid| {
        format!("extension {}", label(&oid))
    })
}

/// Checks the value of one extension and records what decides the certificate's kind.
fn value(ext: &Extension, label: &str, reading: &mut Reading) -> Result<(), String> {
    let bytes = ext.extn_value.as_bytes();
    let text = ext.extn_id.to_string();
    let kind = ALLOWED.iter().find(|(o, _, _)| *o == text).map(|e| e.2);
    let bad = |why: String| format!("extension {label}: {why}");
    let Some(kind) = kind else {
        return match sigstore(&ext.extn_id) {
            Some(n) => sigstore_value(n, ext.critical, bytes).map_err(bad),
            None => Err(format!(
                "extension {label} is not one the agent signs{}: it signs RFC 5280's \
                 (basicConstraints, keyUsage, extKeyUsage, key identifiers, alternative \
                 names, policies, CRL distribution points, information access, name and \
                 policy constraints) and those of Sigstore's Fulcio certificates \
                 (1.3.6.1.4.1.57264.1.*, CT timestamps and poison)",
                if ext.critical { " (critical)" } else { "" }
            )),
        };
    };
    match kind {
        Kind::BasicConstraints => {
            let bc: BasicConstraints = canonical(bytes).map_err(bad)?;
            if !bc.ca && bc.path_len_constraint.is_some() {
                return Err(bad(
                    "pathLenConstraint without cA TRUE (RFC 5280 4.2.1.9)".into()
                ));
            }
            if bc.ca {
                reading.ca = Some(bc.path_len_constraint);
            }
        }
        Kind::KeyUsage => {
            let ku: KeyUsage = canonical(bytes).map_err(bad)?;
            if ku.0.is_empty() {
                return Err(bad("no key usage is set (RFC 5280 4.2.1.3)".into()));
            }
            reading.key_cert_sign = ku.key_cert_sign();
        }
        Kind::ExtKeyUsage => {
            let eku: ExtendedKeyUsage = canonical(bytes).map_err(bad)?;
            if eku.0.is_empty() {
                return Err(bad("no purpose is listed (RFC 5280 4.2.1.12)".into()));
            }
            reading.eku = eku.0;
        }
        Kind::SubjectKeyId => valid::<SubjectKeyIdentifier>(bytes).map_err(bad)?,
        Kind::AuthorityKeyId => valid::<AuthorityKeyIdentifier>(bytes).map_err(bad)?,
        Kind::SubjectAltName => valid::<SubjectAltName>(bytes).map_err(bad)?,
        Kind::IssuerAltName => valid::<IssuerAltName>(bytes).map_err(bad)?,
        Kind::CertificatePolicies => valid::<CertificatePolicies>(bytes).map_err(bad)?,
        Kind::CrlDistributionPoints => valid::<CrlDistributionPoints>(bytes).map_err(bad)?,
        Kind::FreshestCrl => valid::<FreshestCrl>(bytes).map_err(bad)?,
        Kind::AuthorityInfoAccess => valid::<AuthorityInfoAccessSyntax>(bytes).map_err(bad)?,
        Kind::SubjectInfoAccess => valid::<SubjectInfoAccessSyntax>(bytes).map_err(bad)?,
        Kind::NameConstraints => valid::<NameConstraints>(bytes).map_err(bad)?,
        Kind::PolicyConstraints => valid::<PolicyConstraints>(bytes).map_err(bad)?,
        Kind::PolicyMappings => valid::<PolicyMappings>(bytes).map_err(bad)?,
        Kind::InhibitAnyPolicy => valid::<InhibitAnyPolicy>(bytes).map_err(bad)?,
        Kind::SctList => {
            if ext.critical {
                return Err(bad("must not be critical (RFC 6962 3.3)".into()));
            }
            let list: OctetStringRef<'_> = canonical(bytes).map_err(bad)?;
            sct_list(list.as_bytes()).map_err(bad)?;
        }
        Kind::CtPoison => {
            if !ext.critical || bytes != [0x05, 0x00] {
                return Err(bad(
                    "must be critical and an ASN.1 NULL (RFC 6962 3.1)".into()
                ));
            }
        }
    }
    Ok(())
}

/// A Sigstore extension, as Sigstore's OID registry defines them: `.1`–`.6` hold raw
/// strings, `.8` on DER UTF8Strings; `.7` names an otherName inside subjectAltName and
/// is not an extension.
fn sigstore_value(n: u32, critical: bool, bytes: &[u8]) -> Result<(), String> {
    if critical {
        return Err("a Sigstore extension is never critical".into());
    }
    match n {
        1..=6 => std::str::from_utf8(bytes)
            .map(|_| ())
            .map_err(|_| "not a UTF-8 string".into()),
        8.. => valid::<Utf8StringRef<'_>>(bytes),
        _ => Err(format!(
            "1.3.6.1.4.1.57264.1.{n} is not a Sigstore certificate extension"
        )),
    }
}

/// RFC 6962's `SignedCertificateTimestampList`: a 2-byte length, then SCTs that are
/// each a non-empty 2-byte-length-prefixed blob, nothing left over.
fn sct_list(tls: &[u8]) -> Result<(), String> {
    let bad = || "the SCT list is not a well-formed TLS SignedCertificateTimestampList".to_string();
    let (len, mut rest) = tls.split_first_chunk::<2>().ok_or_else(bad)?;
    if usize::from(u16::from_be_bytes(*len)) != rest.len() || rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 || len > after.len() {
            return Err(bad());
        }
        rest = &after[len..];
    }
    Ok(())
}

/// [`canonical`], for a value whose contents do not matter here.
fn valid<'a, T: Decode<'a> + Encode>(bytes: &'a [u8]) -> Result<(), String> {
    canonical::<T>(bytes).map(|_| ())
}

/// Decodes `bytes` as exactly one `T` and checks that it re-encodes to the same bytes
/// and is DER all the way down.
fn canonical<'a, T: Decode<'a> + Encode>(bytes: &'a [u8]) -> Result<T, String> {
    walk(bytes, 0, 0).map_err(|e| format!("the value is not DER: {e}"))?;
    let v = T::from_der(bytes).map_err(|e| format!("the value is not DER: {e}"))?;
    let again = v
        .to_der()
        .map_err(|e| format!("the value does not re-encode: {e}"))?;
    if again != bytes {
        return Err(format!(
            "the value is not canonical DER: its DER encoding differs from byte {}",
            first_difference(&again, bytes)
        ));
    }
    Ok(v)
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// One tag-length-value read by [`tlv`].
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    /// The identifier octets' class and form bits (`0xe0` of the first byte).
    class_form: u8,
    /// The tag number.
    number: u32,
    /// The contents.
    content: &'a [u8],
    /// The whole TLV.
    raw: &'a [u8],
    /// Where it starts in the input.
    offset: usize,
}

impl Tlv<'_> {
    fn constructed(&self) -> bool {
        self.class_form & 0x20 != 0
    }

    fn universal(&self) -> bool {
        self.class_form & 0xc0 == 0
    }

    /// Where the contents start in the input.
    fn content_offset(&self) -> usize {
        self.offset + (self.raw.len() - self.content.len())
    }
}

/// Reads one DER TLV at the start of `buf`, which is at `offset` in the input: tag
/// numbers and lengths in their shortest form, definite lengths only.
fn tlv(buf: &[u8], offset: usize) -> Result<(Tlv<'_>, &[u8]), String> {
    let at = |what: &str| format!("byte {offset}: {what}");
    let (&first, mut rest) = buf.split_first().ok_or_else(|| at("truncated"))?;
    let mut number = u32::from(first & 0x1f);
    if number == 0x1f {
        number = 0;
        let mut digits = 0;
        loop {
            let (&b, after) = rest.split_first().ok_or_else(|| at("truncated tag"))?;
            rest = after;
            if digits == 0 && b == 0x80 {
                return Err(at("a tag number with a leading zero digit (BER, not DER)"));
            }
            digits += 1;
            if digits > 4 {
                return Err(at("a tag number too large"));
            }
            number = (number << 7) | u32::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
        }
        if number < 0x1f {
            return Err(at("a small tag number in the long form (BER, not DER)"));
        }
    }
    let (&l, mut rest) = rest.split_first().ok_or_else(|| at("truncated length"))?;
    let len = match l {
        0..=0x7f => usize::from(l),
        0x80 => return Err(at("an indefinite length (BER, not DER)")),
        _ => {
            let n = usize::from(l & 0x7f);
            if n > 4 || rest.len() < n {
                return Err(at("a length that does not fit the input"));
            }
            let (digits, after) = rest.split_at(n);
            rest = after;
            if digits.first() == Some(&0) {
                return Err(at("a length with a leading zero byte (BER, not DER)"));
            }
            let len = digits
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            if len < 0x80 {
                return Err(at("a long-form length for a short value (BER, not DER)"));
            }
            len
        }
    };
    if rest.len() < len {
        return Err(at("a length beyond the end of the input"));
    }
    let header = buf.len() - rest.len();
    let (content, after) = rest.split_at(len);
    Ok((
        Tlv {
            class_form: first & 0xe0,
            number,
            content,
            raw: &buf[..header + len],
            offset,
        },
        after,
    ))
}

/// The TLVs inside the constructed `outer`.
fn children(outer: Tlv<'_>) -> Result<Vec<Tlv<'_>>, String> {
    if !outer.constructed() {
        return Err(format!("byte {}: not a constructed value", outer.offset));
    }
    let mut out = Vec::new();
    let mut buf = outer.content;
    let mut offset = outer.content_offset();
    while !buf.is_empty() {
        let (t, after) = tlv(buf, offset)?;
        offset += t.raw.len();
        out.push(t);
        buf = after;
    }
    Ok(out)
}

/// The raw DER of each extension of the TBSCertificate `der`, with its offset.
fn raw_extensions(der: &[u8]) -> Result<Vec<(&[u8], usize)>, String> {
    let not_der = |e: String| format!("the TBSCertificate is not DER: {e}");
    let (outer, rest) = tlv(der, 0).map_err(not_der)?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes follow the TBSCertificate; send exactly one",
            rest.len()
        ));
    }
    let fields = children(outer).map_err(not_der)?;
    let Some(last) = fields
        .last()
        .filter(|t| t.class_form == 0xa0 && t.number == 3)
    else {
        return Ok(Vec::new());
    };
    let not_der = |e: String| format!("the extensions are not DER: {e}");
    let list = children(*last).map_err(not_der)?;
    let [seq] = list.as_slice() else {
        return Err("the extensions field [3] holds more than one value".into());
    };
    if !seq.constructed() {
        return Err(not_der(format!("byte {}: not a SEQUENCE", seq.offset)));
    }
    let mut out = Vec::new();
    let mut buf = seq.content;
    let mut offset = seq.content_offset();
    while !buf.is_empty() {
        let (t, after) =
            tlv(buf, offset).map_err(|e| format!("{} is not DER: {e}", extension_name(buf)))?;
        out.push((t.raw, offset));
        offset += t.raw.len();
        buf = after;
    }
    Ok(out)
}

/// Checks that `buf` is DER TLVs all the way down: definite, minimal lengths and tag
/// numbers; constructed forms only for SEQUENCE and SET (and their context- and
/// application-tagged kin); BOOLEAN `00`/`FF`, NULL empty, INTEGER minimal.
fn walk(buf: &[u8], offset: usize, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("byte {offset}: nested more than {MAX_DEPTH} deep"));
    }
    let mut rest = buf;
    while !rest.is_empty() {
        let here = offset + (buf.len() - rest.len());
        let (t, after) = tlv(rest, here)?;
        let at = |what: &str| Err(format!("byte {here}: {what}"));
        if t.universal() {
            match (t.number, t.constructed()) {
                (16 | 17, false) => return at("a primitive SEQUENCE or SET"),
                (16 | 17, true) | (8 | 11, _) => {}
                (_, true) => return at("a constructed string or primitive type (BER, not DER)"),
                (1, false) if t.content != [0x00] && t.content != [0xff] => {
                    return at("a BOOLEAN that is neither 00 nor FF (BER, not DER)")
                }
                (5, false) if !t.content.is_empty() => return at("a NULL with contents"),
                (2 | 10, false) => match t.content {
                    [] => return at("an empty INTEGER"),
                    [0x00, b, ..] if b & 0x80 == 0 => {
                        return at("an INTEGER with a leading zero byte (BER, not DER)")
                    }
                    [0xff, b, ..] if b & 0x80 != 0 => {
                        return at("an INTEGER with a leading FF byte (BER, not DER)")
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        if t.constructed() {
            let header = t.raw.len() - t.content.len();
            walk(t.content, here + header, depth + 1)?;
        }
        rest = after;
    }
    Ok(())
}
