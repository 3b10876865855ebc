//! TSS2 PEM key files (`-----BEGIN TSS2 PRIVATE KEY-----`): the ASN.1 form of a TPM key
//! that `tpm2-openssl`, `tpm2-tss-engine`, `ssh-tpm-agent` and the Linux kernel's
//! trusted-keys read (draft-bottomley-tpm2-keys):
//!
//! ```text
//! TPMKey ::= SEQUENCE {
//!     type        OBJECT IDENTIFIER,              -- id-loadablekey 2.23.133.10.1.3
//!     emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//!     policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//!     secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//!     authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//!     description [4] EXPLICIT UTF8String OPTIONAL,
//!     rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
//!     parent      INTEGER,                        -- 0x40000001: the owner SRK
//!     pubkey      OCTET STRING,                   -- TPM2B_PUBLIC
//!     privkey     OCTET STRING                    -- TPM2B_PRIVATE
//! }
//! ```
//!
//! `policy` is a `SEQUENCE OF TPMPolicy ::= SEQUENCE { commandCode [0] EXPLICIT INTEGER,
//! commandPolicy [1] EXPLICIT OCTET STRING }`, the policy commands in the order they
//! are run; [`super::pcr`] says what waxseal writes there and reads back.
//!
//! Pure: no TPM, no IO. A small DER reader/writer of our own, for these few types.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// DER of OID 2.23.133.10.1.3 (id-loadablekey), without tag and length.
const OID_LOADABLE: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x03];
/// DER of OID 2.23.133.10.1.4 (id-importablekey).
const OID_IMPORTABLE: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x04];
/// DER of OID 2.23.133.10.1.5 (id-sealedkey).
const OID_SEALED: &[u8] = &[0x67, 0x81, 0x05, 0x0a, 0x01, 0x05];

/// The PEM label.
pub const PEM_LABEL: &str = "TSS2 PRIVATE KEY";

/// `parent` value meaning "the primary key made from the standard SRK template in the
/// owner hierarchy".
pub const PARENT_OWNER: u32 = 0x4000_0001;

/// A loadable TPM key, as stored in a TSS2 PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// True when the key has no auth value (`emptyAuth`).
    pub empty_auth: bool,
    /// The policy statements (`[1] policy`), in the order they are run.
    pub policy: Vec<PolicyStep>,
    /// True when the key carries signed policies (`[3] authPolicy`).
    pub has_auth_policy: bool,
    /// The parent: [`PARENT_OWNER`] or a persistent handle (0x81…).
    pub parent: u32,
    /// TPM2B_PUBLIC, size prefix included.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE, size prefix included.
    pub private: Vec<u8>,
    /// Optional description (`[4]`).
    pub description: Option<String>,
}

/// One statement of a key's policy: `TPMPolicy ::= SEQUENCE { commandCode [0]
/// EXPLICIT INTEGER, commandPolicy [1] EXPLICIT OCTET STRING }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStep {
    /// The TPM command code of the policy command (TPM_CC_PolicyPCR 0x17f…).
    pub command_code: u32,
    /// The command's policy: its parameters as the key-file format lays them out
    /// ([`super::pcr`] for PolicyPCR; empty for PolicyAuthValue).
    pub body: Vec<u8>,
}

/// The most policy statements a key file may hold.
pub const MAX_POLICY_STEPS: usize = 16;

/// A file that is not a loadable TSS2 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyFileError(pub String);

fn bad(m: impl Into<String>) -> KeyFileError {
    KeyFileError(m.into())
}

impl KeyFile {
    /// Encodes as DER.
    pub fn to_der(&self) -> Vec<u8> {
        let mut body = Vec::new();
        tlv(&mut body, 0x06, OID_LOADABLE);
        if self.empty_auth {
            let mut b = Vec::new();
            tlv(&mut b, 0x01, &[0xff]);
            tlv(&mut body, 0xa0, &b);
        }
        if !self.policy.is_empty() {
            let mut seq = Vec::new();
            for step in &self.policy {
                let mut code = Vec::new();
                tlv(&mut code, 0x02, &der_uint(step.command_code));
                let mut command_policy = Vec::new();
                tlv(&mut command_policy, 0x04, &step.body);
                let mut one = Vec::new();
                tlv(&mut one, 0xa0, &code);
                tlv(&mut one, 0xa1, &command_policy);
                tlv(&mut seq, 0x30, &one);
            }
            let mut b = Vec::new();
            tlv(&mut b, 0x30, &seq);
            tlv(&mut body, 0xa1, &b);
        }
        if let Some(d) = &self.description {
            let mut b = Vec::new();
            tlv(&mut b, 0x0c, d.as_bytes());
            tlv(&mut body, 0xa4, &b);
        }
        tlv(&mut body, 0x02, &der_uint(self.parent));
        tlv(&mut body, 0x04, &self.public);
        tlv(&mut body, 0x04, &self.private);
        let mut out = Vec::new();
        tlv(&mut out, 0x30, &body);
        out
    }

    /// Encodes as PEM.
    pub fn to_pem(&self) -> String {
        let b64 = B64.encode(self.to_der());
        let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
        pem
    }

