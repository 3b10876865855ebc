//! `waxseal sign FILE... --key NAME` (a Sigstore bundle per file, optionally logged in
//! Rekor), `waxseal sign FILE... --key NAME --raw` (a bare signature per file) and
//! `waxseal sign --digest HEX --key NAME`.
//!
//! Files are hashed one after another and their requests pipelined over one
//! connection (docs/protocol.md, "Pipelining"): while the agent signs a window of
//! files, the next are hashed. A file that cannot be read, that the agent refuses, or
//! whose bundle cannot be written is named on stderr and the others go on; the
//! command fails (exit status 1) if any file was not signed. Timestamps (`--tsa-url`,
//! RFC 3161) and Rekor uploads (`--rekor-url`, v1 or v2) are made one file after
//! another as the signatures come back; a file whose timestamp or entry fails gets no
//! bundle, and an older bundle of it stays. `--signing-config` chooses those logs and
//! TSAs from a Sigstore SigningConfig (`crate::signing_config`) before anything is
//! signed; each chosen log adds an entry and each TSA a timestamp. `--trusted-root`
//! gives each log's key (by `baseUrl`) and the TSAs a timestamp must come from. Any of
//! these the command line leaves out may come from the config's `[sigstore]` table
//! (`crate::defaults`; README, "Signing releases").

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::error::ErrorKind;
use clap::CommandFactory as _;
use serde_json::{json, Value};
use waxseal_proto::client::Client;
use waxseal_proto::proto::{Bytes, HashAlg, KeyAlg, Op, Purpose, RsaPadding, Sign, SignOk};

use super::Ctx;
use crate::defaults::ServiceFlags;
use crate::signing_config::{SigningConfig, TrustedRoot};
use crate::sigstore::{Bundle, Rekor};
use crate::tsa::{TrustedTsa, Tsa};
use crate::verify::hash_file;
use crate::SignArgs;

/// Sign requests in flight on the connection at once: enough to keep the agent busy
/// while files are hashed and bundles written, few enough that their answers fit the
/// socket's buffer many times over.
const WINDOW: usize = 32;

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut p = file.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

