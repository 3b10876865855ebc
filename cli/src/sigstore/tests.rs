#![allow(clippy::unwrap_used)]
use super::*;

fn tree_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = leaves.len().next_power_of_two() / 2;
    node_hash(&tree_root(&leaves[..k]), &tree_root(&leaves[k..]))
}

fn proof(leaves: &[[u8; 32]], m: usize) -> Vec<Vec<u8>> {
    if leaves.len() == 1 {
        return vec![];
    }
    let k = leaves.len().next_power_of_two() / 2;
    if m < k {
        let mut p = proof(&leaves[..k], m);
        p.push(tree_root(&leaves[k..]).to_vec());
        p
    } else {
        let mut p = proof(&leaves[k..], m - k);
        p.push(tree_root(&leaves[..k]).to_vec());
        p
    }
}

#[test]
fn inclusion_proofs_for_every_leaf_of_every_small_tree() {
    for n in 1..=17usize {
        let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
        let root = tree_root(&leaves);
        for m in 0..n {
            let p = proof(&leaves, m);
            let got = root_from_proof(m as i64, n as i64, leaves[m], &p).unwrap();
            assert_eq!(got, root, "tree {n} leaf {m}");
            if !p.is_empty() {
                let mut bad = p.clone();
                bad[0][0] ^= 1;
                assert_ne!(
                    root_from_proof(m as i64, n as i64, leaves[m], &bad).unwrap(),
                    root
                );
            }
        }
    }
    assert!(root_from_proof(3, 3, [0; 32], &[]).is_err());
}

#[test]
fn bundle_json_follows_the_protobuf_mapping() {
    let b = Bundle::new(b"spki", HashAlg::Sha256, &[1; 32], &[2; 8]);
    let v = serde_json::to_value(&b).unwrap();
    assert_eq!(v["mediaType"], MEDIA_TYPE);
    assert_eq!(
        v["verificationMaterial"]["publicKey"]["hint"],
        key_hint(b"spki")
    );
    assert_eq!(v["verificationMaterial"]["tlogEntries"], json!([]));
    assert_eq!(
        v["messageSignature"]["messageDigest"]["algorithm"],
        "SHA2_256"
    );
    let mut e: Value = json!({
        "logIndex": 12, "logId": {"keyId": "AAEC"}, "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
        "integratedTime": "1700000000", "canonicalizedBody": "e30="
    });
    let t: TlogEntry = serde_json::from_value(e.clone()).unwrap();
    assert_eq!(t.log_index.0, 12);
    assert_eq!(serde_json::to_value(&t).unwrap()["logIndex"], "12");
    e["integratedTime"] = json!(true);
    assert!(serde_json::from_value::<TlogEntry>(e).is_err());
}

fn proof_for(root: &[u8], size: i64) -> InclusionProof {
    InclusionProof {
        log_index: Int64(0),
        root_hash: B64Bytes(root.to_vec()),
        tree_size: Int64(size),
        hashes: vec![],
        checkpoint: Checkpoint {
            envelope: String::new(),
        },
    }
}

fn signed_note(note: &str, name: &str, key_id: &[u8], sig: &[u8]) -> String {
    format!(
        "{note}\n\u{2014} {name} {}\n",
        B64.encode([key_id, sig].concat())
    )
}

