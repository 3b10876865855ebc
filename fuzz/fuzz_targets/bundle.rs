//! Sigstore bundles as `waxseal verify` reads them (cli/src/sigstore.rs):
//! `Bundle::read` on a file holding arbitrary bytes, then `verify_bundle` against a
//! fixed artifact, signing key and Rekor key (fuzz/keys/, made by
//! fuzz/scripts/make-seeds.py), so that the Rekor checks (canonicalized body, signed
//! entry timestamp, inclusion proof, checkpoint) run offline on fuzzed entries.
//!
//! - never panics;
//! - `Bundle::read` accepts exactly the JSON bundles whose mediaType is one it reads;
//! - an accepted bundle serialises (as `Bundle::write` does) and reads back equal.
#![no_main]
// Every `expect`/`unwrap` here is an assertion of the target (a temp file that must
// write, a value that must serialise): a panic is a finding, which libFuzzer keeps.

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waxseal::signing_config::{LogInstance, TrustedRoot};
use waxseal::sigstore::{verify_bundle, Artifact, Bundle, Rekor, MEDIA_TYPES_READ};
use waxseal::verify_sigstore::{verify, Matcher, Policy};
use waxseal_fuzz::json_eq;

/// The signer's and the log's public keys (DER SPKI) the seeds are made with.
const SIGNER_SPKI: &[u8] = include_bytes!("../keys/signer.spki.der");
const REKOR_SPKI: &[u8] = include_bytes!("../keys/rekor.spki.der");
/// The artifact the seed bundles sign.
const ARTIFACT: &[u8] = include_bytes!("../keys/artifact.txt");

struct Files {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    artifact: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let artifact = dir.path().join("artifact.txt");
        std::fs::write(&artifact, ARTIFACT).expect("write artifact");
        Files {
            bundle: dir.path().join("artifact.txt.sigstore.json"),
            artifact,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = files();
    std::fs::write(&f.bundle, data).expect("write bundle");
    let read = Bundle::read(&f.bundle);
    let direct = serde_json::from_slice::<Bundle>(data)
        .ok()
        .filter(|b| MEDIA_TYPES_READ.contains(&b.media_type.as_str()));
    let bundle = match (read, direct) {
        (Ok(a), Some(b)) => {
            assert_eq!(a, b);
            a
        }
        (Err(_), None) => return,
        (a, b) => panic!("Bundle::read gave {a:?} where serde gave {b:?}"),
    };
    // Round trip, in the form Bundle::write uses.
    let text = serde_json::to_string_pretty(&bundle).expect("a read bundle serialises");
    let again: Bundle = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{bundle:?} written as {text} does not read back: {e}"));
    let (v1, v2) = (
        serde_json::to_value(&bundle).expect("serialise"),
        serde_json::to_value(&again).expect("serialise"),
    );
    assert!(
        json_eq(&v1, &v2),
        "round trip changed the bundle:\n{v1}\n{v2}"
    );
    let rekor = Rekor {
        url: "http://127.0.0.1:9".into(),
        key_der: REKOR_SPKI.to_vec(),
    };
    let artifact = Artifact::File(f.artifact.clone());
    let _ = verify_bundle(&bundle, &artifact, SIGNER_SPKI, Some(&rekor), None);
    let _ = verify_bundle(&bundle, &artifact, SIGNER_SPKI, None, None);
    // The trusted-root verifier, with a fixed root naming the Rekor key, for a key and
    // for an identity (the bundle's certificate, if any, chains to nothing here).
    let root = TrustedRoot {
        tlogs: Vec::new(),
        tsa_chains: Vec::new(),
        logs: vec![LogInstance {
            base_url: rekor.url.clone(),
            key: REKOR_SPKI.to_vec(),
            key_details: String::new(),
            key_id: {
                use sha2::Digest as _;
                sha2::Sha256::digest(REKOR_SPKI).to_vec()
            },
            start: None,
            end: None,
        }],
        ctlogs: Vec::new(),
        cas: Vec::new(),
        tsas: Vec::new(),
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let _ = verify(
        &bundle,
        &artifact,
        &Policy::Key(SIGNER_SPKI.to_vec()),
        &root,
        now,
    );
    let identity = Policy::Identity {
        san: Matcher::Exact("a@example.com".into()),
        issuer: Matcher::Exact("https://issuer.example".into()),
    };
    let _ = verify(&bundle, &artifact, &identity, &root, now);
});