pub fn run(ctx: &Ctx, args: SignArgs) -> Result<()> {
    let padding = args.pss.then_some(RsaPadding::Pss);
    if let Some(hex_digest) = &args.digest {
        let digest = hex::decode(hex_digest.trim())
            .context("--digest must be hexadecimal, e.g. the output of sha256sum")?;
        let signed = ctx
            .connect()?
            .sign_digest(&args.key, &digest, args.hash, padding)?;
        if ctx.json {
            return ctx.print_json(&signed);
        }
        outln!("{}", B64.encode(&signed.signature.0));
        return Ok(());
    }
    if args.files.is_empty() {
        bail!("give a FILE to sign or --digest HEX");
    }
    if args.files.len() > 1 && (args.bundle.is_some() || args.out.is_some()) {
        let option = if args.bundle.is_some() {
            "--bundle"
        } else {
            "--out"
        };
        let mut cli = crate::Cli::command();
        cli.build();
        // The usage shown is `waxseal sign …`'s; the subcommand exists (it is running).
        let mut usage = match cli.find_subcommand_mut("sign") {
            Some(sign) => sign.clone(),
            None => cli,
        };
        usage
            .error(
                ErrorKind::ArgumentConflict,
                format!(
                    "{option} names the output of one file, and {} files were given: leave it out and each file gets its own (FILE.sigstore.json, or FILE.sig with --raw)",
                    args.files.len()
                ),
            )
            .exit();
    }
    if args.pss && !args.raw {
        bail!("a Sigstore bundle cannot say that an RSA signature is PSS (verifiers assume PKCS#1 v1.5): add --raw for a bare PSS signature");
    }
    // The services and the Rekor key before anything is signed: a bad config or key
    // file costs no signature. A bare signature has no bundle to put services in, so
    // the config's [sigstore] defaults do not apply to --raw.
    let (flags, defaults_from) = ctx.sigstore_services(
        service_flags(&args),
        args.no_sigstore_defaults || args.raw,
        "sign",
    )?;
    let services = Services::from_flags(&flags, ctx.json)?;
    let trusted_root = match &flags.trusted_root {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the trusted root {}", path.display()))?;
            let root = TrustedRoot::parse(&bytes)
                .map_err(|e| anyhow!("trusted root {}: {e}", path.display()))?;
            Some((path, root))
        }
        None => None,
    };
    let pem_key = match &flags.rekor_public_key {
        Some(pem) if !services.rekor_urls.is_empty() => {
            let text = std::fs::read_to_string(pem)
                .with_context(|| format!("cannot read the Rekor public key {}", pem.display()))?;
            Some(
                crate::verify::spki_from_pem(&text)
                    .with_context(|| format!("{} is not a PEM public key", pem.display()))?,
            )
        }
        _ => None,
    };
    let mut rekor: Vec<Rekor> = Vec::new();
    for url in &services.rekor_urls {
        let key_der = match (&pem_key, &trusted_root) {
            (Some(key), _) => key.clone(),
            (None, Some((path, root))) => root
                .log_key(url)
                .ok_or_else(|| {
                    anyhow!(
                        "trusted root {}: tlogs names no log whose baseUrl is {url}",
                        path.display()
                    )
                })?
                .to_vec(),
            (None, None) => bail!("the Rekor log {url} needs --rekor-public-key or --trusted-root to check its answer"),
        };
        rekor.push(Rekor {
            url: url.clone(),
            key_der,
        });
    }
    let mut tsa_trust = Vec::new();
    if let (Some((path, root)), false) = (&trusted_root, services.tsa_urls.is_empty()) {
        if root.tsa_chains.is_empty() {
            bail!(
                "trusted root {}: timestampAuthorities is empty, so no timestamp could be checked",
                path.display()
            );
        }
        for (i, chain) in root.tsa_chains.iter().enumerate() {
            tsa_trust.push(TrustedTsa::from_der(chain).with_context(|| {
                format!(
                    "trusted root {}: timestampAuthorities[{i}].certChain",
                    path.display()
                )
            })?);
        }
    }
    let rekor_v2 = !rekor.is_empty() && services.rekor_version == 2;
    if rekor_v2 && services.tsa_urls.is_empty() {
        bail!("a Rekor v2 entry carries no signed time (no signed entry timestamp): add --tsa-url so the bundle gets an RFC 3161 timestamp");
    }
    let tsa: Vec<Tsa> = services
        .tsa_urls
        .iter()
        .map(|url| Tsa {
            url: url.clone(),
            timeout: std::time::Duration::from_secs(flags.tsa_timeout()),
        })
        .collect();
    let mut client = ctx.connect()?;
    let pk = client.public_key(&args.key)?;
    let hash = args.hash.unwrap_or_else(|| pk.alg.default_hash());
    if rekor_v2 {
        // Before anything is signed: a key or hash Rekor v2 refuses costs no signature.
        if pk.alg == KeyAlg::Ed25519 {
            bail!("{} is an Ed25519 key: Rekor v2 does not accept pure Ed25519 signatures (use an ECDSA or RSA key, or --rekor-version 1)", args.key);
        }
        crate::sigstore::key_details(&pk.spki_der.0, hash)
            .with_context(|| format!("{} cannot be logged in Rekor v2", args.key))?;
    }
    if !args.raw && pk.alg == KeyAlg::Ed25519 {
        bail!("{} is an Ed25519 key; Sigstore message-signature bundles need an ECDSA or RSA key (or use --raw)", args.key);
    }
    let job = Job {
        key: &args.key,
        hash,
        padding,
        raw: args.raw,
        out: if args.raw { &args.out } else { &args.bundle },
        spki: &pk.spki_der.0,
        rekor: &rekor,
        rekor_v2,
        tsa: &tsa,
        tsa_trust: &tsa_trust,
        trusted_root: flags.trusted_root.as_deref(),
        services: &services,
        defaults_from: defaults_from.as_deref(),
    };
    let many = args.files.len() > 1;
    let outcomes = job.sign_files(&mut client, &args.files, many);
    if !many {
        // One file: its result as before, a failure being the command's error.
        let Some(outcome) = outcomes.into_iter().next() else {
            bail!("no file was signed");
        };
        let signed = outcome.result?;
        if ctx.json {
            return ctx.print_json(&job.json(&outcome.file, &outcome.out, Ok(&signed)));
        }
        let logged = match signed.logged {
            Some((index, _)) if job.rekor.len() > 1 => format!(
                "; logged in Rekor at index {index} and in {} more logs",
                job.rekor.len() - 1
            ),
            Some((index, _)) => format!("; logged in Rekor at index {index}"),
            None => String::new(),
        };
        let what = if job.raw { "signature" } else { "bundle" };
        eprintln!(
            "signed {} with {} ({}){logged}; {what} in {}",
            outcome.file.display(),
            job.key,
            signed.alg,
            outcome.out.display()
        );
        return Ok(());
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if ctx.json {
        let all: Vec<Value> = outcomes
            .iter()
            .map(|o| job.json(&o.file, &o.out, o.result.as_ref()))
            .collect();
        ctx.print_json(&all)?;
    } else {
        let algs: std::collections::BTreeSet<&str> = outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok().map(|s| s.alg.as_str()))
            .collect();
        let algs: Vec<&str> = algs.into_iter().collect();
        let what = if job.raw {
            "signatures in FILE.sig"
        } else {
            "bundles in FILE.sigstore.json"
        };
        eprintln!(
            "signed {} of {} files with {} ({}); {what}",
            outcomes.len() - failed,
            outcomes.len(),
            job.key,
            algs.join(", ")
        );
    }
    if failed > 0 {
        bail!(
            "{failed} of {} files were not signed (each is named above)",
            outcomes.len()
        );
    }
    Ok(())
}

