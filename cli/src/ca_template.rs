//! Fulcio certificate-maker JSON templates for `waxseal ca root --template` and
//! `ca intermediate --template` (README.md, "Templates"). The template names the
//! subject, the validity and the extensions; each is checked against the Fulcio
//! profile of [`crate::ca`] and anything it would reject is refused, naming the field.

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
};
use serde::Deserialize;
use time::Duration;

/// Largest template file accepted.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Longest string accepted in any field.
const MAX_STRING: usize = 256;
/// Most entries accepted in any list.
const MAX_LIST: usize = 8;

/// Which profile the template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ca root`.
    Root,
    /// `ca intermediate`.
    Intermediate,
    /// `ca tsa`: certificate-maker's leaf, a timestamping end entity.
    Leaf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Subject {
    #[serde(default)]
    country: Vec<String>,
    #[serde(default)]
    organization: Vec<String>,
    #[serde(default)]
    organizational_unit: Vec<String>,
    #[serde(default)]
    common_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Issuer {
    #[serde(default)]
    common_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Constraints {
    #[serde(rename = "isCA")]
    is_ca: bool,
    #[serde(default)]
    max_path_len: Option<u8>,
}

/// A parsed certificate-maker template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Template {
    subject: Subject,
    #[serde(default)]
    issuer: Option<Issuer>,
    #[serde(default)]
    cert_life: String,
    #[serde(default)]
    key_usage: Vec<String>,
    #[serde(default)]
    ext_key_usage: Vec<String>,
    basic_constraints: Option<Constraints>,
}

fn check_string(field: &str, s: &str) -> Result<()> {
    if s.len() > MAX_STRING {
        bail!("template field {field}: longer than {MAX_STRING} bytes");
    }
    if s.contains("{{") {
        bail!("template field {field}: Go template placeholders ({{{{ … }}}}) are not filled in; write the value");
    }
    if s.chars().any(char::is_control) {
        bail!("template field {field}: control characters");
    }
    Ok(())
}

fn check_list(field: &str, l: &[String]) -> Result<()> {
    if l.len() > MAX_LIST {
        bail!("template field {field}: more than {MAX_LIST} entries");
    }
    for s in l {
        check_string(field, s)?;
        if s.trim().is_empty() {
            bail!("template field {field}: an empty entry");
        }
    }
    Ok(())
}

/// A Go duration as certificate-maker writes `certLife`: decimal numbers each with a
/// unit among h, m, s (e.g. "87600h", "8760h30m"). Whole seconds only.
pub fn parse_go_duration(s: &str) -> Result<Duration> {
    if s.is_empty() {
        bail!("empty");
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            if num.len() > 12 {
                bail!("{s:?}: a number too large");
            }
            continue;
        }
        let unit: i64 = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => bail!("{s:?}: unit {c:?} is not h, m or s"),
        };
        if num.is_empty() {
            bail!("{s:?}: unit {c:?} without a number");
        }
        let n: i64 = num.parse().map_err(|e| anyhow!("{s:?}: {e}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| anyhow!("{s:?}: too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        bail!("{s:?}: a number without a unit (h, m or s)");
    }
    Ok(Duration::seconds(total))
}

impl Template {
    /// Parses and checks a template file's bytes for the profile `kind`.
    pub fn parse(data: &[u8], kind: Kind) -> Result<Template> {
        if data.len() > MAX_TEMPLATE_BYTES {
            bail!("the template is larger than {MAX_TEMPLATE_BYTES} bytes");
        }
        let de = &mut serde_json::Deserializer::from_slice(data);
        let t: Template = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow!("template field {path}: {}", e.into_inner())
        })?;
        t.check(kind)?;
        Ok(t)
    }

    fn check(&self, kind: Kind) -> Result<()> {
        check_list("subject.country", &self.subject.country)?;
        for c in &self.subject.country {
            if c.len() != 2 || !c.chars().all(|c| c.is_ascii_uppercase()) {
                bail!("template field subject.country: {c:?} is not a two-letter country code");
            }
        }
        check_list("subject.organization", &self.subject.organization)?;
        check_list(
            "subject.organizationalUnit",
            &self.subject.organizational_unit,
        )?;
        check_string("subject.commonName", &self.subject.common_name)?;
        if self.subject.common_name.trim().is_empty() {
            bail!("template field subject.commonName: missing or empty");
        }
        if let Some(i) = &self.issuer {
            check_string("issuer.commonName", &i.common_name)?;
            if kind == Kind::Root && i.common_name != self.subject.common_name {
                bail!("template field issuer.commonName: a root is self-signed, so it must equal subject.commonName");
            }
        }
        check_string("certLife", &self.cert_life)?;
        let life = self.life().context("template field certLife")?;
        if life < Duration::hours(1) || life > Duration::days(36500) {
            bail!(
                "template field certLife: {} is outside 1h..36500 days",
                self.cert_life
            );
        }
        check_list("keyUsage", &self.key_usage)?;
        for u in &self.key_usage {
            if !matches!(u.as_str(), "certSign" | "crlSign" | "digitalSignature") {
                bail!("template field keyUsage: {u:?} is not one of certSign, crlSign, digitalSignature");
            }
        }
        check_list("extKeyUsage", &self.ext_key_usage)?;
        if kind == Kind::Leaf {
            if self.key_usage != ["digitalSignature"] {
                bail!("template field keyUsage: the timestamping leaf needs exactly [\"digitalSignature\"]");
            }
            if self.ext_key_usage != ["TimeStamping"] {
                bail!("template field extKeyUsage: the timestamping leaf needs exactly [\"TimeStamping\"] (sigstore/timestamp-authority refuses any other)");
            }
            if let Some(bc) = &self.basic_constraints {
                if bc.is_ca {
                    bail!("template field basicConstraints.isCA: a leaf is not a CA");
                }
                if bc.max_path_len.is_some() {
                    bail!("template field basicConstraints.maxPathLen: a leaf has no path length");
                }
            }
            return Ok(());
        }
        if !self.key_usage.iter().any(|u| u == "certSign") {
            bail!("template field keyUsage: a CA certificate needs certSign");
        }
        match kind {
            Kind::Root => {
                if !self.ext_key_usage.is_empty() {
                    bail!("template field extKeyUsage: the Fulcio root profile has no extended key usage");
                }
            }
            Kind::Intermediate | Kind::Leaf => {
                if self.ext_key_usage != ["CodeSigning"] {
                    bail!("template field extKeyUsage: the Fulcio intermediate profile needs exactly [\"CodeSigning\"]");
                }
            }
        }
        let bc = self.basic_constraints.as_ref().ok_or_else(|| {
            anyhow!("template field basicConstraints: missing (a CA needs isCA true)")
        })?;
        if !bc.is_ca {
            bail!(
                "template field basicConstraints.isCA: must be true for a {}",
                kind.name()
            );
        }
        match (kind, bc.max_path_len) {
            (Kind::Root, Some(0 | 1) | None) | (Kind::Intermediate | Kind::Leaf, Some(0) | None) => {}
            (Kind::Root, Some(n)) => bail!("template field basicConstraints.maxPathLen: {n}; the Fulcio root allows 0 or 1"),
            (_, Some(n)) => bail!("template field basicConstraints.maxPathLen: {n}; the Fulcio intermediate allows only 0"),
        }
        Ok(())
    }

    /// The validity `certLife` asks for.
    pub fn life(&self) -> Result<Duration> {
        parse_go_duration(&self.cert_life)
    }

    /// The issuer common name the template expects, if it names one.
    pub fn issuer_cn(&self) -> Option<&str> {
        self.issuer.as_ref().map(|i| i.common_name.as_str())
    }

    /// The subject, for messages.
    pub fn subject_cn(&self) -> &str {
        &self.subject.common_name
    }

    /// Replaces the profile's subject, validity end (from `not_before`, clipped by the
    /// profile's own end for an intermediate) and key usages with the template's.
    /// For an intermediate, `issuer` is the root: its common name must be the template's
    /// issuer.commonName when that is given.
    pub fn apply(
        &self,
        p: &mut CertificateParams,
        kind: Kind,
        issuer: Option<&crate::ca::RootInfo>,
    ) -> Result<()> {
        if let (Some(root), Some(want)) = (issuer, self.issuer_cn()) {
            let cn = root_cn(&root.der)?;
            if cn != want {
                bail!("template field issuer.commonName: {want:?}, but the root certificate's common name is {cn:?}");
            }
        }
        if let (Kind::Intermediate, Some(root)) = (kind, issuer) {
            if root_path_len(&root.der)? == Some(0) {
                bail!("the root {} has pathlen 0 and can certify no intermediate (its template's basicConstraints.maxPathLen)", root.subject);
            }
        }
        let clip = issuer.map(|r| r.not_after);
        let mut dn = DistinguishedName::new();
        for c in &self.subject.country {
            dn.push(DnType::CountryName, c.as_str());
        }
        for o in &self.subject.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        for u in &self.subject.organizational_unit {
            dn.push(DnType::OrganizationalUnitName, u.as_str());
        }
        dn.push(DnType::CommonName, self.subject.common_name.as_str());
        p.distinguished_name = dn;
        let mut end = p.not_before + self.life()?;
        if let Some(c) = clip {
            end = end.min(c);
        }
        if end <= p.not_before {
            bail!("template field certLife: no room inside the issuer's validity");
        }
        p.not_after = end;
        if kind == Kind::Leaf {
            // The profile's digitalSignature, critical timeStamping and CA:FALSE stay:
            // the template was checked to ask for exactly those.
            return Ok(());
        }
        p.key_usages = self
            .key_usage
            .iter()
            .filter_map(|u| match u.as_str() {
                "certSign" => Some(KeyUsagePurpose::KeyCertSign),
                "crlSign" => Some(KeyUsagePurpose::CrlSign),
                "digitalSignature" => Some(KeyUsagePurpose::DigitalSignature),
                _ => None,
            })
            .collect();
        let default_len = if kind == Kind::Root { 1 } else { 0 };
        let len = self
            .basic_constraints
            .as_ref()
            .and_then(|b| b.max_path_len)
            .unwrap_or(default_len);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(len));
        Ok(())
    }
}

