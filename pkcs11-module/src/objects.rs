//! The objects of a token: per agent key a private key, a public key and (when the
//! device holds one) a certificate, with the attributes PKCS#11 tools read from them.
//! Nothing secret is here: the private key object only names a key the agent holds.

use cryptoki_sys::*;
use waxseal_proto::proto::KeyAlg;

use crate::asn1::{self, CertFields, PublicKey, Spki};
use crate::template::{bool_value, ulong};

/// One agent key as the module shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `DEVICE/LABEL`, as the agent names it.
    pub name: String,
    /// `LABEL`: `CKA_LABEL` of the key's objects.
    pub label: String,
    /// The agent's algorithm.
    pub alg: KeyAlg,
    /// The public key.
    pub public: PublicKey,
    /// DER SubjectPublicKeyInfo (`CKA_PUBLIC_KEY_INFO`).
    pub spki: Vec<u8>,
    /// `CKA_ID` of the key's three objects: the token's `CKA_ID` of the key when the
    /// agent reports one (PKCS#11 devices), else [`Spki::key_id`].
    pub id: Vec<u8>,
    /// The device's certificate for the key, if any.
    pub certificate: Option<CertFields>,
    /// The certificate object's `CKA_LABEL` on the device, if it has one.
    pub certificate_label: Option<String>,
}

impl Key {
    /// A key from the agent's answers: its name, algorithm, SPKI and (PKCS#11) its
    /// `CKA_ID` on the token. `None` when the key is one the module cannot show.
    pub fn new(name: &str, alg: KeyAlg, spki: &[u8], token_id: Option<&[u8]>) -> Option<Key> {
        let label = name.split_once('/').map_or(name, |(_, l)| l).to_string();
        let parsed = Spki::parse(spki).ok()?;
        let id = match token_id {
            Some(id) if !id.is_empty() => id.to_vec(),
            _ => parsed.key_id().to_vec(),
        };
        Some(Key {
            name: name.to_string(),
            label,
            alg,
            id,
            public: parsed.key,
            spki: spki.to_vec(),
            certificate: None,
            certificate_label: None,
        })
    }

    /// The key with the device's certificate for it (a certificate that does not parse
    /// is left out).
    pub fn with_certificate(mut self, der: Option<&[u8]>, label: Option<&str>) -> Key {
        self.certificate = der.and_then(|c| CertFields::parse(c).ok());
        self.certificate_label = label.map(str::to_string);
        self
    }
}

/// The kind of an object of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// `CKO_PRIVATE_KEY`.
    Private,
    /// `CKO_PUBLIC_KEY`.
    Public,
    /// `CKO_CERTIFICATE`.
    Certificate,
}

/// An attribute as `C_GetAttributeValue` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The value.
    Bytes(Vec<u8>),
    /// Exists, but may not be revealed (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// Not an attribute of this object (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

impl Key {
    /// Whether the key has an object of `class`.
    pub fn has(&self, class: Class) -> bool {
        class != Class::Certificate || self.certificate.is_some()
    }

    fn key_type(&self) -> CK_KEY_TYPE {
        match self.public {
            PublicKey::Ec { .. } => CKK_EC,
            PublicKey::Ed25519 { .. } => CKK_EC_EDWARDS,
            PublicKey::Rsa { .. } => CKK_RSA,
        }
    }

