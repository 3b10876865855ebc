//! x509-tbs, judged: `TbsSummary::parse` and then `Policy::check_tbs` for a key that may
//! issue leaves only (`x509_issue = ["leaf"]`) and one that may issue CAs only, on
//! arbitrary bytes, as `sign_tbs` judges a client's TBSCertificate.
//!
//! - never panics;
//! - whatever the leaf-only key would sign, x509-parser and x509-cert both read with
//!   no basicConstraints cA and no keyUsage keyCertSign, and the raw extension values
//!   agree (basicConstraints is exactly the empty SEQUENCE `30 00`, keyCertSign's bit
//!   is clear); there is no Netscape certificate type;
//! - whatever the CA-only key would sign, both read cA TRUE and keyCertSign;
//! - the summary's CA flag and keyCertSign are what x509-parser reads.
#![no_main]
// Every `expect`/`unwrap`/`panic` here is an assertion of the target: a panic is a
// finding, which libFuzzer keeps.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waxseal_agent::config::KeyConfig;
use waxseal_agent::policy::Policy;
use waxseal_agent::proto::Purpose;
use waxseal_agent::x509::{CertKind, TbsSummary};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

const BC: &str = "2.5.29.19";
const KU: &str = "2.5.29.15";
const NETSCAPE_CERT_TYPE: &str = "2.16.840.1.113730.1.1";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let key = |name: &str, kind| KeyConfig {
            name: name.into(),
            purposes: vec![Purpose::X509Tbs],
            x509_issue: vec![kind],
            ..KeyConfig::default()
        };
        Policy::new(&[
            key("fuzz/leaf", CertKind::Leaf),
            key("fuzz/ca", CertKind::Ca),
        ])
    })
}

/// What one reader saw: basicConstraints cA TRUE, keyUsage keyCertSign, a Netscape
/// certificate type.
#[derive(Debug, Default)]
struct Seen {
    ca: bool,
    key_cert_sign: bool,
    netscape: bool,
}

fn x509_parser_sees(der: &[u8]) -> Seen {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let (_, tbs) = x509_parser::certificate::TbsCertificate::from_der(der)
        .expect("x509-parser reads what the judge accepted");
    let mut seen = Seen::default();
    for ext in tbs.extensions() {
        let oid = ext.oid.to_id_string();
        match (oid.as_str(), ext.parsed_extension()) {
            (BC, ParsedExtension::BasicConstraints(bc)) => seen.ca |= bc.ca,
            (KU, ParsedExtension::KeyUsage(ku)) => seen.key_cert_sign |= ku.key_cert_sign(),
            (BC | KU, other) => panic!("x509-parser cannot read {oid}, accepted: {other:?}"),
            (NETSCAPE_CERT_TYPE, _) => seen.netscape = true,
            _ => {}
        }
    }
    seen
}

/// x509-cert's reading, and the raw bytes' (`raw`): the most cautious reading of the
/// extension values, as OpenSSL's lenient one could be.
fn x509_cert_sees(der: &[u8]) -> (Seen, Seen) {
    let tbs =
        x509_cert::TbsCertificate::from_der(der).expect("x509-cert reads what the judge accepted");
    let (mut seen, mut raw) = (Seen::default(), Seen::default());
    for ext in tbs.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        match ext.extn_id.to_string().as_str() {
            BC => {
                let bc = BasicConstraints::from_der(value)
                    .expect("x509-cert reads the basicConstraints the judge accepted");
                seen.ca |= bc.ca;
                raw.ca |= value != [0x30, 0x00];
            }
            KU => {
                let ku = KeyUsage::from_der(value)
                    .expect("x509-cert reads the keyUsage the judge accepted");
                seen.key_cert_sign |= ku.key_cert_sign();
                // BIT STRING: tag, length, unused bits, then bit 0 is 0x80 of the
                // first byte, keyCertSign (bit 5) is 0x04.
                raw.key_cert_sign |= value.get(3).is_none_or(|b| b & 0x04 != 0);
            }
            NETSCAPE_CERT_TYPE => (seen.netscape, raw.netscape) = (true, true),
            _ => {}
        }
    }
    (seen, raw)
}

fuzz_target!(|data: &[u8]| {
    let Ok(summary) = TbsSummary::parse(data) else {
        return;
    };
    let leaf_ok = policy().check_tbs("fuzz/leaf", &summary).is_ok();
    let ca_ok = policy().check_tbs("fuzz/ca", &summary).is_ok();
    assert!(!(leaf_ok && ca_ok), "both a leaf and a CA: {summary:?}");
    assert_eq!(leaf_ok, summary.kind() == CertKind::Leaf, "{summary:?}");

    let parser = x509_parser_sees(data);
    let (cert, raw) = x509_cert_sees(data);
    assert_eq!(summary.ca.is_some(), parser.ca, "{summary:?} {parser:?}");
    assert_eq!(
        summary.key_cert_sign, parser.key_cert_sign,
        "{summary:?} {parser:?}"
    );
    for (who, seen) in [
        ("x509-parser", &parser),
        ("x509-cert", &cert),
        ("raw", &raw),
    ] {
        assert!(
            !seen.netscape,
            "{who}: a Netscape certificate type was accepted"
        );
        if leaf_ok {
            assert!(
                !seen.ca && !seen.key_cert_sign,
                "the leaf-only key would sign what {who} reads as a CA: {seen:?} {summary:?}"
            );
        }
    }
    if ca_ok {
        for (who, seen) in [("x509-parser", &parser), ("x509-cert", &cert)] {
            assert!(
                seen.ca && seen.key_cert_sign,
                "the CA-only key would sign what {who} does not read as a CA: {seen:?} {summary:?}"
            );
        }
    }
});