/// `sign`'s Sigstore flags as plain values, for [`crate::defaults`].
fn service_flags(args: &SignArgs) -> ServiceFlags {
    ServiceFlags {
        signing_config: args.signing_config.clone(),
        trusted_root: args.trusted_root.clone(),
        rekor_url: args.rekor_url.clone(),
        rekor_version: args.rekor_version,
        rekor_public_key: args.rekor_public_key.clone(),
        tsa_url: args.tsa_url.clone(),
        tsa_timeout: args.tsa_timeout,
    }
}

/// The Rekor logs and TSAs of one invocation: from `--rekor-url` and `--tsa-url`, or
/// chosen from `--signing-config` at the time of signing (each possibly from the
/// config's `[sigstore]`).
struct Services {
    rekor_urls: Vec<String>,
    /// The Rekor API of every log in `rekor_urls`.
    rekor_version: u8,
    tsa_urls: Vec<String>,
}

impl Services {
    fn from_flags(flags: &ServiceFlags, quiet: bool) -> Result<Services> {
        let Some(path) = &flags.signing_config else {
            return Ok(Services {
                rekor_urls: flags.rekor_url.iter().cloned().collect(),
                rekor_version: flags.rekor_version(),
                tsa_urls: flags.tsa_url.iter().cloned().collect(),
            });
        };
        let name = path.display();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the signing config {name}"))?;
        let chosen = SigningConfig::parse(&bytes)
            .and_then(|c| c.choose(time::OffsetDateTime::now_utc()))
            .map_err(|e| anyhow!("signing config {name}: {e}"))?;
        let rekor_urls: Vec<String> = chosen.rekor.iter().map(|s| s.url.clone()).collect();
        // `choose` takes the logs of one API version only.
        let rekor_version = match chosen.rekor.first().map(|s| s.major_api_version) {
            Some(2) => 2,
            _ => 1,
        };
        let tsa_urls: Vec<String> = chosen.tsa.iter().map(|s| s.url.clone()).collect();
        if !rekor_urls.is_empty()
            && flags.rekor_public_key.is_none()
            && flags.trusted_root.is_none()
        {
            bail!(
                "signing config {name} chooses the Rekor log {}: add --rekor-public-key (the log's PEM key) or --trusted-root so its answer can be checked",
                rekor_urls.join(", ")
            );
        }
        if rekor_version == 2 && tsa_urls.is_empty() {
            bail!(
                "signing config {name} chooses the Rekor v2 log {}, whose entries carry no signed time, and tsaUrls lists no TSA: add one, so the bundle gets an RFC 3161 timestamp",
                rekor_urls.join(", ")
            );
        }
        if !quiet {
            let rekor = match rekor_urls.as_slice() {
                [] => "no Rekor log".to_string(),
                urls => format!("Rekor v{rekor_version} {}", urls.join(", ")),
            };
            let tsa = match tsa_urls.as_slice() {
                [] => "no TSA".to_string(),
                urls => format!("TSA {}", urls.join(", ")),
            };
            eprintln!("signing config {name}: {rekor}; {tsa}");
        }
        Ok(Services {
            rekor_urls,
            rekor_version,
            tsa_urls,
        })
    }
}