    /// Decodes a PEM file's text.
    pub fn from_pem(text: &str) -> Result<KeyFile, KeyFileError> {
        let begin = format!("-----BEGIN {PEM_LABEL}-----");
        let end = format!("-----END {PEM_LABEL}-----");
        let start = text
            .find(&begin)
            .ok_or_else(|| bad(format!("no `{begin}` line: not a TSS2 key file")))?
            + begin.len();
        let stop = text[start..]
            .find(&end)
            .ok_or_else(|| bad(format!("no `{end}` line")))?
            + start;
        let b64: String = text[start..stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = B64
            .decode(b64.as_bytes())
            .map_err(|e| bad(format!("the PEM body is not base64: {e}")))?;
        KeyFile::from_der(&der)
    }

    /// Decodes DER.
    pub fn from_der(der: &[u8]) -> Result<KeyFile, KeyFileError> {
        let mut outer = Reader(der);
        let body = outer.expect(0x30, "TPMKey SEQUENCE")?;
        if !outer.0.is_empty() {
            return Err(bad("bytes after the TPMKey SEQUENCE"));
        }
        let mut r = Reader(body);
        let oid = r.expect(0x06, "type OBJECT IDENTIFIER")?;
        if oid == OID_IMPORTABLE {
            return Err(bad(
                "an importable key (id-importablekey): it must be imported into this TPM first (`waxseal keys import tpm/NAME --duplicate FILE`)",
            ));
        }
        if oid == OID_SEALED {
            return Err(bad(
                "a sealed data object (id-sealedkey), not a signing key",
            ));
        }
        if oid != OID_LOADABLE {
            return Err(bad("the type is not id-loadablekey (2.23.133.10.1.3)"));
        }
        let mut key = KeyFile {
            empty_auth: false,
            policy: Vec::new(),
            has_auth_policy: false,
            parent: 0,
            public: Vec::new(),
            private: Vec::new(),
            description: None,
        };
        // Optional context-tagged fields, in order.
        while let Some(tag) = r.peek() {
            if tag & 0xe0 != 0xa0 {
                break;
            }
            let inner = r.expect(tag, "tagged field")?;
            match tag & 0x1f {
                0 => {
                    let b = Reader(inner).expect(0x01, "emptyAuth BOOLEAN")?;
                    key.empty_auth = b.first().is_some_and(|&v| v != 0);
                }
                1 => key.policy = parse_policy(inner)?,
                3 => key.has_auth_policy = true,
                2 => {
                    return Err(bad(
                        "the key has an import secret ([2]); only loadable keys are supported",
                    ))
                }
                4 => {
                    let d = Reader(inner).expect(0x0c, "description UTF8String")?;
                    key.description = Some(String::from_utf8_lossy(d).into_owned());
                }
                _ => {} // later extensions (rsaParent…): nothing we need
            }
        }
        let parent = r.expect(0x02, "parent INTEGER")?;
        key.parent = parse_uint(parent)?;
        key.public = r.expect(0x04, "pubkey OCTET STRING")?.to_vec();
        key.private = r.expect(0x04, "privkey OCTET STRING")?.to_vec();
        if !r.0.is_empty() {
            return Err(bad("unexpected fields after privkey"));
        }
        for (what, v) in [("pubkey", &key.public), ("privkey", &key.private)] {
            if v.len() < 2 || usize::from(u16::from_be_bytes([v[0], v[1]])) != v.len() - 2 {
                return Err(bad(format!(
                    "{what} is not a TPM2B (its size prefix does not match)"
                )));
            }
        }
        Ok(key)
    }

    /// TPMT_PUBLIC: the public area without its size prefix.
    pub fn public_area(&self) -> &[u8] {
        &self.public[2..]
    }

    /// The private blob without its size prefix.
    pub fn private_blob(&self) -> &[u8] {
        &self.private[2..]
    }
}

/// Reads `[1] policy`'s content: a SEQUENCE OF TPMPolicy.
fn parse_policy(inner: &[u8]) -> Result<Vec<PolicyStep>, KeyFileError> {
    let mut outer = Reader(inner);
    let mut seq = Reader(outer.expect(0x30, "policy SEQUENCE OF TPMPolicy")?);
    if !outer.0.is_empty() {
        return Err(bad("bytes after the policy SEQUENCE"));
    }
    let mut steps = Vec::new();
    while !seq.0.is_empty() {
        if steps.len() == MAX_POLICY_STEPS {
            return Err(bad(format!(
                "the policy has more than {MAX_POLICY_STEPS} statements"
            )));
        }
        let mut one = Reader(seq.expect(0x30, "TPMPolicy SEQUENCE")?);
        let code = Reader(one.expect(0xa0, "TPMPolicy commandCode [0]")?)
            .expect(0x02, "commandCode INTEGER")?;
        let body = Reader(one.expect(0xa1, "TPMPolicy commandPolicy [1]")?)
            .expect(0x04, "commandPolicy OCTET STRING")?;
        if !one.0.is_empty() {
            return Err(bad("unexpected fields in a TPMPolicy"));
        }
        steps.push(PolicyStep {
            command_code: parse_uint(code)
                .map_err(|_| bad("a commandCode is not a 32-bit value"))?,
            body: body.to_vec(),
        });
    }
    if steps.is_empty() {
        return Err(bad("the policy field holds no statements"));
    }
    Ok(steps)
}

/// Prefixes `bytes` with a TPM2B u16 size.
pub fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 2);
    v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

