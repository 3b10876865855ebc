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

use super::services::{self, Services};
use super::Ctx;
use crate::sigstore::Bundle;
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
    // the config's [sigstore] defaults apply to neither --raw nor --digest.
    let (flags, defaults_from) = ctx.sigstore_services(
        args.services.flags(),
        args.services.no_sigstore_defaults || args.raw || args.digest.is_some(),
        "sign",
    )?;
    let services = Services::prepare(&flags, ctx.json)?;
    let mut client = ctx.connect()?;
    let pk = client.public_key(&args.key)?;
    let hash = args.hash.unwrap_or_else(|| pk.alg.default_hash());
    if !args.raw {
        // Before anything is signed: a key or hash a log refuses costs no signature.
        services.check_key(&args.key, pk.alg, &pk.spki_der.0, Some(hash), false)?;
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
            Some((index, _)) if job.services.logs() > 1 => format!(
                "; logged in Rekor at index {index} and in {} more logs",
                job.services.logs() - 1
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

/// What every file of one invocation is signed with, and where its output goes.
struct Job<'a> {
    key: &'a str,
    hash: HashAlg,
    padding: Option<RsaPadding>,
    raw: bool,
    /// `--out` (with `--raw`) or `--bundle`: one file only.
    out: &'a Option<PathBuf>,
    spki: &'a [u8],
    /// The logs and TSAs each bundle gets entries and timestamps from.
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
        let what = services::Signed::Message {
            hash: self.hash,
            digest: &digest,
        };
        let logged = self.services.attach(
            &mut bundle.verification_material,
            what,
            signature,
            self.spki,
        )?;
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
            let mut services = self.services.describe();
            services["sigstore_defaults"] = json!(self.defaults_from);
            v["services"] = services;
        }
        v
    }
}