/// What every file of one invocation is signed with, and where its output goes.
struct Job<'a> {
    key: &'a str,
    hash: HashAlg,
    padding: Option<RsaPadding>,
    raw: bool,
    /// `--out` (with `--raw`) or `--bundle`: one file only.
    out: &'a Option<PathBuf>,
    spki: &'a [u8],
    /// Log each signature in every one of these logs.
    rekor: &'a [Rekor],
    /// Log in `rekor` through its v2 API.
    rekor_v2: bool,
    /// Timestamp each signature with every one of these TSAs.
    tsa: &'a [Tsa],
    /// With `--trusted-root`: each timestamp must be signed by one of these.
    tsa_trust: &'a [TrustedTsa],
    /// `--trusted-root`, to name in errors.
    trusted_root: Option<&'a Path>,
    /// The services used, for `--json`.
    services: &'a Services,
    /// The config file whose `[sigstore]` filled in some of them, for `--json`.
    defaults_from: Option<&'a Path>,
}

/// What became of one file.
struct Outcome {
    file: PathBuf,
    /// Where its bundle or signature goes.
    out: PathBuf,
    result: Result<Signed>,
}

/// A file signed, its bundle or signature written.
struct Signed {
    alg: String,
    digest: Vec<u8>,
    /// Rekor log index and integrated time.
    logged: Option<(i64, i64)>,
}

