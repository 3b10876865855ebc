//! Attribute templates as the safe side of the module holds them: what a caller passed
//! in `CK_ATTRIBUTE` arrays (copied out of C memory by the FFI layer), how typed values
//! are read from them, and how a template matches an object (`C_FindObjectsInit`).

use cryptoki_sys::{
    CKA_ALWAYS_AUTHENTICATE, CKA_ALWAYS_SENSITIVE, CKA_COPYABLE, CKA_DECRYPT, CKA_DERIVE,
    CKA_DESTROYABLE, CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_LOCAL, CKA_MODIFIABLE,
    CKA_NEVER_EXTRACTABLE, CKA_PRIVATE, CKA_SENSITIVE, CKA_SIGN, CKA_SIGN_RECOVER, CKA_TOKEN,
    CKA_TRUSTED, CKA_UNWRAP, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP, CKA_WRAP_WITH_TRUSTED,
    CKR_ATTRIBUTE_VALUE_INVALID, CKR_TEMPLATE_INCONSISTENT, CK_ATTRIBUTE_TYPE, CK_RV, CK_ULONG,
};

/// Size of a `CK_ULONG` value in an attribute.
pub const ULONG_LEN: usize = size_of::<CK_ULONG>();

/// Attributes whose value is a `CK_BBOOL`.
const BOOL_ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_SENSITIVE,
    CKA_ALWAYS_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_NEVER_EXTRACTABLE,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_DECRYPT,
    CKA_ENCRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
    CKA_LOCAL,
    CKA_TRUSTED,
    CKA_WRAP_WITH_TRUSTED,
    CKA_ALWAYS_AUTHENTICATE,
];

/// Whether `ty` holds a `CK_BBOOL`.
pub fn is_bool(ty: CK_ATTRIBUTE_TYPE) -> bool {
    BOOL_ATTRIBUTES.contains(&ty)
}

/// One attribute: its type and value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// `CKA_…`.
    pub ty: CK_ATTRIBUTE_TYPE,
    /// The value as the caller's memory held it.
    pub value: Vec<u8>,
}

/// A caller's template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template(pub Vec<Attribute>);

impl Template {
    /// The value of `ty`; a type given twice with different values is inconsistent.
    pub fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<&[u8]>, CK_RV> {
        let mut found: Option<&[u8]> = None;
        for a in self.0.iter().filter(|a| a.ty == ty) {
            match found {
                Some(v) if v != a.value.as_slice() => return Err(CKR_TEMPLATE_INCONSISTENT),
                _ => found = Some(&a.value),
            }
        }
        Ok(found)
    }