#[test]
fn checkpoints_signed_by_an_ed25519_log_key_follow_c2sp_key_ids() {
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use ed25519_dalek::Signer as _;
    let name = "log.example/v2";
    let root = [3u8; 32];
    let note = format!("{name}\n5\n{}\n", B64.encode(root));
    let sk = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let der = sk.verifying_key().to_public_key_der().unwrap();
    let key = AnyPublicKey::from_spki(der.as_bytes()).unwrap();
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, 0x01]);
    h.update(sk.verifying_key().as_bytes());
    let id = h.finalize()[..4].to_vec();
    let sig = sk.sign(note.as_bytes()).to_bytes();
    let proof = proof_for(&root, 5);

    let good = signed_note(&note, name, &id, &sig);
    check_checkpoint(&good, &key, der.as_bytes(), &proof).unwrap();
    // Another line first (another witness) does not matter.
    let witnessed = good.replace(
        "\n\n",
        &format!("\n\n\u{2014} witness.example {}\n", B64.encode([9u8; 68])),
    );
    check_checkpoint(&witnessed, &key, der.as_bytes(), &proof).unwrap();

    // The key ID of the SPKI (the ECDSA rule) is not this key's.
    let spki_id = Sha256::digest(der.as_bytes())[..4].to_vec();
    let e = check_checkpoint(
        &signed_note(&note, name, &spki_id, &sig),
        &key,
        der.as_bytes(),
        &proof,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("carries no signature by the Rekor key"),
        "{e:#}"
    );
    // A changed note: the signature no longer verifies.
    let changed = good.replacen("\n5\n", "\n6\n", 1);
    let e = check_checkpoint(&changed, &key, der.as_bytes(), &proof_for(&root, 6)).unwrap_err();
    assert!(format!("{e:#}").contains("does not verify"), "{e:#}");
    // Another tree than the proof's.
    let e = check_checkpoint(&good, &key, der.as_bytes(), &proof_for(&root, 4)).unwrap_err();
    assert!(e.to_string().contains("another tree"), "{e:#}");
}

#[test]
fn checkpoints_signed_by_an_ecdsa_log_key_use_the_spki_key_id() {
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;
    let name = "rekor.example";
    let root = [4u8; 32];
    let note = format!("{name}\n9\n{}\n", B64.encode(root));
    let sk = p256::ecdsa::SigningKey::from_slice(&[6; 32]).unwrap();
    let der = sk.verifying_key().to_public_key_der().unwrap();
    let key = AnyPublicKey::from_spki(der.as_bytes()).unwrap();
    let id = Sha256::digest(der.as_bytes())[..4].to_vec();
    let sig: p256::ecdsa::Signature = sk.sign(note.as_bytes());
    let sig = sig.to_der().as_bytes().to_vec();
    let proof = proof_for(&root, 9);
    check_checkpoint(
        &signed_note(&note, name, &id, &sig),
        &key,
        der.as_bytes(),
        &proof,
    )
    .unwrap();
    let mut bad = sig.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let e = check_checkpoint(
        &signed_note(&note, name, &id, &bad),
        &key,
        der.as_bytes(),
        &proof,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("does not verify"), "{e:#}");
}

#[test]
fn rekor_v2_key_details_fix_the_hash_and_refuse_ed25519() {
    // One trait (the pkcs8 crate's) for all three key types.
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    let p256 = p256::ecdsa::SigningKey::from_slice(&[6; 32]).unwrap();
    let p256 = p256.verifying_key().to_public_key_der().unwrap();
    let p384 = p384::ecdsa::SigningKey::from_slice(&[6; 48]).unwrap();
    let p384 = p384.verifying_key().to_public_key_der().unwrap();
    let ed = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let ed = ed.verifying_key().to_public_key_der().unwrap();

    assert_eq!(
        key_details(p256.as_bytes(), HashAlg::Sha256).unwrap(),
        "PKIX_ECDSA_P256_SHA_256"
    );
    assert_eq!(
        key_details(p384.as_bytes(), HashAlg::Sha384).unwrap(),
        "PKIX_ECDSA_P384_SHA_384"
    );
    let e = key_details(p256.as_bytes(), HashAlg::Sha384).unwrap_err();
    assert!(e.to_string().contains("over sha256 digests only"), "{e}");
    let e = key_details(ed.as_bytes(), HashAlg::Sha256).unwrap_err();
    assert!(
        e.to_string()
            .contains("Rekor v2 does not accept pure Ed25519"),
        "{e}"
    );

    // The request carries the key's DER and its details, the digest and the signature.
    let req = hashedrekord_v2(
        &[1; 32],
        &[2; 70],
        p256.as_bytes(),
        "PKIX_ECDSA_P256_SHA_256",
    );
    let r = &req["hashedRekordRequestV002"];
    assert_eq!(r["digest"], B64.encode([1; 32]));
    assert_eq!(r["signature"]["content"], B64.encode([2; 70]));
    assert_eq!(
        r["signature"]["verifier"]["publicKey"]["rawBytes"],
        B64.encode(p256.as_bytes())
    );
    assert_eq!(
        r["signature"]["verifier"]["keyDetails"],
        "PKIX_ECDSA_P256_SHA_256"
    );
}

