//! In-toto statements (v1) and the DSSE envelope they are signed in: what the agent
//! reads out of a `sign` request of purpose `attest`, and what the CLI builds and
//! checks before it asks (docs/protocol.md, `sign`, purpose `attest`).
//!
//! Pure: bytes in, a [`Statement`] or an error out. The statement is read with the same
//! strict JSON reader as requests (no member named twice), so the agent and any
//! verifier cannot disagree on which subjects or predicate type it names.

use serde_json::Value;

use crate::proto::{strict_json, MAX_NAME};

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The `_type` of an in-toto statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The longest statement a request may carry, in bytes: 512 KiB, which base64 keeps
/// below the 1 MiB frame limit with room for the other members.
pub const MAX_STATEMENT: usize = 512 * 1024;
/// The most subjects one statement may name: each reaches the audit record, which
/// must stay well below the audit answer's 512 KiB (docs/protocol.md, `audit_tail`).
pub const MAX_SUBJECTS: usize = 256;
/// The longest predicate type, in bytes.
pub const MAX_PREDICATE_TYPE: usize = 1024;

/// One subject of a statement: a name and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `name`; empty when the statement gives none.
    pub name: String,
    /// `digest.sha256`, lowercase hex (64 characters).
    pub sha256: String,
}

/// What a statement says, as far as the agent's policy and audit log care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// `predicateType`.
    pub predicate_type: String,
    /// `subject`, in order; never empty.
    pub subjects: Vec<Subject>,
}

/// Why bytes are not an in-toto statement v1 that waxseal signs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    /// Not UTF-8 JSON, or an object names a member twice.
    #[error("the statement is not JSON: {0}")]
    NotJson(String),
    /// Not a JSON object.
    #[error("the statement is not a JSON object")]
    NotObject,
    /// `_type` is missing or not v1.
    #[error("the statement's _type is {0}, not \"https://in-toto.io/Statement/v1\" (waxseal signs in-toto statements v1 only)")]
    Type(String),
    /// `subject` is missing, empty or not an array.
    #[error("the statement names no subjects: `subject` must be a non-empty array")]
    NoSubjects,
    /// More than [`MAX_SUBJECTS`] subjects.
    #[error("the statement names {0} subjects; at most 256 are accepted")]
    TooManySubjects(usize),
    /// One subject is not acceptable.
    #[error("subject {index}: {why}")]
    Subject {
        /// Its position, from 0.
        index: usize,
        /// What is wrong with it.
        why: String,
    },
    /// `predicateType` is missing or not acceptable.
    #[error("predicateType: {0}")]
    PredicateType(String),
}

impl Statement {
    /// Reads `bytes` as an in-toto statement v1 whose every subject has a SHA-256.
    pub fn parse(bytes: &[u8]) -> Result<Statement, StatementError> {
        let text =
            std::str::from_utf8(bytes).map_err(|e| StatementError::NotJson(e.to_string()))?;
        let value = strict_json(text).map_err(|e| StatementError::NotJson(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(StatementError::NotObject);
        };
        match map.get("_type") {
            Some(Value::String(t)) if t == STATEMENT_TYPE => {}
            Some(other) => return Err(StatementError::Type(shorten(&other.to_string()))),
            None => return Err(StatementError::Type("missing".into())),
        }
        let predicate_type = match map.get("predicateType") {
            Some(Value::String(t)) if t.is_empty() => {
                return Err(StatementError::PredicateType("empty".into()))
            }
            Some(Value::String(t)) => {
                check_text(t, MAX_PREDICATE_TYPE).map_err(StatementError::PredicateType)?;
                t.clone()
            }
            Some(_) => return Err(StatementError::PredicateType("not a string".into())),
            None => return Err(StatementError::PredicateType("missing".into())),
        };
        let subjects = match map.get("subject") {
            Some(Value::Array(list)) if list.is_empty() => return Err(StatementError::NoSubjects),
            Some(Value::Array(list)) if list.len() > MAX_SUBJECTS => {
                return Err(StatementError::TooManySubjects(list.len()))
            }
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(index, s)| subject(s).map_err(|why| StatementError::Subject { index, why }))
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(StatementError::NoSubjects),
        };
        Ok(Statement {
            predicate_type,
            subjects,
        })
    }