    /// A `CK_BBOOL` value: one byte, any non-zero byte is true.
    pub fn bool(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<bool>, CK_RV> {
        self.get(ty)?.map(decode_bool).transpose()
    }

    /// A `CK_ULONG` value (class, key type, modulus bits…).
    pub fn ulong(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<CK_ULONG>, CK_RV> {
        self.get(ty)?.map(decode_ulong).transpose()
    }

    /// A UTF-8 value (labels).
    pub fn text(&self, ty: CK_ATTRIBUTE_TYPE) -> Result<Option<&str>, CK_RV> {
        self.get(ty)?
            .map(|v| std::str::from_utf8(v).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID))
            .transpose()
    }

    /// Whether an object matches: every attribute of the template is one the object
    /// has, with an equal value (booleans compared by truth).
    pub fn matches(&self, value_of: impl Fn(CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>>) -> bool {
        self.0.iter().all(|a| match value_of(a.ty) {
            None => false,
            Some(v) if is_bool(a.ty) => decode_bool(&a.value).ok() == decode_bool(&v).ok(),
            Some(v) => v == a.value,
        })
    }
}

/// Reads a `CK_BBOOL`.
pub fn decode_bool(v: &[u8]) -> Result<bool, CK_RV> {
    match v {
        [b] => Ok(*b != 0),
        _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// Reads a `CK_ULONG` in the machine's byte order.
pub fn decode_ulong(v: &[u8]) -> Result<CK_ULONG, CK_RV> {
    let bytes: [u8; ULONG_LEN] = v.try_into().map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    Ok(CK_ULONG::from_ne_bytes(bytes))
}

/// A `CK_ULONG` value's bytes.
pub fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A `CK_BBOOL` value's byte.
pub fn bool_value(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

/// Reads a template from the fuzz target's serialisation: repeated `type` (8 bytes,
/// little-endian), `length` (2 bytes, little-endian) and that many value bytes. The
/// FFI layer builds the same [`Template`] from `CK_ATTRIBUTE` arrays; this form lets
/// `fuzz/fuzz_targets/pkcs11_template.rs` reach every function that reads one.
pub fn decode_template(mut bytes: &[u8]) -> Option<(Template, &[u8])> {
    let mut out = Vec::new();
    while let Some((head, rest)) = bytes.split_first_chunk::<10>() {
        let (ty, len) = head.split_at(8);
        let ty = u64::from_le_bytes(ty.try_into().ok()?);
        let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
        if len == 0xffff {
            // The end marker: what follows belongs to the caller.
            return Some((Template(out), rest));
        }
        let value = rest.get(..len)?;
        out.push(Attribute {
            ty: ty as CK_ATTRIBUTE_TYPE,
            value: value.to_vec(),
        });
        bytes = &rest[len..];
    }
    Some((Template(out), bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cryptoki_sys::{CKA_CLASS, CKA_ID, CKA_KEY_TYPE, CKA_LABEL, CKO_PRIVATE_KEY};

    use super::*;

    fn t(attrs: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Template {
        Template(
            attrs
                .iter()
                .map(|(ty, value)| Attribute {
                    ty: *ty,
                    value: value.clone(),
                })
                .collect(),
        )
    }

    fn object(ty: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
        match ty {
            CKA_CLASS => Some(ulong(CKO_PRIVATE_KEY)),
            CKA_LABEL => Some(b"release".to_vec()),
            CKA_ID => Some(vec![1, 2, 3]),
            CKA_SIGN => Some(bool_value(true)),
            _ => None,
        }
    }

    #[test]
    fn templates_match_on_every_attribute() {
        assert!(t(&[]).matches(object), "an empty template matches all");
        assert!(t(&[(CKA_CLASS, ulong(CKO_PRIVATE_KEY))]).matches(object));
        assert!(t(&[(CKA_LABEL, b"release".to_vec()), (CKA_ID, vec![1, 2, 3])]).matches(object));
        assert!(!t(&[(CKA_LABEL, b"releas".to_vec())]).matches(object));
        assert!(!t(&[(CKA_ID, vec![1, 2])]).matches(object));
        assert!(
            !t(&[(CKA_KEY_TYPE, ulong(0))]).matches(object),
            "an attribute the object lacks never matches"
        );
        // CK_TRUE may be any non-zero byte.
        assert!(t(&[(CKA_SIGN, vec![0xff])]).matches(object));
        assert!(!t(&[(CKA_SIGN, vec![0])]).matches(object));
        assert!(!t(&[(CKA_SIGN, vec![1, 1])]).matches(object));
    }

    #[test]
    fn typed_values_check_their_length() {
        let tpl = t(&[
            (CKA_CLASS, ulong(3)),
            (CKA_TOKEN, vec![1]),
            (CKA_KEY_TYPE, vec![1, 2]),
            (CKA_LABEL, vec![0xff]),
        ]);
        assert_eq!(tpl.ulong(CKA_CLASS), Ok(Some(3)));
        assert_eq!(tpl.bool(CKA_TOKEN), Ok(Some(true)));
        assert_eq!(tpl.ulong(CKA_KEY_TYPE), Err(CKR_ATTRIBUTE_VALUE_INVALID));
        assert_eq!(tpl.text(CKA_LABEL), Err(CKR_ATTRIBUTE_VALUE_INVALID));
        assert_eq!(tpl.ulong(CKA_ID), Ok(None));
        let twice = t(&[(CKA_LABEL, b"a".to_vec()), (CKA_LABEL, b"b".to_vec())]);
        assert_eq!(twice.get(CKA_LABEL), Err(CKR_TEMPLATE_INCONSISTENT));
    }

    #[test]
    fn the_fuzz_serialisation_reads_back() {
        let mut bytes = Vec::new();
        for (ty, v) in [(CKA_LABEL, &b"k"[..]), (CKA_ID, &[9u8, 9][..])] {
            bytes.extend(ty.to_le_bytes());
            bytes.extend((v.len() as u16).to_le_bytes());
            bytes.extend(v);
        }
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(0xffffu16.to_le_bytes());
        bytes.extend(b"rest");
        let (tpl, rest) = decode_template(&bytes).unwrap();
        assert_eq!(tpl, t(&[(CKA_LABEL, b"k".to_vec()), (CKA_ID, vec![9, 9])]));
        assert_eq!(rest, b"rest");
        assert!(decode_template(&bytes[..10]).is_none(), "a cut value");
    }
}
