//! PCR bindings of TPM keys: which bank and PCRs a key's policy covers (`--pcrs
//! sha256:0,2,4,7`), and the text form of the values a key is bound to (`--pcr-values
//! FILE`). docs/protocol.md (`generate_key`) and README.md ("TPM keys bound to PCRs")
//! describe both.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Bytes;

/// The highest PCR index a binding may name: a PC client TPM has PCRs 0–23.
pub const MAX_PCR_INDEX: u8 = 23;

/// The longest `--pcr-values` file the CLI reads.
pub const MAX_PCR_VALUES_FILE: usize = 64 * 1024;

word_enum! {
    /// A PCR bank: the hash algorithm whose PCRs a binding reads.
    PcrBank {
        /// SHA-1 PCRs, 20 bytes.
        Sha1 = "sha1",
        /// SHA-256 PCRs, 32 bytes.
        Sha256 = "sha256",
        /// SHA-384 PCRs, 48 bytes.
        Sha384 = "sha384",
        /// SHA-512 PCRs, 64 bytes.
        Sha512 = "sha512",
    }
}

impl PcrBank {
    /// The length of this bank's PCR values.
    pub fn digest_len(self) -> usize {
        match self {
            PcrBank::Sha1 => 20,
            PcrBank::Sha256 => 32,
            PcrBank::Sha384 => 48,
            PcrBank::Sha512 => 64,
        }
    }
}

/// The PCRs a key is bound to: one bank, PCR indices in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrSelection {
    /// The bank.
    pub bank: PcrBank,
    /// PCR indices, 0–23, ascending, each once.
    pub pcrs: Vec<u8>,
}

impl PcrSelection {
    /// Parses `BANK:I,J,…`, e.g. `sha256:0,2,4,7` (indices in any order; they are
    /// sorted). One bank only.
    pub fn parse(spec: &str) -> Result<PcrSelection, String> {
        let spec = spec.trim();
        if spec.len() > 128 {
            return Err("a PCR selection is at most 128 characters".into());
        }
        if spec.contains('+') {
            return Err(format!(
                "`{spec}`: one bank only (e.g. sha256:0,2,4,7); a selection across banks is not supported"
            ));
        }
        let (bank, list) = spec
            .split_once(':')
            .ok_or_else(|| format!("`{spec}` is not BANK:PCR,PCR,… (e.g. sha256:0,2,4,7)"))?;
        let bank: PcrBank = bank.trim().parse().map_err(|_| {
            format!("`{bank}` is not a PCR bank (expected one of: sha1, sha256, sha384, sha512)")
        })?;
        let mut pcrs = Vec::new();
        for item in list.split(',') {
            let item = item.trim();
            let index: u8 = item
                .parse()
                .ok()
                .filter(|&i| i <= MAX_PCR_INDEX)
                .ok_or_else(|| {
                    format!("`{item}` in `{spec}` is not a PCR index (0 to {MAX_PCR_INDEX})")
                })?;
            if pcrs.contains(&index) {
                return Err(format!("PCR {index} is named twice in `{spec}`"));
            }
            pcrs.push(index);
        }
        pcrs.sort_unstable();
        let sel = PcrSelection { bank, pcrs };
        sel.check()?;
        Ok(sel)
    }

    /// Checks a selection that came off the wire: 1 to 24 indices, each 0–23,
    /// ascending, each once.
    pub fn check(&self) -> Result<(), String> {
        if self.pcrs.is_empty() {
            return Err("a PCR selection names at least one PCR".into());
        }
        if let Some(&bad) = self.pcrs.iter().find(|&&i| i > MAX_PCR_INDEX) {
            return Err(format!(
                "PCR {bad} does not exist (PCRs are 0 to {MAX_PCR_INDEX})"
            ));
        }
        if self.pcrs.windows(2).any(|w| w[0] >= w[1]) {
            return Err("PCR indices must be ascending and each named once".into());
        }
        Ok(())
    }

