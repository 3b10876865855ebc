//! Key references: the user-facing `DEVICE/LABEL` names, and RFC 7512 `pkcs11:` URIs.

use std::fmt;

/// A key NAME split into device and label, e.g. `hsm/release`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyName<'a> {
    /// The device's name from the config.
    pub device: &'a str,
    /// The label on the device (PKCS#11 label, TPM key file name, PIV slot).
    pub label: &'a str,
}

/// A key name that cannot be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key name `{name}` is not valid: {why} (expected DEVICE/LABEL, e.g. hsm/release)")]
pub struct KeyNameError {
    name: String,
    why: &'static str,
}

impl<'a> KeyName<'a> {
    /// Splits `DEVICE/LABEL` at the first `/`.
    pub fn parse(name: &'a str) -> Result<Self, KeyNameError> {
        let err = |why| KeyNameError {
            name: name.chars().take(128).collect(),
            why,
        };
        let (device, label) = name.split_once('/').ok_or_else(|| err("no `/`"))?;
        if !valid_device_name(device) {
            return Err(err("the device part may hold only a-z, 0-9, `-` and `_`"));
        }
        if label.is_empty() {
            return Err(err("the label is empty"));
        }
        if label.len() > 64 {
            return Err(err("the label is longer than 64 bytes"));
        }
        if label.chars().any(|c| c.is_control() || c == '/') {
            return Err(err("the label holds `/` or a control character"));
        }
        Ok(KeyName { device, label })
    }
}

impl fmt::Display for KeyName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.device, self.label)
    }
}

/// Whether `name` may name a device: 1–32 of `a-z 0-9 - _`.
pub fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An RFC 7512 PKCS#11 URI naming one private key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pkcs11Uri {
    /// `token=` (token label).
    pub token: Option<String>,
    /// `serial=` (token serial number).
    pub serial: Option<String>,
    /// `object=` (CKA_LABEL).
    pub object: Option<String>,
    /// `id=` (CKA_ID bytes).
    pub id: Option<Vec<u8>>,
    /// `type=` (`private`, `public`, `cert`…).
    pub kind: Option<String>,
}

/// A `pkcs11:` URI that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid pkcs11: URI: {0}")]
pub struct Pkcs11UriError(String);

impl Pkcs11Uri {
    /// Parses the path part of a `pkcs11:` URI (query attributes are ignored).
    pub fn parse(uri: &str) -> Result<Self, Pkcs11UriError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| Pkcs11UriError("missing `pkcs11:` scheme".into()))?;
        let path = rest.split_once('?').map_or(rest, |(p, _)| p);
        let mut out = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| Pkcs11UriError(format!("attribute `{attr}` has no `=`")))?;
            let bytes = pct_decode(v)?;
            let text = || {
                String::from_utf8(bytes.clone())
                    .map_err(|_| Pkcs11UriError(format!("`{k}` is not UTF-8")))
            };
            match k {
                "token" => out.token = Some(text()?),
                "serial" => out.serial = Some(text()?),
                "object" => out.object = Some(text()?),
                "type" => out.kind = Some(text()?),
                "id" => out.id = Some(bytes),
                _ => {} // RFC 7512: unknown attributes may be ignored by a consumer
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:")?;
        let mut sep = "";
        let mut attr = |f: &mut fmt::Formatter<'_>, k: &str, v: &[u8], all: bool| {
            let r = write!(f, "{sep}{k}={}", pct_encode(v, all));
            sep = ";";
            r
        };
        if let Some(t) = &self.token {
            attr(f, "token", t.as_bytes(), false)?;
        }
        if let Some(s) = &self.serial {
            attr(f, "serial", s.as_bytes(), false)?;
        }
        if let Some(o) = &self.object {
            attr(f, "object", o.as_bytes(), false)?;
        }
        if let Some(id) = &self.id {
            attr(f, "id", id, true)?;
        }
        if let Some(k) = &self.kind {
            attr(f, "type", k.as_bytes(), false)?;
        }
        Ok(())
    }
}

/// RFC 7512 `pchar` without `;` `?` `/`-safe set: unreserved plus a few sub-delims.
fn pct_encode(v: &[u8], all: bool) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for &b in v {
        let keep = !all
            && (b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b':'
                        | b'@'
                        | b'&'
                        | b'+'
                        | b','
                        | b'!'
                        | b'$'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                ));
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pct_decode(v: &str) -> Result<Vec<u8>, Pkcs11UriError> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Pkcs11UriError(format!("bad percent-escape in `{v}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = KeyName::parse("hsm/release").unwrap();
        assert_eq!((n.device, n.label), ("hsm", "release"));
        assert_eq!(n.to_string(), "hsm/release");
        assert_eq!(KeyName::parse("yk/9c").unwrap().label, "9c");
        for bad in [
            "release", "/x", "HSM/x", "hsm/", "hsm/a/b", "h sm/x", "hsm/a\nb",
        ] {
            assert!(KeyName::parse(bad).is_err(), "{bad:?}");
        }
        let e = KeyName::parse("nope").unwrap_err().to_string();
        assert!(e.contains("DEVICE/LABEL"), "{e}");
    }

    #[test]
    fn pkcs11_uri_round_trip() {
        let uri = Pkcs11Uri {
            token: Some("wax seal".into()),
            serial: None,
            object: Some("release;1".into()),
            id: Some(vec![0x01, 0xab]),
            kind: Some("private".into()),
        };
        let s = uri.to_string();
        assert_eq!(
            s,
            "pkcs11:token=wax%20seal;object=release%3B1;id=%01%AB;type=private"
        );
        assert_eq!(Pkcs11Uri::parse(&s).unwrap(), uri);
    }

    #[test]
    fn pkcs11_uri_errors() {
        assert!(Pkcs11Uri::parse("pkcs12:token=a").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:token").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:id=%zz").is_err());
        let p = Pkcs11Uri::parse("pkcs11:token=a;x-vendor=b?pin-value=1234").unwrap();
        assert_eq!(p.token.as_deref(), Some("a"));
    }
}