fn root_cn(der: &[u8]) -> Result<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(der)
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(cn)
}

fn root_path_len(der: &[u8]) -> Result<Option<u32>> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(der)
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert
        .basic_constraints()
        .ok()
        .flatten()
        .and_then(|b| b.value.path_len_constraint))
}

/// Reads a template file for `kind`, at most [`MAX_TEMPLATE_BYTES`], naming the file
/// in any error.
pub fn load(path: &std::path::Path, kind: Kind) -> Result<Template> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot read the template {}", path.display()))?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        bail!("the template {} is not a regular file", path.display());
    }
    let mut data = Vec::new();
    f.take(MAX_TEMPLATE_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read the template {}", path.display()))?;
    Template::parse(&data, kind)
        .with_context(|| format!("the template {} is refused", path.display()))
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Root => "root",
            Kind::Intermediate => "intermediate",
            Kind::Leaf => "leaf",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("87600h").unwrap(), Duration::hours(87600));
        assert_eq!(parse_go_duration("1h30m").unwrap(), Duration::minutes(90));
        assert!(parse_go_duration("10d").is_err());
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("h").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("9999999999999h").is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        let bad = [
            (
                r#"{"subject":{"commonName":"R"},"certLife":"1h","keyUsage":["certSign"],"basicConstraints":{"isCA":true},"extra":1}"#,
                "extra",
            ),
            (
                r#"{"subject":{"commonName":"R"},"certLife":"1y","keyUsage":["certSign"],"basicConstraints":{"isCA":true}}"#,
                "certLife",
            ),
            (
                r#"{"subject":{"commonName":"R"},"certLife":"1h","keyUsage":["crlSign"],"basicConstraints":{"isCA":true}}"#,
                "keyUsage",
            ),
            (
                r#"{"subject":{"commonName":"R"},"certLife":"1h","keyUsage":["certSign","encipherOnly"],"basicConstraints":{"isCA":true}}"#,
                "keyUsage",
            ),
            (
                r#"{"subject":{"commonName":"R"},"certLife":"1h","keyUsage":["certSign"],"basicConstraints":{"isCA":false}}"#,
                "basicConstraints.isCA",
            ),
            (
                r#"{"subject":{"commonName":"{{ .Subject }}"},"certLife":"1h","keyUsage":["certSign"],"basicConstraints":{"isCA":true}}"#,
                "subject.commonName",
            ),
            (
                r#"{"subject":{"commonName":"R","locality":["x"]},"certLife":"1h","keyUsage":["certSign"],"basicConstraints":{"isCA":true}}"#,
                "locality",
            ),
        ];
        for (t, field) in bad {
            let e = format!(
                "{:#}",
                Template::parse(t.as_bytes(), Kind::Root).unwrap_err()
            );
            assert!(e.contains(field), "{e} should name {field}");
        }
        let e = format!("{:#}", Template::parse(br#"{"subject":{"commonName":"I"},"certLife":"1h","keyUsage":["certSign"],"basicConstraints":{"isCA":true,"maxPathLen":0}}"#, Kind::Intermediate).unwrap_err());
        assert!(e.contains("extKeyUsage"), "{e}");
        assert!(Template::parse(&vec![b' '; MAX_TEMPLATE_BYTES + 1], Kind::Root).is_err());
    }
}
