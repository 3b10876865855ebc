//! Who may use which key for what.
//!
//! This version decides by purpose: a key listed in a `[[key]]` entry serves exactly
//! the purposes named there; any other key serves `digest`, `blob`, `ssh` and `attest`
//! (`x509-tbs` only where configured). `attest` is a default because a key that signs
//! any `digest` could sign a DSSE PAE's digest anyway: leaving it out would protect
//! nothing, while `purposes = ["attest"]` does narrow a key to attestations. Callers are already limited to the agent's own
//! uid when they connect.

use std::collections::{HashMap, HashSet};

use crate::config::KeyConfig;
use crate::proto::{ErrorCode, Purpose, WireError};
use crate::x509::{CertKind, TbsSummary};

/// Purposes of a key that has no `[[key]]` entry.
pub const DEFAULT_PURPOSES: [Purpose; 4] = [
    Purpose::Digest,
    Purpose::Blob,
    Purpose::Ssh,
    Purpose::Attest,
];

/// Who is asking (read from the socket with SO_PEERCRED).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// Peer uid.
    pub uid: u32,
    /// Peer pid, when the kernel reports one.
    pub pid: Option<i32>,
    /// The peer's executable (`/proc/PID/exe`), read when it connected.
    pub exe: Option<std::path::PathBuf>,
    /// The process as identified when the agent accepted the connection.
    pub process: Option<Process>,
    /// This request was already queued when the agent identified the process: it may
    /// have been written by the program that ran before an `exec`.
    pub early: bool,
}

/// What identifies a running program: its process's start time and the file it runs.
///
/// `exec` keeps the pid and the start time and changes the file; a pid reused by
/// another process changes the start time. Files are compared by device and inode, so
/// a path through a symlink, a hard link or a renamed copy cannot stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// `starttime` from `/proc/PID/stat`, in clock ticks since boot.
    pub start: u64,
    /// Device and inode of `/proc/PID/exe`.
    pub exe: (u64, u64),
}

impl Process {
    /// Reads the process `pid` as it is now.
    pub fn read(pid: i32) -> Option<Process> {
        use std::os::unix::fs::MetadataExt;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so fields
        // are counted after its last `)`; `starttime` is field 22, the 20th after it.
        let after = &stat[stat.rfind(')')? + 1..];
        let start = after.split_whitespace().nth(19)?.parse().ok()?;
        let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        Some(Process {
            start,
            exe: (meta.dev(), meta.ino()),
        })
    }
}

impl Caller {
    /// A caller from its peer credentials; the executable and the process's identity
    /// are read from `/proc`.
    pub fn from_peer(uid: u32, pid: Option<i32>) -> Caller {
        let process = pid.and_then(Process::read);
        let exe = pid.and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok());
        Caller {
            uid,
            pid,
            exe,
            process,
            early: false,
        }
    }

    /// `uid 1000 pid 4242 (/usr/bin/cosign)`, for logs and questions.
    pub fn describe(&self) -> String {
        let mut s = format!("uid {}", self.uid);
        if let Some(p) = self.pid {
            s.push_str(&format!(" pid {p}"));
        }
        if let Some(e) = &self.exe {
            s.push_str(&format!(" ({})", e.display()));
        }
        s
    }

    /// Checks that the caller runs one of `allowed` now, and ran it when it wrote this
    /// request; the error says what differs.
    fn runs_one_of(&self, allowed: &[std::path::PathBuf]) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if self.early {
            return Err("the request was written before the agent identified the program (it was already queued when the connection was accepted, as after an exec); send requests after the `hello` reply".into());
        }
        let (Some(pid), Some(then)) = (self.pid, self.process) else {
            return Err("the agent could not identify the program that connected".into());
        };
        match Process::read(pid) {
            Some(now) if now == then => {}
            Some(now) if now.start == then.start => {
                return Err(format!(
                    "pid {pid} runs another program than when it connected (exec after connect)"
                ))
            }
            _ => return Err(format!("pid {pid} is no longer the process that connected")),
        }
        let runs = allowed
            .iter()
            .any(|path| std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == then.exe));
        if runs {
            Ok(())
        } else {
            Err(format!(
                "it runs {}",
                self.exe
                    .as_ref()
                    .map_or("an unknown program".to_string(), |e| e
                        .display()
                        .to_string())
            ))
        }
    }
}

/// The uid this agent runs as, read once.
pub fn own_uid() -> u32 {
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// The checked policy of every key.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    keys: HashMap<String, Vec<Purpose>>,
    no_forwarding: HashSet<String>,
    /// `x509_issue` of the keys whose entry narrows it.
    x509_issue: HashMap<String, Vec<CertKind>>,
    /// The whole `[[key]]` entries, for the caller, confirmation and rate rules.
    entries: HashMap<String, KeyConfig>,
}