#[test]
fn dsse_bundle_json_follows_the_protobuf_mapping() {
    let b = Bundle::new_dsse(b"spki", b"{}", &[2; 8]);
    let v = serde_json::to_value(&b).unwrap();
    assert_eq!(v["mediaType"], MEDIA_TYPE);
    assert!(v.get("messageSignature").is_none());
    let e = &v["dsseEnvelope"];
    assert_eq!(e["payload"], "e30=");
    assert_eq!(e["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(e["signatures"], json!([{"sig": "AgICAgICAgI="}]));
    let back: Bundle = serde_json::from_value(v).unwrap();
    assert_eq!(back, b);
}

/// A `dsse` v0.0.1 entry whose body is `spec`, otherwise empty: the body checks come
/// before the log's signatures, so each refusal below is the body's.
fn dsse_entry(spec: Value) -> TlogEntry {
    let body = json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": spec});
    TlogEntry {
        log_index: Int64(0),
        log_id: LogId {
            key_id: B64Bytes(vec![0; 32]),
        },
        kind_version: KindVersion {
            kind: "dsse".into(),
            version: "0.0.1".into(),
        },
        integrated_time: Int64(0),
        inclusion_promise: None,
        inclusion_proof: None,
        canonicalized_body: B64Bytes(body.to_string().into_bytes()),
    }
}

#[test]
fn dsse_entries_must_log_this_envelopes_payload_signature_and_key() {
    use p256::pkcs8::EncodePublicKey as _;
    let key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let spki = key.verifying_key().to_public_key_der().unwrap().to_vec();
    let other = p256::ecdsa::SigningKey::from_slice(&[8; 32]).unwrap();
    let other_spki = other.verifying_key().to_public_key_der().unwrap().to_vec();
    let b = Bundle::new_dsse(&spki, b"{\"statement\":1}", &[5; 70]);
    let env = b.dsse_envelope.unwrap();
    let rekor = Rekor {
        url: String::new(),
        key_der: spki.clone(),
    };
    let payload_hash = hex::encode(Sha256::digest(&env.payload.0));
    let spec = |hash: &str, sig: &[u8], key: &[u8]| {
        json!({
            "envelopeHash": {"algorithm": "sha256", "value": "00"},
            "payloadHash": {"algorithm": "sha256", "value": hash},
            "signatures": [{"signature": B64.encode(sig), "verifier": B64.encode(spki_pem(key))}],
        })
    };
    // The body is right: what fails next is the log's own part (its ID, then its SET).
    let right = dsse_entry(spec(&payload_hash, &[5; 70], &spki));
    let e = rekor.check_dsse_entry(&right, &env, &spki).unwrap_err();
    assert!(format!("{e:#}").contains("is not the log key's"), "{e:#}");
    for (entry, says) in [
        (
            dsse_entry(spec(&"ab".repeat(32), &[5; 70], &spki)),
            "payloadHash",
        ),
        (
            dsse_entry(spec(&payload_hash, &[6; 70], &spki)),
            "signature is not the envelope's",
        ),
        (
            dsse_entry(spec(&payload_hash, &[5; 70], &other_spki)),
            "public key is not the signing key",
        ),
        (
            dsse_entry(json!({
                "payloadHash": {"algorithm": "sha256", "value": payload_hash},
                "proposedContent": {"envelope": "{}", "verifiers": []},
            })),
            "exactly one signature",
        ),
    ] {
        let e = rekor.check_dsse_entry(&entry, &env, &spki).unwrap_err();
        assert!(format!("{e:#}").contains(says), "{says}: {e:#}");
    }
    // A hashedrekord entry is not a dsse entry.
    let mut wrong_kind = right.clone();
    wrong_kind.kind_version.kind = "hashedrekord".into();
    let e = rekor
        .check_dsse_entry(&wrong_kind, &env, &spki)
        .unwrap_err();
    assert!(format!("{e:#}").contains("not dsse 0.0.1"), "{e:#}");
}