    /// The value of attribute `ty` of the key's object of `class`.
    pub fn attribute(&self, class: Class, ty: CK_ATTRIBUTE_TYPE) -> Value {
        let b = |v: bool| Value::Bytes(bool_value(v));
        let u = |v: CK_ULONG| Value::Bytes(ulong(v));
        // Attributes of every object.
        match ty {
            CKA_CLASS => {
                return u(match class {
                    Class::Private => CKO_PRIVATE_KEY,
                    Class::Public => CKO_PUBLIC_KEY,
                    Class::Certificate => CKO_CERTIFICATE,
                })
            }
            CKA_TOKEN => return b(true),
            CKA_PRIVATE => return b(class == Class::Private),
            CKA_MODIFIABLE | CKA_COPYABLE | CKA_DESTROYABLE => return b(false),
            CKA_LABEL => {
                let label = match (class, &self.certificate_label) {
                    (Class::Certificate, Some(l)) => l,
                    _ => &self.label,
                };
                return Value::Bytes(label.as_bytes().to_vec());
            }
            CKA_ID => return Value::Bytes(self.id.clone()),
            _ => {}
        }
        if class == Class::Certificate {
            let Some(cert) = &self.certificate else {
                return Value::Invalid;
            };
            return match ty {
                CKA_CERTIFICATE_TYPE => u(CKC_X_509),
                CKA_TRUSTED => b(false),
                CKA_CERTIFICATE_CATEGORY => u(0),
                CKA_VALUE => Value::Bytes(cert.der.clone()),
                CKA_SUBJECT => Value::Bytes(cert.subject.clone()),
                CKA_ISSUER => Value::Bytes(cert.issuer.clone()),
                CKA_SERIAL_NUMBER => Value::Bytes(cert.serial.clone()),
                CKA_PUBLIC_KEY_INFO => Value::Bytes(self.spki.clone()),
                _ => Value::Invalid,
            };
        }
        // Attributes of both key objects.
        match ty {
            CKA_KEY_TYPE => return u(self.key_type()),
            CKA_DERIVE => return b(false),
            CKA_LOCAL => return b(false),
            CKA_SUBJECT => {
                return Value::Bytes(
                    self.certificate
                        .as_ref()
                        .map(|c| c.subject.clone())
                        .unwrap_or_default(),
                )
            }
            CKA_PUBLIC_KEY_INFO => return Value::Bytes(self.spki.clone()),
            _ => {}
        }
        if let Some(v) = self.public_attribute(ty) {
            return v;
        }
        match (class, ty) {
            (Class::Private, CKA_SIGN) => b(true),
            (Class::Private, CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE | CKA_NEVER_EXTRACTABLE) => {
                b(true)
            }
            (
                Class::Private,
                CKA_EXTRACTABLE
                | CKA_DECRYPT
                | CKA_SIGN_RECOVER
                | CKA_UNWRAP
                | CKA_WRAP_WITH_TRUSTED
                | CKA_ALWAYS_AUTHENTICATE,
            ) => b(false),
            (
                Class::Private,
                CKA_VALUE | CKA_PRIVATE_EXPONENT | CKA_PRIME_1 | CKA_PRIME_2 | CKA_EXPONENT_1
                | CKA_EXPONENT_2 | CKA_COEFFICIENT,
            ) => Value::Sensitive,
            (Class::Public, CKA_VERIFY) => b(true),
            (Class::Public, CKA_ENCRYPT | CKA_VERIFY_RECOVER | CKA_WRAP | CKA_TRUSTED) => b(false),
            _ => Value::Invalid,
        }
    }

