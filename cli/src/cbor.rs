//! A minimal deterministic CBOR encoder (RFC 8949), for the attestation objects of
//! `waxseal keys attest --format tpm|step` (docs/key-attestation.md).
//!
//! Only what those objects hold: unsigned and negative integers, byte and text
//! strings, arrays and maps with text keys. Every head uses the shortest form
//! (RFC 8949 §4.2.1) and map keys are sorted length-first, then bytewise, by their
//! encoding: the "CTAP2 canonical CBOR" that WebAuthn asks of attestation objects
//! (RFC 8949 §4.2.3, length-first map key ordering). No indefinite lengths, floats
//! or tags. The project has no CBOR crate in its lockfile; this is all it needs.

/// A CBOR data item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer (major type 0 when ≥ 0, 1 when negative).
    Int(i64),
    /// A byte string (major type 2).
    Bytes(Vec<u8>),
    /// A text string (major type 3).
    Text(String),
    /// An array (major type 4).
    Array(Vec<Value>),
    /// A map with text keys (major type 5); [`encode`] sorts the keys.
    Map(Vec<(String, Value)>),
}

/// Why a value cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Two entries of one map have the same key (RFC 8949 §5.6: not valid).
    #[error("CBOR map key `{0}` appears twice")]
    DuplicateKey(String),
}

/// The deterministic encoding of `value`.
pub fn encode(value: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    put(&mut out, value)?;
    Ok(out)
}

/// Major type `major` with argument `n`, in the shortest form.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if let Ok(b) = u8::try_from(n) {
        out.extend([m | 24, b]);
    } else if let Ok(h) = u16::try_from(n) {
        out.push(m | 25);
        out.extend(h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(m | 26);
        out.extend(w.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend(n.to_be_bytes());
    }
}

fn put(out: &mut Vec<u8>, value: &Value) -> Result<(), Error> {
    match value {
        Value::Int(i) if *i >= 0 => head(out, 0, i.unsigned_abs()),
        // -1 - n: n = -1 - i = |i| - 1, which cannot overflow for a negative i.
        Value::Int(i) => head(out, 1, i.unsigned_abs() - 1),
        Value::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend(b);
        }
        Value::Text(t) => {
            head(out, 3, t.len() as u64);
            out.extend(t.as_bytes());
        }
        Value::Array(items) => {
            head(out, 4, items.len() as u64);
            for item in items {
                put(out, item)?;
            }
        }
        Value::Map(entries) => {
            let mut encoded = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key = encode(&Value::Text(k.clone()))?;
                let val = encode(v)?;
                encoded.push((key, val, k));
            }
            encoded.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
            for pair in encoded.windows(2) {
                if pair[0].0 == pair[1].0 {
                    return Err(Error::DuplicateKey(pair[0].2.clone()));
                }
            }
            head(out, 5, encoded.len() as u64);
            for (k, v, _) in encoded {
                out.extend(k);
                out.extend(v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(v: &Value) -> String {
        hex::encode(encode(v).unwrap())
    }

    #[test]
    fn integers_take_the_shortest_head() {
        // RFC 8949 Appendix A examples.
        assert_eq!(hex(&Value::Int(0)), "00");
        assert_eq!(hex(&Value::Int(23)), "17");
        assert_eq!(hex(&Value::Int(24)), "1818");
        assert_eq!(hex(&Value::Int(1000)), "1903e8");
        assert_eq!(hex(&Value::Int(1_000_000)), "1a000f4240");
        assert_eq!(hex(&Value::Int(1_000_000_000_000)), "1b000000e8d4a51000");
        assert_eq!(hex(&Value::Int(-1)), "20");
        assert_eq!(hex(&Value::Int(-7)), "26");
        assert_eq!(hex(&Value::Int(-100)), "3863");
        assert_eq!(hex(&Value::Int(-257)), "390100");
        assert_eq!(hex(&Value::Int(-65535)), "39fffe");
        assert_eq!(hex(&Value::Int(i64::MIN)), "3b7fffffffffffffff");
    }

    #[test]
    fn strings_and_arrays() {
        assert_eq!(hex(&Value::Bytes(vec![])), "40");
        assert_eq!(hex(&Value::Bytes(vec![1, 2, 3, 4])), "4401020304");
        assert_eq!(hex(&Value::Text("IETF".into())), "6449455446");
        assert_eq!(hex(&Value::Text("ü".into())), "62c3bc");
        let long = Value::Bytes(vec![0; 300]);
        assert!(hex(&long).starts_with("59012c"));
        assert_eq!(
            hex(&Value::Array(vec![Value::Int(1), Value::Int(2)])),
            "820102"
        );
    }

    #[test]
    fn map_keys_are_sorted_length_first_then_bytewise() {
        let m = Value::Map(vec![
            ("certInfo".into(), Value::Int(1)),
            ("x5c".into(), Value::Int(2)),
            ("alg".into(), Value::Int(3)),
            ("pubArea".into(), Value::Int(4)),
            ("ver".into(), Value::Int(5)),
            ("sig".into(), Value::Int(6)),
        ]);
        let bytes = encode(&m).unwrap();
        // a6, then alg, sig, ver, x5c (3 letters), pubArea (7), certInfo (8).
        let text = String::from_utf8_lossy(&bytes);
        let order: Vec<usize> = ["alg", "sig", "ver", "x5c", "pubArea", "certInfo"]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(bytes[0], 0xa6);
    }

    #[test]
    fn a_duplicate_map_key_is_refused() {
        let m = Value::Map(vec![
            ("a".into(), Value::Int(1)),
            ("a".into(), Value::Int(2)),
        ]);
        assert_eq!(encode(&m), Err(Error::DuplicateKey("a".into())));
    }
}