    /// Whether one of the subjects has this SHA-256.
    pub fn names_sha256(&self, sha256: &[u8]) -> bool {
        let hex = hex::encode(sha256);
        self.subjects.iter().any(|s| s.sha256 == hex)
    }
}

/// One entry of `subject`: an object with `digest.sha256` (64 lowercase hex
/// characters) and, optionally, a `name`.
fn subject(value: &Value) -> Result<Subject, String> {
    let Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let name = match map.get("name") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(n)) => {
            check_text(n, MAX_NAME).map_err(|e| format!("name: {e}"))?;
            n.clone()
        }
        Some(_) => return Err("name is not a string".into()),
    };
    let sha256 = map
        .get("digest")
        .and_then(|d| d.get("sha256"))
        .ok_or("no digest.sha256 (waxseal signs statements whose subjects name their SHA-256)")?;
    let Value::String(sha256) = sha256 else {
        return Err("digest.sha256 is not a string".into());
    };
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if sha256.len() != 64 || !sha256.chars().all(lower_hex) {
        return Err("digest.sha256 is not 64 lowercase hexadecimal characters".into());
    }
    Ok(Subject {
        name,
        sha256: sha256.clone(),
    })
}

/// At most `max` bytes and no control characters; the message never repeats the text.
fn check_text(text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "{} bytes long; at most {max} are accepted",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("holds a control character; none are accepted".into());
    }
    Ok(())
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text.to_string()
    }
}

/// DSSE's pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP
/// body`, lengths in ASCII decimal. This is what a DSSE signature is over.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let head = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    );
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn statement(subjects: &str) -> String {
        format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":{subjects},"predicateType":"https://slsa.dev/provenance/v1","predicate":{{}}}}"#
        )
    }

    #[test]
    fn pae_is_dssev1() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn reads_subjects_and_predicate_type() {
        let text = statement(&format!(
            r#"[{{"name":"a.tgz","digest":{{"sha256":"{SHA}","sha512":"00"}}}},{{"digest":{{"sha256":"{SHA}"}}}}]"#
        ));
        let s = Statement::parse(text.as_bytes()).unwrap();
        assert_eq!(s.predicate_type, "https://slsa.dev/provenance/v1");
        assert_eq!(s.subjects.len(), 2);
        assert_eq!(s.subjects[0].name, "a.tgz");
        assert_eq!(s.subjects[1].name, "");
        assert!(s.names_sha256(&hex::decode(SHA).unwrap()));
        assert!(!s.names_sha256(&[0; 32]));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let e = |text: &str| Statement::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(e(&statement("[]")).contains("names no subjects"));
        assert!(e(&statement(r#"[{"name":"a","digest":{"sha1":"00"}}]"#))
            .contains("subject 0: no digest.sha256"));
        assert!(e(&statement(&format!(
            r#"[{{"name":"a","digest":{{"sha256":"{}"}}}}]"#,
            SHA.to_uppercase()
        )))
        .contains("lowercase"));
        let v01 = statement("[]").replace("Statement/v1", "Statement/v0.1");
        assert!(e(&v01).contains("Statement/v0.1"), "{}", e(&v01));
        assert!(
            e(r#"{"_type":"https://in-toto.io/Statement/v1","_type":"x"}"#)
                .contains("appears twice")
        );
        let no_type = statement(&format!(r#"[{{"digest":{{"sha256":"{SHA}"}}}}]"#))
            .replace("predicateType", "predicate_type");
        assert!(e(&no_type).contains("predicateType: missing"));
        let many = format!(
            "[{}]",
            vec![format!(r#"{{"digest":{{"sha256":"{SHA}"}}}}"#); MAX_SUBJECTS + 1].join(",")
        );
        assert!(e(&statement(&many)).contains("257 subjects"));
        assert!(e("[]").contains("not a JSON object"));
    }
}
