//! PCR-bound keys: the policy a key bound to PCRs carries, how it is written in the key
//! file, its digest, and the file of bound values kept beside the key file.
//!
//! A bound key's authPolicy is TPM2_PolicyPCR over one bank's PCRs, then
//! TPM2_PolicyAuthValue when the key has an auth value (a PIN). Its `userWithAuth` is
//! clear, so the auth value alone does not sign: only a policy session that passed
//! PolicyPCR (the TPM compares the PCRs' digest itself). The TSS2 key file's `[1]
//! policy` holds the statements as openssl_tpm2_engine (`create_tpm2_key --pcr-lock`)
//! and the Linux kernel's trusted keys write them: for PolicyPCR, the marshalled
//! TPML_PCR_SELECTION followed by the PCR digest (the name algorithm's length, no size
//! prefix); for PolicyAuthValue, nothing. README.md, "TPM keys bound to PCRs".
//!
//! The key file holds only the digest of the bound values; the values themselves go to
//! `LABEL.pcr-values` beside it (the `--pcr-values` text form), so that a refusal can
//! name the PCRs that differ. That file is read only to explain; the TPM decides.
//!
//! Pure: no TPM, no IO.

use sha2::{Digest as _, Sha256};

use super::keyfile::PolicyStep;
use crate::proto::{PcrBank, PcrSelection};

/// TPM_CC_PolicyPCR.
pub const CC_POLICY_PCR: u32 = 0x17f;
/// TPM_CC_PolicyAuthValue.
pub const CC_POLICY_AUTH_VALUE: u32 = 0x16b;

/// What a bound key's policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBinding {
    /// The bank and PCRs.
    pub selection: PcrSelection,
    /// SHA-256 of the bound values, concatenated in PCR order (PolicyPCR's `pcrDigest`
    /// in a SHA-256 session).
    pub pcr_digest: [u8; 32],
    /// Whether the policy also asks for the key's auth value (PolicyAuthValue).
    pub auth_value: bool,
    /// The statements in the order the policy runs them.
    pub order: Vec<u32>,
}

/// The TPM_ALG_ID of a bank.
fn alg_id(bank: PcrBank) -> u16 {
    match bank {
        PcrBank::Sha1 => 0x0004,
        PcrBank::Sha256 => 0x000b,
        PcrBank::Sha384 => 0x000c,
        PcrBank::Sha512 => 0x000d,
    }
}

fn bank_of(alg: u16) -> Option<PcrBank> {
    PcrBank::ALL.iter().copied().find(|&b| alg_id(b) == alg)
}

/// TPML_PCR_SELECTION of one bank, three select octets (PCRs 0–23).
pub fn tpml_pcr_selection(sel: &PcrSelection) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&alg_id(sel.bank).to_be_bytes());
    out.push(3);
    out.extend_from_slice(&sel.bitmap());
    out
}

