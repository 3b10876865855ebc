//! The whole verifier of `waxseal verify --trusted-root` (cli/src/verify_sigstore.rs,
//! docs/verify.md), from the bundle's bytes to the verdict: `Bundle::from_slice` (what
//! `Bundle::read` does with the file's bytes), then `verify_sigstore::verify` against a
//! fixed trusted root. The root is fuzz/keys/verify-root.json (the Fulcio CA, CT log,
//! Rekor v1 and v2 logs and TSA of the services `pkcs11-tests/js/keyless.js` ran when
//! fuzz/scripts/make-verify-seeds made the seeds) plus the Rekor key of
//! fuzz/scripts/make-seeds.py's key-based bundles, so that mutated seeds get through to
//! the deep checks: Rekor v1 and v2 bodies, SETs, inclusion proofs, checkpoints, RFC 3161
//! timestamps, the certificate chain at the signing time, SCTs, SAN and issuer.
//!
//! A bundle with a certificate is checked for keyless.js's identity and issuer, one
//! without for the key of make-seeds.py; the artifact is fuzz/keys/artifact.txt by its
//! digest (a DSSE statement's subject names that digest).
//!
//! - never panics;
//! - the verdict and the report agree: verified exactly when no check failed, and then
//!   every check passed, with at least one verified signing time when the bundle has a
//!   certificate; a refusal names one of the verifier's checks, last, with a detail.
#![no_main]
// The two `expect`s are assertions of the target: the embedded root parses (the seeds'
// script wrote it), and a report with a failed check has a last check. A panic is a
// finding, which libFuzzer keeps.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha2::Digest as _;
use waxseal::signing_config::{LogInstance, TrustedRoot};
use waxseal::sigstore::{Artifact, Bundle};
use waxseal::verify_sigstore::{verify, Matcher, Policy};

const ROOT: &[u8] = include_bytes!("../keys/verify-root.json");
const SIGNER_SPKI: &[u8] = include_bytes!("../keys/signer.spki.der");
const REKOR_SPKI: &[u8] = include_bytes!("../keys/rekor.spki.der");
const ARTIFACT: &[u8] = include_bytes!("../keys/artifact.txt");
/// keyless.js's mock identity token.
const IDENTITY: &str =
    "https://github.com/waxseal/release/.github/workflows/release.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Every check name `verify` reports (docs/verify.md).
const CHECKS: &[&str] = &[
    "bundle",
    "verification material",
    "artifact",
    "signature",
    "tlog",
    "tlog log id",
    "tlog entry body",
    "tlog entry",
    "tlog signed entry timestamp",
    "tlog inclusion proof",
    "tlog checkpoint",
    "tlog integrated time",
    "tlog validity",
    "rfc3161 timestamp",
    "signing time",
    "certificate validity",
    "certificate chain",
    "certificate eku",
    "certificate sct",
    "certificate identity",
    "certificate issuer",
];

struct Fixed {
    root: TrustedRoot,
    artifact: Artifact,
    key: Policy,
    identity: Policy,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let mut root = TrustedRoot::parse(ROOT).expect("fuzz/keys/verify-root.json parses");
        root.logs.push(LogInstance {
            base_url: "http://127.0.0.1:9".into(),
            key: REKOR_SPKI.to_vec(),
            key_details: String::new(),
            key_id: sha2::Sha256::digest(REKOR_SPKI).to_vec(),
            start: None,
            end: None,
        });
        Fixed {
            root,
            artifact: Artifact::Sha256(sha2::Sha256::digest(ARTIFACT).into()),
            key: Policy::Key(SIGNER_SPKI.to_vec()),
            identity: Policy::Identity {
                san: Matcher::Exact(IDENTITY.into()),
                issuer: Matcher::Exact(ISSUER.into()),
            },
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    let Ok(bundle) = Bundle::from_slice(data) else {
        return;
    };
    let vm = &bundle.verification_material;
    let keyless = vm.certificate.is_some() || vm.x509_certificate_chain.is_some();
    let policy = if keyless { &f.identity } else { &f.key };
    // Far after every seed was signed: only a log time after it is refused.
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(47_482); // 2100-01-01
    let report = verify(&bundle, &f.artifact, policy, &f.root, now);
    match report.failure() {
        None => {
            assert!(report.verified, "no failed check but not verified: {report:?}");
            assert!(report.checks.iter().all(|c| c.ok));
            assert!(!report.checks.is_empty());
            if keyless {
                assert!(
                    !report.signing_times.is_empty(),
                    "a certificate accepted without a verified time: {report:?}"
                );
                assert!(report.identity.is_some());
            }
        }
        Some(failed) => {
            assert!(!report.verified, "verified with a failed check: {report:?}");
            let last = report.checks.last().expect("a failure is a check");
            assert!(!last.ok, "the failed check is not the last: {report:?}");
            assert_eq!(report.checks.iter().filter(|c| !c.ok).count(), 1);
            assert!(
                CHECKS.contains(&failed.check.as_str()),
                "unknown check `{}`: {report:?}",
                failed.check
            );
            assert!(!failed.detail.trim().is_empty(), "a refusal says nothing: {report:?}");
        }
    }
});
