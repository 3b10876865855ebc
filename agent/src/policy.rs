//! Who may use which key for what.
//!
//! This version decides by purpose: a key listed in a `[[key]]` entry serves exactly
//! the purposes named there; any other key serves `digest`, `blob` and `ssh`
//! (`x509-tbs` only where configured). Callers are already limited to the agent's own
//! uid when they connect.

use std::collections::{HashMap, HashSet};

use crate::config::KeyConfig;
use crate::proto::{ErrorCode, Purpose, WireError};
use crate::x509::{CertKind, TbsSummary};

/// Purposes of a key that has no `[[key]]` entry.
pub const DEFAULT_PURPOSES: [Purpose; 3] = [Purpose::Digest, Purpose::Blob, Purpose::Ssh];

/// Who is asking (read from the socket with SO_PEERCRED).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Peer uid.
    pub uid: u32,
    /// Peer pid, when the kernel reports one.
    pub pid: Option<i32>,
}

/// The checked policy of every key.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    keys: HashMap<String, Vec<Purpose>>,
    no_forwarding: HashSet<String>,
    /// `x509_issue` of the keys whose entry narrows it.
    x509_issue: HashMap<String, Vec<CertKind>>,
}

impl Policy {
    /// Builds the policy from the config's `[[key]]` entries.
    pub fn new(keys: &[KeyConfig]) -> Self {
        Policy {
            keys: keys
                .iter()
                .map(|k| (k.name.clone(), k.purposes.clone()))
                .collect(),
            no_forwarding: keys
                .iter()
                .filter(|k| {
                    !k.ssh_forwarding
                        .unwrap_or(!k.purposes.contains(&Purpose::X509Tbs))
                })
                .map(|k| k.name.clone())
                .collect(),
            x509_issue: keys
                .iter()
                .filter(|k| {
                    !(k.x509_issue.contains(&CertKind::Ca)
                        && k.x509_issue.contains(&CertKind::Leaf))
                })
                .map(|k| (k.name.clone(), k.x509_issue.clone()))
                .collect(),
        }
    }

    /// Whether `key` may sign the certificate `tbs` describes (`x509_issue`); the
    /// refusal names the rule. The purpose is checked by [`Policy::check_sign`].
    pub fn check_tbs(&self, key: &str, tbs: &TbsSummary) -> Result<(), WireError> {
        let kind = tbs.kind();
        match self.x509_issue.get(key) {
            Some(kinds) if !kinds.contains(&kind) => Err(WireError::new(
                ErrorCode::PolicyDenied,
                format!(
                    "key {key} may not sign a {} certificate (subject {}): its [[key]] entry has x509_issue = [{}]",
                    if kind == CertKind::Ca { "CA" } else { "leaf (non-CA)" },
                    tbs.subject,
                    kinds.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Purposes `key` may sign for.
    pub fn purposes(&self, key: &str) -> Vec<Purpose> {
        self.keys
            .get(key)
            .cloned()
            .unwrap_or_else(|| DEFAULT_PURPOSES.to_vec())
    }

    /// Whether `key` may be listed and used on an SSH connection bound for forwarding.
    pub fn ssh_forwarding(&self, key: &str) -> bool {
        !self.no_forwarding.contains(key)
    }

    /// Whether `caller` may have `key` sign for `purpose`; the refusal names the rule.
    pub fn check_sign(
        &self,
        key: &str,
        purpose: Purpose,
        _caller: &Caller,
    ) -> Result<(), WireError> {
        let allowed = self.purposes(key);
        if allowed.contains(&purpose) {
            return Ok(());
        }
        let list = allowed
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let rule = if self.keys.contains_key(key) {
            format!("its [[key]] entry allows only: {list}")
        } else {
            format!("keys without a [[key]] entry serve only: {list}; add one with purposes = [\"{purpose}\"] to allow it")
        };
        Err(WireError::new(
            ErrorCode::PolicyDenied,
            format!("key {key} may not sign for purpose `{purpose}`: {rule}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_entries() {
        let p = Policy::new(&[
            KeyConfig {
                name: "hsm/root".into(),
                purposes: vec![Purpose::X509Tbs],
                ssh_forwarding: None,
                x509_issue: vec![CertKind::Ca],
            },
            KeyConfig {
                name: "hsm/git".into(),
                purposes: vec![Purpose::Ssh],
                ssh_forwarding: Some(false),
                x509_issue: vec![CertKind::Ca, CertKind::Leaf],
            },
        ]);
        assert!(
            !p.ssh_forwarding("hsm/root"),
            "x509-tbs keys are not forwarded by default"
        );
        assert!(!p.ssh_forwarding("hsm/git"));
        assert!(p.ssh_forwarding("hsm/other"));
        let me = Caller {
            uid: 1000,
            pid: None,
        };
        assert!(p.check_sign("hsm/other", Purpose::Digest, &me).is_ok());
        let e = p
            .check_sign("hsm/other", Purpose::X509Tbs, &me)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::PolicyDenied);
        assert!(e.message.contains("[[key]]"), "{}", e.message);
        let e = p.check_sign("hsm/root", Purpose::Digest, &me).unwrap_err();
        assert!(e.message.contains("allows only: x509-tbs"), "{}", e.message);
        assert!(p.check_sign("hsm/root", Purpose::X509Tbs, &me).is_ok());
    }
}