/// PolicyPCR's `pcrDigest`: SHA-256 over the values, in PCR order.
pub fn pcr_digest(values: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

impl PcrBinding {
    /// A binding of `selection` to values whose digest is `pcr_digest`.
    pub fn new(selection: PcrSelection, pcr_digest: [u8; 32], auth_value: bool) -> PcrBinding {
        let mut order = vec![CC_POLICY_PCR];
        if auth_value {
            order.push(CC_POLICY_AUTH_VALUE);
        }
        PcrBinding {
            selection,
            pcr_digest,
            auth_value,
            order,
        }
    }

    /// The key file's policy statements.
    pub fn steps(&self) -> Vec<PolicyStep> {
        self.order
            .iter()
            .map(|&code| PolicyStep {
                command_code: code,
                body: if code == CC_POLICY_PCR {
                    let mut b = tpml_pcr_selection(&self.selection);
                    b.extend_from_slice(&self.pcr_digest);
                    b
                } else {
                    Vec::new()
                },
            })
            .collect()
    }

    /// The policy digest (SHA-256) the statements reach: the key's authPolicy.
    pub fn policy_digest(&self) -> [u8; 32] {
        let mut digest = [0u8; 32];
        for &code in &self.order {
            let mut h = Sha256::new();
            h.update(digest);
            h.update(code.to_be_bytes());
            if code == CC_POLICY_PCR {
                h.update(tpml_pcr_selection(&self.selection));
                h.update(self.pcr_digest);
            }
            digest = h.finalize().into();
        }
        digest
    }

    /// Reads a key file's policy. `Ok(None)`: no policy. An error says which
    /// statement waxseal cannot run: only PolicyPCR over one bank's PCRs 0–23 and
    /// PolicyAuthValue, each at most once, are supported.
    pub fn from_steps(steps: &[PolicyStep]) -> Result<Option<PcrBinding>, String> {
        if steps.is_empty() {
            return Ok(None);
        }
        let mut found: Option<(PcrSelection, [u8; 32])> = None;
        let mut auth_value = false;
        let mut order = Vec::new();
        for step in steps {
            match step.command_code {
                CC_POLICY_PCR if found.is_none() => {
                    found = Some(parse_policy_pcr(&step.body)?);
                }
                CC_POLICY_AUTH_VALUE if !auth_value && step.body.is_empty() => {
                    auth_value = true;
                }
                CC_POLICY_PCR | CC_POLICY_AUTH_VALUE => {
                    return Err(format!(
                        "its policy repeats or misforms command {:#x}",
                        step.command_code
                    ))
                }
                other => {
                    return Err(format!(
                        "its policy uses TPM command {other:#x}; waxseal runs only PolicyPCR (0x17f) and PolicyAuthValue (0x16b)"
                    ))
                }
            }
            order.push(step.command_code);
        }
        let Some((selection, pcr_digest)) = found else {
            return Err("its policy has no PolicyPCR; waxseal runs only PCR policies".into());
        };
        Ok(Some(PcrBinding {
            selection,
            pcr_digest,
            auth_value,
            order,
        }))
    }
}

/// Splits a PolicyPCR statement's body: TPML_PCR_SELECTION, then a SHA-256 digest.
fn parse_policy_pcr(body: &[u8]) -> Result<(PcrSelection, [u8; 32]), String> {
    let bad = |why: &str| format!("its PolicyPCR statement {why}");
    let (count, rest) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("is truncated"))?;
    if u32::from_be_bytes(*count) != 1 {
        return Err(bad("selects PCRs in more or fewer than one bank"));
    }
    let (alg, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| bad("is truncated"))?;
    let bank = bank_of(u16::from_be_bytes(*alg)).ok_or_else(|| bad("names an unknown bank"))?;
    let (&size, rest) = rest.split_first().ok_or_else(|| bad("is truncated"))?;
    let size = usize::from(size);
    if !(1..=4).contains(&size) || rest.len() < size {
        return Err(bad("has a bad pcrSelect size"));
    }
    let (map, rest) = rest.split_at(size);
    let mut pcrs = Vec::new();
    for (byte, bits) in map.iter().enumerate() {
        for bit in 0..8u8 {
            if bits & (1 << bit) != 0 {
                let index = byte * 8 + usize::from(bit);
                pcrs.push(u8::try_from(index).map_err(|_| bad("selects a PCR past 23"))?);
            }
        }
    }
    let selection = PcrSelection { bank, pcrs };
    selection.check().map_err(|e| bad(&e))?;
    if size != 3 {
        // The digest covers the marshalled selection: waxseal re-marshals with three
        // octets, so another size would not reach the key's authPolicy.
        return Err(bad("uses a pcrSelect size other than 3"));
    }
    let digest: [u8; 32] = rest
        .try_into()
        .map_err(|_| bad("does not end in a SHA-256 digest"))?;
    Ok((selection, digest))
}

/// The text of `LABEL.pcr-values`: one `BANK:INDEX=HEX` line per PCR.
pub fn values_text(sel: &PcrSelection, values: &[Vec<u8>]) -> String {
    let mut out = String::from(
        "# The PCR values this key is bound to (waxseal; the key file holds their digest).\n",
    );
    for (i, v) in sel.pcrs.iter().zip(values) {
        out.push_str(&format!("{}:{i}={}\n", sel.bank, hex::encode(v)));
    }
    out
}