fn der_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count().min(3);
    let mut out = Vec::new();
    if bytes[skip] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&bytes[skip..]);
    out
}

fn parse_uint(bytes: &[u8]) -> Result<u32, KeyFileError> {
    let trimmed = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    if trimmed.is_empty() || trimmed.len() > 4 || bytes[0] & 0x80 != 0 {
        return Err(bad("parent is not a 32-bit handle"));
    }
    Ok(trimmed.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)))
}

/// Reads DER TLVs off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], KeyFileError> {
        let data = self.0;
        let trunc = || bad(format!("truncated at {what}"));
        let (&t, rest) = data.split_first().ok_or_else(trunc)?;
        if t != tag {
            return Err(bad(format!(
                "expected {what} (tag {tag:#04x}), found tag {t:#04x}"
            )));
        }
        let (&l0, mut rest) = rest.split_first().ok_or_else(trunc)?;
        let len = if l0 < 0x80 {
            usize::from(l0)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(bad(format!("bad length at {what}")));
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(trunc());
        }
        let (content, tail) = rest.split_at(len);
        self.0 = tail;
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyFile {
        KeyFile {
            empty_auth: true,
            policy: Vec::new(),
            has_auth_policy: false,
            parent: PARENT_OWNER,
            public: tpm2b(&[7u8; 90]),
            private: tpm2b(&[9u8; 200]),
            description: None,
        }
    }

    #[test]
    fn round_trip() {
        let k = sample();
        let pem = k.to_pem();
        assert!(pem.starts_with("-----BEGIN TSS2 PRIVATE KEY-----\n"));
        assert_eq!(KeyFile::from_pem(&pem).unwrap(), k);
        let mut k2 = k.clone();
        k2.empty_auth = false;
        k2.parent = 0x8100_0001;
        k2.description = Some("git".into());
        assert_eq!(KeyFile::from_der(&k2.to_der()).unwrap(), k2);
    }

    #[test]
    fn policy_round_trip_and_layout() {
        let mut k = sample();
        k.empty_auth = false;
        k.policy = vec![
            PolicyStep {
                command_code: 0x17f,
                body: vec![1, 2, 3],
            },
            PolicyStep {
                command_code: 0x16b,
                body: Vec::new(),
            },
        ];
        let der = k.to_der();
        assert_eq!(KeyFile::from_der(&der).unwrap(), k);
        // [1] { SEQUENCE { SEQUENCE { [0] { INTEGER 0x017f } [1] { OCTET STRING 010203 } } … } }
        let at = der.windows(2).position(|w| w == [0xa1, 0x1d]).unwrap();
        assert_eq!(
            &der[at..at + 33],
            &[
                0xa1, 0x1d, 0x30, 0x1b, 0x30, 0x0d, 0xa0, 0x04, 0x02, 0x02, 0x01, 0x7f, 0xa1, 0x05,
                0x04, 0x03, 1, 2, 3, 0x30, 0x0a, 0xa0, 0x04, 0x02, 0x02, 0x01, 0x6b, 0xa1, 0x02,
                0x04, 0x00, 0x02, 0x04
            ]
        );
        for n in 0..der.len() {
            assert!(KeyFile::from_der(&der[..n]).is_err(), "truncated at {n}");
        }
    }

    #[test]
    fn der_layout() {
        let der = sample().to_der();
        // SEQUENCE (long form length), OID 2.23.133.10.1.3, [0] { TRUE }, INTEGER 0x40000001
        assert_eq!(der[0], 0x30);
        let body = &der[4..];
        assert_eq!(
            &body[..19],
            &[
                0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03, 0xa0, 0x03, 0x01, 0x01, 0xff, 0x02,
                0x04, 0x40, 0x00, 0x00, 0x01
            ]
        );
        assert_eq!(der_uint(0x8100_0001), vec![0, 0x81, 0, 0, 1]);
        assert_eq!(parse_uint(&[0, 0x81, 0, 0, 1]).unwrap(), 0x8100_0001);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(KeyFile::from_pem("hello").is_err());
        let der = sample().to_der();
        for n in 0..der.len() {
            assert!(KeyFile::from_der(&der[..n]).is_err(), "truncated at {n}");
        }
        let mut wrong_size = sample();
        wrong_size.public = vec![0, 5, 1];
        assert!(KeyFile::from_der(&wrong_size.to_der())
            .unwrap_err()
            .0
            .contains("TPM2B"));
        let mut imp = sample().to_der();
        imp[11] = 0x04; // id-importablekey
        assert!(KeyFile::from_der(&imp)
            .unwrap_err()
            .0
            .contains("importable"));
    }
}