    /// The bitmap of selected PCRs (bit i = PCR i), as TPMS_PCR_SELECTION's three
    /// `pcrSelect` octets hold it.
    pub fn bitmap(&self) -> [u8; 3] {
        let mut map = [0u8; 3];
        for &i in &self.pcrs {
            map[usize::from(i / 8)] |= 1 << (i % 8);
        }
        map
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.pcrs.iter().map(|i| i.to_string()).collect();
        write!(f, "{}:{}", self.bank, list.join(","))
    }
}

/// Checks `values` (one per PCR of `sel`, in its order) against the bank's length.
pub fn check_pcr_values(sel: &PcrSelection, values: &[Bytes]) -> Result<(), String> {
    if values.len() != sel.pcrs.len() {
        return Err(format!(
            "{} PCR values for {} PCRs ({sel}): give one value per PCR, in the selection's order",
            values.len(),
            sel.pcrs.len()
        ));
    }
    for (i, v) in sel.pcrs.iter().zip(values) {
        if v.0.len() != sel.bank.digest_len() {
            return Err(format!(
                "the value of {}:{i} is {} bytes; {} PCRs are {} bytes",
                sel.bank,
                v.0.len(),
                sel.bank,
                sel.bank.digest_len()
            ));
        }
    }
    Ok(())
}

