//! x509-tbs: the TBSCertificate a client sends to be signed (`TbsSummary::parse`), and
//! a certificate to be stored on a token (`CertObject::from_der`), on arbitrary bytes.
//!
//! - never panics (both run in the agent on client input);
//! - an accepted TBSCertificate's summary is usable (`kind`, `ca_text`, `fits`);
//! - an accepted certificate's attributes are slices of it (subject, issuer, SPKI), its
//!   CKA_VALUE is the input, and CKA_SERIAL_NUMBER is one well-formed DER INTEGER.
//!   The certificate's TBSCertificate is also given to `TbsSummary::parse`.
#![no_main]
// Every `expect`/`unwrap` here is an assertion of the target (a temp file that must
// write, a value that must serialise): a panic is a finding, which libFuzzer keeps.

use libfuzzer_sys::fuzz_target;
use waxseal_agent::proto::KeyAlg;
use waxseal_agent::x509::{CertKind, CertObject, TbsSummary};

/// Splits one DER TLV off `buf`: (tag, content, rest). Definite lengths only.
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 8 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn check_tbs(der: &[u8]) {
    if let Ok(s) = TbsSummary::parse(der) {
        assert_eq!(s.kind() == CertKind::Ca, s.ca.is_some() || s.key_cert_sign);
        let _ = s.ca_text();
        let fitting = KeyAlg::GENERATABLE
            .iter()
            .filter(|a| s.fits(**a).is_ok())
            .count();
        assert!(fitting >= 1, "no key algorithm fits {s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    check_tbs(data);
    if let Ok(obj) = CertObject::from_der(b"1", "fuzz", data) {
        assert_eq!(obj.value, data);
        assert_eq!(obj.id, b"1");
        assert_eq!(obj.label, "fuzz");
        for (what, part) in [
            ("subject", &obj.subject),
            ("issuer", &obj.issuer),
            ("spki", &obj.spki),
        ] {
            assert!(
                contains(data, part),
                "{what} is not part of the certificate"
            );
        }
        let (tag, content, rest) = tlv(&obj.serial).expect("CKA_SERIAL_NUMBER is not DER");
        assert_eq!(tag, 0x02);
        assert!(rest.is_empty(), "bytes after CKA_SERIAL_NUMBER");
        assert!(
            contains(data, content),
            "the serial is not the certificate's"
        );
        // The certificate's own TBSCertificate: the first element of the outer SEQUENCE.
        if let Some((0x30, inner, _)) = tlv(data) {
            if let Some((0x30, tbs_content, _)) = tlv(inner) {
                check_tbs(&inner[..header_len(inner) + tbs_content.len()]);
            }
        }
    }
});

fn header_len(buf: &[u8]) -> usize {
    match buf.get(1) {
        Some(&b) if b >= 0x80 => 2 + (b & 0x7f) as usize,
        _ => 2,
    }
}