/// How many signatures a key may make, per hour and per day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `max_per_hour`.
    pub per_hour: Option<u32>,
    /// `max_per_day`.
    pub per_day: Option<u32>,
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
            entries: keys.iter().map(|k| (k.name.clone(), k.clone())).collect(),
        }
    }

    /// Whether a person must confirm each signature with `key`.
    pub fn confirm(&self, key: &str) -> bool {
        self.entries.get(key).is_some_and(|k| k.confirm)
    }

    /// `key`'s quorum approval, if it has one.
    pub fn approvals(&self, key: &str) -> Option<&crate::approvals::ApprovalPolicy> {
        self.entries.get(key).and_then(|k| k.approvals.as_ref())
    }

    /// The rate limits of `key`.
    pub fn limits(&self, key: &str) -> Limits {
        self.entries.get(key).map_or(Limits::default(), |k| Limits {
            per_hour: k.max_per_hour,
            per_day: k.max_per_day,
        })
    }

    /// `allow_uids` and `allow_exe` of `key`'s entry; the refusal names the rule.
    ///
    /// A uid other than the agent's own (admitted by `[agent] allow_uids`) may use only
    /// the keys whose entry names it in `allow_uids`.
    pub fn check_caller(&self, key: &str, caller: &Caller) -> Result<(), WireError> {
        let entry = self.entries.get(key);
        let uids = entry.map_or(&[][..], |e| e.allow_uids.as_slice());
        if caller.uid != own_uid() && !uids.contains(&caller.uid) {
            return Err(WireError::new(
                ErrorCode::PolicyDenied,
                format!(
                    "key {key} may not be used by uid {}: only keys whose [[key]] entry names that uid in allow_uids serve uids other than the agent's own",
                    caller.uid
                ),
            ));
        }
        let Some(entry) = entry else {
            return Ok(());
        };
        if !uids.is_empty() && !uids.contains(&caller.uid) {
            return Err(WireError::new(
                ErrorCode::PolicyDenied,
                format!(
                    "key {key} may not be used by uid {}: its [[key]] entry has allow_uids = {:?}",
                    caller.uid, entry.allow_uids
                ),
            ));
        }
        if !entry.allow_exe.is_empty() {
            if let Err(why) = caller.runs_one_of(&entry.allow_exe) {
                return Err(WireError::new(
                    ErrorCode::PolicyDenied,
                    format!(
                        "key {key} may not be used by {}: {why}; its [[key]] entry has allow_exe = [{}]",
                        caller.describe(),
                        entry
                            .allow_exe
                            .iter()
                            .map(|p| format!("\"{}\"", p.display()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether `caller` may see `key` (list it, read its public key): the agent's own
    /// uid sees every key, another uid only those it may use by `allow_uids`.
    pub fn visible_to(&self, key: &str, caller: &Caller) -> bool {
        caller.uid == own_uid()
            || self
                .entries
                .get(key)
                .is_some_and(|e| e.allow_uids.contains(&caller.uid))
    }

    /// Whether `key` may sign the certificate `tbs` describes (`x509_issue`,
    /// `x509_eku`); the refusal names the rule. The purpose is checked by
    /// [`Policy::check_sign`].
    ///
    /// A key whose `x509_issue` leaves out `ca` never signs basicConstraints CA:TRUE or
    /// keyUsage keyCertSign (either makes a CA for OpenSSL); one that leaves out `leaf`
    /// signs only certificates with both.
    pub fn check_tbs(&self, key: &str, tbs: &TbsSummary) -> Result<(), WireError> {
        let deny = |rule: String| {
            Err(WireError::new(
                ErrorCode::PolicyDenied,
                format!(
                    "key {key} may not sign this certificate (subject {}): {rule}",
                    tbs.subject
                ),
            ))
        };
        if let Some(kinds) = self.x509_issue.get(key) {
            let issue = format!(
                "its [[key]] entry has x509_issue = [{}]",
                kinds
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !kinds.contains(&CertKind::Ca) {
                if tbs.ca.is_some() {
                    return deny(format!(
                        "it makes a CA certificate (basicConstraints CA:TRUE), and {issue}"
                    ));
                }
                if tbs.key_cert_sign {
                    return deny(format!(
                        "it makes a CA certificate (keyUsage keyCertSign, which OpenSSL treats as a CA even without basicConstraints), and {issue}"
                    ));
                }
            }
            if !kinds.contains(&CertKind::Leaf) {
                if !tbs.key_cert_sign {
                    return deny(format!(
                        "a CA certificate needs keyUsage keyCertSign, which it lacks, and {issue}"
                    ));
                }
                if tbs.ca.is_none() {
                    return deny(format!(
                        "a CA certificate needs basicConstraints CA:TRUE, which it lacks, and {issue}"
                    ));
                }
            }
        }
        if let Some(allowed) = self.entries.get(key).and_then(|e| e.x509_eku.as_ref()) {
            let eku = format!(
                "its [[key]] entry has x509_eku = [{}]",
                allowed
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if tbs.eku.is_empty() {
                return deny(format!("it has no extendedKeyUsage, and {eku}"));
            }
            if let Some(p) = tbs.eku.iter().find(|p| !allowed.contains(p)) {
                return deny(format!("its extendedKeyUsage includes {p}, and {eku}"));
            }
        }
        Ok(())
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
        caller: &Caller,
    ) -> Result<(), WireError> {
        let allowed = self.purposes(key);
        if allowed.contains(&purpose) {
            return self.check_caller(key, caller);
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
                ..KeyConfig::default()
            },
            KeyConfig {
                name: "hsm/git".into(),
                purposes: vec![Purpose::Ssh],
                ssh_forwarding: Some(false),
                x509_issue: vec![CertKind::Ca, CertKind::Leaf],
                ..KeyConfig::default()
            },
        ]);
        assert!(
            !p.ssh_forwarding("hsm/root"),
            "x509-tbs keys are not forwarded by default"
        );
        assert!(!p.ssh_forwarding("hsm/git"));
        assert!(p.ssh_forwarding("hsm/other"));
        let me = Caller {
            uid: own_uid(),
            ..Caller::default()
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

    fn summary(ca: Option<Option<u32>>, key_cert_sign: bool, eku: &[&str]) -> TbsSummary {
        TbsSummary {
            subject: "CN=s".into(),
            issuer: "CN=i".into(),
            serial: "01".into(),
            not_before: String::new(),
            not_after: String::new(),
            ca,
            key_cert_sign,
            eku: eku.iter().map(ToString::to_string).collect(),
            hash: crate::proto::HashAlg::Sha256,
            family: crate::x509::SigFamily::Ecdsa,
        }
    }

    #[test]
    fn x509_issue_and_x509_eku() {
        let key = |name: &str, issue: Vec<CertKind>, eku: Option<&[&str]>| KeyConfig {
            name: name.into(),
            purposes: vec![Purpose::X509Tbs],
            x509_issue: issue,
            x509_eku: eku.map(|e| e.iter().map(ToString::to_string).collect()),
            ..KeyConfig::default()
        };
        let p = Policy::new(&[
            key("hsm/leaf", vec![CertKind::Leaf], Some(&["codeSigning"])),
            key("hsm/ca", vec![CertKind::Ca], None),
            key("hsm/both", vec![CertKind::Ca, CertKind::Leaf], None),
        ]);
        let denied = |key: &str, tbs: &TbsSummary, want: &[&str]| {
            let e = p.check_tbs(key, tbs).unwrap_err();
            assert_eq!(e.code, ErrorCode::PolicyDenied);
            for w in want {
                assert!(e.message.contains(w), "{w:?} not in {}", e.message);
            }
        };
        let leaf = summary(None, false, &["codeSigning"]);
        let ca = summary(Some(Some(0)), true, &[]);
        assert!(p.check_tbs("hsm/leaf", &leaf).is_ok());
        assert!(p.check_tbs("hsm/ca", &ca).is_ok());
        assert!(p.check_tbs("hsm/both", &ca).is_ok());
        assert!(p.check_tbs("hsm/both", &summary(None, true, &[])).is_ok());
        assert!(p.check_tbs("hsm/other", &ca).is_ok());
        // A leaf-only key: neither CA:TRUE nor keyCertSign, in any combination.
        let issue = "x509_issue = [\"leaf\"]";
        denied(
            "hsm/leaf",
            &summary(Some(None), false, &["codeSigning"]),
            &["basicConstraints CA:TRUE", issue],
        );
        denied(
            "hsm/leaf",
            &summary(None, true, &["codeSigning"]),
            &["keyCertSign", issue],
        );
        denied(
            "hsm/leaf",
            &summary(Some(None), true, &["codeSigning"]),
            &[issue],
        );
        // A CA-only key: both, always.
        let issue = "x509_issue = [\"ca\"]";
        denied(
            "hsm/ca",
            &summary(None, false, &[]),
            &["needs keyUsage keyCertSign", issue],
        );
        denied(
            "hsm/ca",
            &summary(Some(None), false, &[]),
            &["needs keyUsage keyCertSign", issue],
        );
        denied(
            "hsm/ca",
            &summary(None, true, &[]),
            &["needs basicConstraints CA:TRUE", issue],
        );
        // x509_eku: an EKU, and only listed purposes.
        let eku = "x509_eku = [\"codeSigning\"]";
        denied(
            "hsm/leaf",
            &summary(None, false, &[]),
            &["no extendedKeyUsage", eku],
        );
        denied(
            "hsm/leaf",
            &summary(None, false, &["codeSigning", "serverAuth"]),
            &["serverAuth", eku],
        );
    }
}