/// Reads the values of `sel`'s PCRs from a `--pcr-values` file. Two forms, mixable:
///
/// - `BANK:INDEX=HEX` lines, e.g. `sha256:7=3d45…` (a `0x` prefix is allowed);
/// - the output of `tpm2_pcrread` (a `BANK:` line, then `INDEX : 0xHEX` lines).
///
/// Blank lines and lines starting with `#` are skipped. Values for PCRs or banks the
/// selection does not name are ignored (a whole `tpm2_pcrread` dump may be given); every
/// selected PCR must have exactly one value of the bank's length.
pub fn parse_pcr_values(text: &str, sel: &PcrSelection) -> Result<Vec<Bytes>, String> {
    if text.len() > MAX_PCR_VALUES_FILE {
        return Err(format!(
            "the file is over {MAX_PCR_VALUES_FILE} bytes: not a PCR values file"
        ));
    }
    let mut found: Vec<Option<Vec<u8>>> = vec![None; sel.pcrs.len()];
    let mut bank_block: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("line {line_no}: {m}");
        // `sha256:` alone opens a tpm2_pcrread block.
        if let Some(bank) = line.strip_suffix(':') {
            if !bank.contains(':') && !bank.contains('=') {
                bank_block = Some(bank.trim().to_string());
                continue;
            }
        }
        let (bank, index, hex_text) = if let Some((left, value)) = line.split_once('=') {
            let (bank, index) = left.split_once(':').ok_or_else(|| {
                at(format!(
                    "`{line}` is not BANK:INDEX=HEX (e.g. sha256:7=3d45…)"
                ))
            })?;
            (bank.trim().to_string(), index.trim(), value.trim())
        } else if let Some((index, value)) = line.split_once(':') {
            let bank = bank_block.clone().ok_or_else(|| {
                at(format!(
                    "`{line}` comes before any `BANK:` line (tpm2_pcrread form) and is not BANK:INDEX=HEX"
                ))
            })?;
            (bank, index.trim(), value.trim())
        } else {
            return Err(at(format!(
                "`{line}` is neither BANK:INDEX=HEX nor a tpm2_pcrread line"
            )));
        };
        if bank != sel.bank.as_str() {
            if bank.parse::<PcrBank>().is_err() {
                return Err(at(format!(
                    "`{bank}` is not a PCR bank (expected one of: sha1, sha256, sha384, sha512)"
                )));
            }
            continue;
        }
        let index: u8 = index
            .parse()
            .ok()
            .filter(|&i| i <= MAX_PCR_INDEX)
            .ok_or_else(|| {
                at(format!(
                    "`{index}` is not a PCR index (0 to {MAX_PCR_INDEX})"
                ))
            })?;
        let Some(slot) = sel.pcrs.iter().position(|&i| i == index) else {
            continue;
        };
        let hex_text = hex_text
            .strip_prefix("0x")
            .or_else(|| hex_text.strip_prefix("0X"))
            .unwrap_or(hex_text);
        let value = hex::decode(hex_text)
            .map_err(|e| at(format!("the value of {bank}:{index} is not hex: {e}")))?;
        if value.len() != sel.bank.digest_len() {
            return Err(at(format!(
                "the value of {bank}:{index} is {} bytes; {bank} PCRs are {} bytes",
                value.len(),
                sel.bank.digest_len()
            )));
        }
        if found[slot].as_ref().is_some_and(|v| *v != value) {
            return Err(at(format!(
                "{bank}:{index} is given twice with different values"
            )));
        }
        found[slot] = Some(value);
    }
    let missing: Vec<String> = sel
        .pcrs
        .iter()
        .zip(&found)
        .filter(|(_, v)| v.is_none())
        .map(|(i, _)| format!("{}:{i}", sel.bank))
        .collect();
    if !missing.is_empty() {
        return Err(format!("no value for {}", missing.join(", ")));
    }
    Ok(found.into_iter().flatten().map(Bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_and_refuse() {
        let s = PcrSelection::parse("sha256:7,0,4,2").unwrap();
        assert_eq!(s.bank, PcrBank::Sha256);
        assert_eq!(s.pcrs, vec![0, 2, 4, 7]);
        assert_eq!(s.to_string(), "sha256:0,2,4,7");
        assert_eq!(s.bitmap(), [0b1001_0101, 0, 0]);
        assert_eq!(
            PcrSelection::parse("sha1:16,23").unwrap().bitmap(),
            [0, 0, 0b1000_0001]
        );
        for (bad, why) in [
            ("sha256", "not BANK:PCR"),
            ("md5:1", "not a PCR bank"),
            ("sha256:", "not a PCR index"),
            ("sha256:24", "not a PCR index"),
            ("sha256:1,x", "not a PCR index"),
            ("sha256:1,1", "named twice"),
            ("sha256:1+sha1:2", "one bank only"),
        ] {
            let e = PcrSelection::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let unordered = PcrSelection {
            bank: PcrBank::Sha256,
            pcrs: vec![4, 2],
        };
        assert!(unordered.check().is_err());
    }

    #[test]
    fn values_files_in_both_forms() {
        let sel = PcrSelection::parse("sha256:0,16").unwrap();
        let zero = "00".repeat(32);
        let ff = "ff".repeat(32);
        let ours = format!(
            "# state after boot\nsha256:16=0x{ff}\nsha256:0={zero}\nsha1:0={}\n",
            "00".repeat(20)
        );
        let v = parse_pcr_values(&ours, &sel).unwrap();
        assert_eq!(v, vec![Bytes(vec![0; 32]), Bytes(vec![0xff; 32])]);
        let pcrread = format!(
            "  sha1:\n    0 : 0x{}\n  sha256:\n    0 : 0x{}\n    16: 0x{}\n",
            "11".repeat(20),
            zero.to_uppercase(),
            ff
        );
        assert_eq!(parse_pcr_values(&pcrread, &sel).unwrap(), v);
        for (text, why) in [
            (format!("sha256:0={zero}\n"), "no value for sha256:16"),
            (format!("sha256:0={zero}\nsha256:16=abcd\n"), "is 2 bytes"),
            (format!("sha256:0={zero}\nsha256:16=zz\n"), "not hex"),
            (format!("sha256:0={zero}\nsha256:0={ff}\n"), "twice"),
            ("hello\n".to_string(), "line 1"),
            (format!("sha3:0={zero}\n"), "not a PCR bank"),
        ] {
            let e = parse_pcr_values(&text, &sel).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let long = "#".repeat(MAX_PCR_VALUES_FILE + 1);
        assert!(parse_pcr_values(&long, &sel).is_err());
    }

    #[test]
    fn values_checked_against_the_bank() {
        let sel = PcrSelection::parse("sha1:0").unwrap();
        assert!(check_pcr_values(&sel, &[Bytes(vec![0; 20])]).is_ok());
        assert!(check_pcr_values(&sel, &[Bytes(vec![0; 32])]).is_err());
        assert!(check_pcr_values(&sel, &[]).is_err());
    }
}