/// Names the PCRs whose `current` value is not the `bound` one, with both values;
/// `bound` is `None` when the bound values are not known (only their digest is).
pub fn describe_mismatch(
    sel: &PcrSelection,
    current: &[Vec<u8>],
    bound: Option<&[Vec<u8>]>,
) -> String {
    let Some(bound) = bound else {
        let now: Vec<String> = sel
            .pcrs
            .iter()
            .zip(current)
            .map(|(i, v)| format!("{}:{i}={}", sel.bank, hex::encode(v)))
            .collect();
        return format!(
            "the TPM refused the key's PCR policy: PCRs {sel} are not in the state the key is bound to (the bound values are not known: there is no valid .pcr-values file beside the key file, only their digest in it); current values: {}",
            now.join(", ")
        );
    };
    let differ: Vec<String> = sel
        .pcrs
        .iter()
        .zip(current.iter().zip(bound))
        .filter(|(_, (c, b))| c != b)
        .map(|(i, (c, b))| {
            format!(
                "PCR {}:{i} is {} but the key is bound to {}",
                sel.bank,
                hex::encode(c),
                hex::encode(b)
            )
        })
        .collect();
    if differ.is_empty() {
        return format!("the TPM refused the key's PCR policy ({sel}), but the PCRs read now hold the bound values: they changed while the agent signed; try again");
    }
    format!(
        "the PCRs differ from the state the key is bound to: {}",
        differ.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(spec: &str) -> PcrSelection {
        PcrSelection::parse(spec).unwrap()
    }

    #[test]
    fn policy_digest_of_pcr_16_at_zero() {
        // PCR 16 of the SHA-256 bank reset to zeros: pcrDigest = SHA-256(32 zero bytes).
        let d = pcr_digest(&[vec![0u8; 32]]);
        assert_eq!(
            hex::encode(d),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        let b = PcrBinding::new(sel("sha256:16"), d, false);
        // The statement body, as the kernel's trusted keys document it:
        // 000b 03 000001 then the digest, after TPML's count.
        let body = &b.steps()[0].body;
        assert_eq!(hex::encode(&body[..10]), "00000001000b03000001");
        assert_eq!(&body[10..], &d);
        // policyDigest = SHA-256(0^32 || 0000017f || TPML || pcrDigest).
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update([0, 0, 1, 0x7f]);
        h.update(&body[..]);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(b.policy_digest(), want);
        // With PolicyAuthValue: one more step, SHA-256(prev || 0000016b).
        let a = PcrBinding::new(sel("sha256:16"), d, true);
        let mut h = Sha256::new();
        h.update(want);
        h.update([0, 0, 1, 0x6b]);
        let want2: [u8; 32] = h.finalize().into();
        assert_eq!(a.policy_digest(), want2);
    }

    #[test]
    fn steps_read_back() {
        for auth in [false, true] {
            let b = PcrBinding::new(sel("sha384:0,2,4,7,23"), [7; 32], auth);
            assert_eq!(PcrBinding::from_steps(&b.steps()).unwrap(), Some(b.clone()));
        }
        // PolicyAuthValue first (openssl_tpm2_engine allows either order).
        let b = PcrBinding::new(sel("sha256:1"), [1; 32], true);
        let mut steps = b.steps();
        steps.reverse();
        let back = PcrBinding::from_steps(&steps).unwrap().unwrap();
        assert_eq!(back.order, vec![CC_POLICY_AUTH_VALUE, CC_POLICY_PCR]);
        assert_ne!(back.policy_digest(), b.policy_digest());
        assert_eq!(PcrBinding::from_steps(&[]).unwrap(), None);
    }

    #[test]
    fn unsupported_policies_are_named() {
        let b = PcrBinding::new(sel("sha256:1"), [1; 32], false);
        let good = b.steps()[0].clone();
        let with = |code: u32, body: Vec<u8>| {
            vec![
                good.clone(),
                PolicyStep {
                    command_code: code,
                    body,
                },
            ]
        };
        let cases = [
            (with(0x16a, Vec::new()), "0x16a"),
            (with(CC_POLICY_PCR, good.body.clone()), "repeats"),
            (
                vec![PolicyStep {
                    command_code: CC_POLICY_AUTH_VALUE,
                    body: Vec::new(),
                }],
                "no PolicyPCR",
            ),
            (
                vec![PolicyStep {
                    command_code: CC_POLICY_PCR,
                    body: good.body[..20].to_vec(),
                }],
                "SHA-256 digest",
            ),
        ];
        for (steps, want) in cases {
            let e = PcrBinding::from_steps(&steps).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut two_banks = good.body.clone();
        two_banks[3] = 2;
        let e = PcrBinding::from_steps(&[PolicyStep {
            command_code: CC_POLICY_PCR,
            body: two_banks,
        }])
        .unwrap_err();
        assert!(e.contains("one bank"), "{e}");
    }

    #[test]
    fn mismatches_name_the_pcrs() {
        let s = sel("sha256:0,16");
        let bound = vec![vec![0u8; 32], vec![0u8; 32]];
        let now = vec![vec![0u8; 32], vec![0xaa; 32]];
        let m = describe_mismatch(&s, &now, Some(&bound));
        assert!(m.contains("PCR sha256:16 is aaaa"), "{m}");
        assert!(!m.contains("sha256:0 "), "{m}");
        let unknown = describe_mismatch(&s, &now, None);
        assert!(unknown.contains("sha256:16=aaaa"), "{unknown}");
        let text = values_text(&s, &bound);
        assert_eq!(crate::proto::parse_pcr_values(&text, &s).unwrap().len(), 2);
    }
}