    /// The public parameters, shown on both key objects (tools read them from the
    /// private key to size signatures).
    fn public_attribute(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<Value> {
        Some(match (&self.public, ty) {
            (PublicKey::Ec { curve, .. }, CKA_EC_PARAMS) => Value::Bytes(curve.params()),
            (PublicKey::Ed25519 { .. }, CKA_EC_PARAMS) => {
                Value::Bytes(asn1::EDWARDS25519_PARAMS.to_vec())
            }
            (PublicKey::Ec { point, .. } | PublicKey::Ed25519 { point }, CKA_EC_POINT) => {
                Value::Bytes(asn1::octet_string(point))
            }
            (PublicKey::Rsa { modulus, .. }, CKA_MODULUS) => Value::Bytes(modulus.clone()),
            (PublicKey::Rsa { exponent, .. }, CKA_PUBLIC_EXPONENT) => {
                Value::Bytes(exponent.clone())
            }
            (PublicKey::Rsa { modulus, .. }, CKA_MODULUS_BITS) => {
                Value::Bytes(ulong((modulus.len() * 8) as CK_ULONG))
            }
            _ => return None,
        })
    }

    /// The value for template matching (`None` unless readable).
    pub fn matchable(&self, class: Class, ty: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
        match self.attribute(class, ty) {
            Value::Bytes(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::template::{Attribute, Template};

    /// A P-256 SubjectPublicKeyInfo (the generator point).
    pub(crate) const P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";

    fn key() -> Key {
        Key::new(
            "hsm/release",
            KeyAlg::P256,
            &hex::decode(P256_SPKI).unwrap(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_tokens_id_wins_over_the_sha1_of_the_key() {
        let spki = hex::decode(P256_SPKI).unwrap();
        let k = Key::new("hsm/k", KeyAlg::P256, &spki, Some(&[9, 9])).unwrap();
        assert_eq!(k.attribute(Class::Public, CKA_ID), Value::Bytes(vec![9, 9]));
        assert_eq!(
            k.attribute(Class::Private, CKA_ID),
            Value::Bytes(vec![9, 9])
        );
        let k = Key::new("hsm/k", KeyAlg::P256, &spki, Some(&[])).unwrap();
        assert_eq!(k.id.len(), 20, "an empty CKA_ID falls back to SHA-1");
    }

    #[test]
    fn a_p256_key_shows_its_attributes() {
        let k = key();
        assert_eq!(k.label, "release");
        assert_eq!(
            k.attribute(Class::Private, CKA_CLASS),
            Value::Bytes(ulong(CKO_PRIVATE_KEY))
        );
        assert_eq!(k.attribute(Class::Private, CKA_VALUE), Value::Sensitive);
        assert_eq!(k.attribute(Class::Public, CKA_VALUE), Value::Invalid);
        assert_eq!(k.attribute(Class::Private, CKA_SIGN), Value::Bytes(vec![1]));
        assert_eq!(
            k.attribute(Class::Private, CKA_EXTRACTABLE),
            Value::Bytes(vec![0])
        );
        assert_eq!(
            k.attribute(Class::Public, CKA_VERIFY),
            Value::Bytes(vec![1])
        );
        let Value::Bytes(point) = k.attribute(Class::Public, CKA_EC_POINT) else {
            panic!("no EC point")
        };
        assert_eq!(&point[..3], &[0x04, 0x41, 0x04]);
        assert_eq!(
            k.attribute(Class::Private, CKA_EC_PARAMS),
            k.attribute(Class::Public, CKA_EC_PARAMS)
        );
        // CKA_ID: SHA-1 of the point.
        use sha1::Digest as _;
        let point_bytes = &hex::decode(P256_SPKI).unwrap()[26..];
        assert_eq!(k.id.to_vec(), sha1::Sha1::digest(point_bytes).to_vec());
        assert!(!k.has(Class::Certificate));
    }

    #[test]
    fn templates_find_the_right_object() {
        let k = key();
        let find = |tpl: &Template| {
            [Class::Private, Class::Public, Class::Certificate]
                .into_iter()
                .filter(|c| k.has(*c) && tpl.matches(|ty| k.matchable(*c, ty)))
                .collect::<Vec<_>>()
        };
        let tpl = |attrs: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>| {
            Template(
                attrs
                    .into_iter()
                    .map(|(ty, value)| Attribute { ty, value })
                    .collect(),
            )
        };
        assert_eq!(
            find(&tpl(vec![(CKA_CLASS, ulong(CKO_PRIVATE_KEY))])),
            [Class::Private]
        );
        assert_eq!(
            find(&tpl(vec![
                (CKA_LABEL, b"release".to_vec()),
                (CKA_ID, k.id.to_vec())
            ])),
            [Class::Private, Class::Public]
        );
        assert_eq!(
            find(&tpl(vec![(CKA_KEY_TYPE, ulong(CKK_RSA))])),
            Vec::<Class>::new()
        );
        assert_eq!(
            find(&tpl(vec![(CKA_CLASS, ulong(CKO_CERTIFICATE))])),
            Vec::<Class>::new()
        );
        // CKA_VALUE of a private key is sensitive: it never matches.
        assert_eq!(find(&tpl(vec![(CKA_VALUE, vec![])])), Vec::<Class>::new());
    }
}
