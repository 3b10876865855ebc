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