impl Job<'_> {
    /// Signs `files` in order over `client`'s connection, up to [`WINDOW`] requests
    /// in flight; with `report`, each failure is named on stderr as it happens.
    fn sign_files(&self, client: &mut Client, files: &[PathBuf], report: bool) -> Vec<Outcome> {
        let outcomes: RefCell<Vec<Option<Outcome>>> =
            RefCell::new(files.iter().map(|_| None).collect());
        let settle = |i: usize, result: Result<Signed>| {
            let file = &files[i];
            if report {
                if let Err(e) = &result {
                    eprintln!("waxseal: {}: not signed: {e:#}", file.display());
                }
            }
            outcomes.borrow_mut()[i] = Some(Outcome {
                file: file.clone(),
                out: self.output(file),
                result,
            });
        };
        // Hashing happens as the pipeline draws requests, while the agent signs.
        let requests =
            files
                .iter()
                .enumerate()
                .filter_map(|(i, file)| match hash_file(file, self.hash) {
                    Ok(digest) => Some(((i, digest.clone()), self.request(file, digest))),
                    Err(e) => {
                        settle(i, Err(e));
                        None
                    }
                });
        for ((i, digest), answer) in client.pipeline::<_, SignOk, _>(requests, WINDOW) {
            let result = answer
                .map_err(anyhow::Error::from)
                .and_then(|signed| self.write(&files[i], digest, signed));
            settle(i, result);
        }
        // Files never drawn: the connection broke, and the pipeline said so for the
        // requests it had sent.
        let lost = "the connection to the agent was lost before this file was sent";
        let mut outcomes = outcomes.into_inner();
        for (i, slot) in outcomes.iter_mut().enumerate() {
            if slot.is_none() {
                if report {
                    eprintln!("waxseal: {}: not signed: {lost}", files[i].display());
                }
                *slot = Some(Outcome {
                    file: files[i].clone(),
                    out: self.output(&files[i]),
                    result: Err(anyhow!(lost)),
                });
            }
        }
        outcomes.into_iter().flatten().collect()
    }

    /// Where the bundle (or, with `--raw`, the signature) of `file` goes.
    fn output(&self, file: &Path) -> PathBuf {
        match self.out {
            Some(out) => out.clone(),
            None if self.raw => with_suffix(file, ".sig"),
            None => with_suffix(file, ".sigstore.json"),
        }
    }

    /// The request signing `file`'s `digest`: purpose `blob` named after the file, or
    /// `digest` for a bare PSS signature.
    fn request(&self, file: &Path, digest: Vec<u8>) -> Op {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        let (purpose, name) = match self.padding {
            Some(_) => (Purpose::Digest, None),
            None => (Purpose::Blob, Some(name)),
        };
        Op::Sign(Sign {
            key: self.key.into(),
            purpose,
            hash: Some(self.hash),
            digest: Bytes(digest),
            tbs: None,
            name,
            padding: self.padding,
            message: None,
            statement: None,
        })
    }

    /// Writes the signature of `file` (with `--raw`) or its bundle, logged in Rekor
    /// first when asked.
    fn write(&self, file: &Path, digest: Vec<u8>, signed: SignOk) -> Result<Signed> {
        let out = self.output(file);
        let signature = &signed.signature.0;
        if self.raw {
            std::fs::write(&out, format!("{}\n", B64.encode(signature)))
                .with_context(|| format!("cannot write the signature to {}", out.display()))?;
            return Ok(Signed {
                alg: signed.alg,
                digest,
                logged: None,
            });
        }
        let mut bundle = Bundle::new(self.spki, self.hash, &digest, signature);
        let mut logged = None;
        let mut stamps = Vec::new();
        for tsa in self.tsa {
            let stamp = tsa.timestamp(signature).context("no bundle was written")?;
            if let Some(root) = self.trusted_root {
                if !self
                    .tsa_trust
                    .iter()
                    .any(|t| t.check(&stamp.response, signature).is_ok())
                {
                    bail!(
                        "TSA at {}: its certificate is not one of the timestampAuthorities of the trusted root {}, nor issued by one; no bundle was written",
                        tsa.url,
                        root.display()
                    );
                }
            }
            stamps.push(json!({ "signedTimestamp": B64.encode(&stamp.response) }));
        }
        if !stamps.is_empty() {
            bundle.verification_material.timestamp_verification_data =
                Some(json!({ "rfc3161Timestamps": stamps }));
        }
        for rekor in self.rekor {
            let entry = if self.rekor_v2 {
                rekor.upload_v2(self.hash, &digest, signature, self.spki)
            } else {
                rekor.upload(self.hash, &digest, signature, self.spki)
            }
            .context("no bundle was written")?;
            logged.get_or_insert((entry.log_index.0, entry.integrated_time.0));
            bundle.verification_material.tlog_entries.push(entry);
        }
        bundle.write(&out)?;
        Ok(Signed {
            alg: signed.alg,
            digest,
            logged,
        })
    }

    /// `--json`: what became of one file.
    fn json(&self, file: &Path, out: &Path, result: Result<&Signed, &anyhow::Error>) -> Value {
        let out_name = if self.raw { "signature_file" } else { "bundle" };
        let mut v = match result {
            Ok(s) => json!({
                "file": file, out_name: out, "ok": true, "key": self.key, "alg": s.alg,
                "digest": hex::encode(&s.digest), "hash": self.hash,
            }),
            Err(e) => json!({
                "file": file, out_name: out, "ok": false, "error": format!("{e:#}"),
            }),
        };
        if let (false, Ok(s)) = (self.raw, result) {
            v["log_index"] = json!(s.logged.map(|l| l.0));
            v["integrated_time"] = json!(s.logged.map(|l| l.1));
            v["services"] = json!({
                "rekor": self.services.rekor_urls,
                "rekor_version": (!self.services.rekor_urls.is_empty())
                    .then_some(self.services.rekor_version),
                "tsa": self.services.tsa_urls,
                "sigstore_defaults": self.defaults_from,
            });
        }
        v
    }
}
