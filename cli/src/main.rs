//! `waxseal`: the command line of waxseal. Talks to `waxseal-agent` over `agent.sock`.
//!
//! Exit status: 0 success, 1 a refused or failed operation (stderr says why and what to
//! do), 2 a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `print!` that ends the program quietly when stdout is closed (`waxseal keys list | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// `println!` with the same care as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

mod commands;
use waxseal::defaults;
use waxseal::signing_config;
use waxseal::sigstore;
use waxseal::sshfmt;
use waxseal::tsa;
use waxseal::verify;
use waxseal::verify_sigstore;

use waxseal_proto::proto::{HashAlg, KeyAlg, PcrSelection, PinPolicy, TouchPolicy};

/// Sign with keys that stay inside hardware (PKCS#11 tokens, TPMs, YubiKeys).
#[derive(Debug, Parser)]
#[command(
    name = "waxseal",
    version,
    about,
    propagate_version = true,
    after_long_help = "Exit status: 0 success, 1 a refused or failed operation (stderr says why and \
                       what to do), 2 a usage error.\n\n\
                       Environment: WAXSEAL_SOCK (the agent's socket), XDG_RUNTIME_DIR, \
                       XDG_STATE_HOME, XDG_CONFIG_HOME (the config file).\n\n\
                       See also: waxseal-agent(1), and README.md and docs/ in the source."
)]
pub struct Cli {
    /// The agent's socket (default: $XDG_RUNTIME_DIR/waxseal/agent.sock).
    #[arg(long, global = true, env = "WAXSEAL_SOCK", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// The config file whose [sigstore] table gives `sign` its default Sigstore
    /// services and trust files (default: $XDG_CONFIG_HOME/waxseal/config.toml, the
    /// agent's; only that table is read).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agent version, devices (present or absent) and key count.
    Status,
    /// List, generate and export keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign files (each gets a Sigstore bundle, FILE.sigstore.json) or a digest (signature on stdout).
    Sign(SignArgs),
    /// Verify a file's Sigstore bundle (or bare signature) with an agent key or a PEM public key.
    Verify(VerifyArgs),
    /// Sign an in-toto attestation about files: a Sigstore bundle holding a DSSE envelope.
    Attest(AttestArgs),
    /// The embedded default: a SoftHSM2 token, an agent, a key, a signature, verified.
    Demo(DemoArgs),
    /// SSH: the keys offered on ssh.sock.
    #[command(subcommand)]
    Ssh(SshCommand),
    /// A Fulcio CA on agent keys: the root and intermediate certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The audit log: check its hash chain, or show its last records.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Approve a request waiting for a quorum: hand in your SSH signature over the
    /// text `waxseal approvals show ID` prints (ssh-keygen -Y sign -n waxseal-approval).
    Approve {
        /// The request's id (`waxseal approvals list`).
        id: String,
        /// The armored SSH signature file (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        signature: PathBuf,
    },
    /// Requests waiting for approvals: list them, or show the exact text to sign.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// The Sigstore trusted root verification uses by default: show it, or refresh it over
    /// TUF (default repository: the public-good instance's, tuf-repo-cdn.sigstore.dev).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Drop every cached PIN and refuse signing until `waxseal unlock`.
    Lock,
    /// End `waxseal lock`; or, with DEVICE, let the agent try that device's PIN once
    /// more (YubiKey: below the retry floor, or after a refused PIN), right away.
    Unlock {
        /// The device name from the config, e.g. yk.
        device: Option<String>,
    },
    /// Shell completions on stdout (scripts/install puts them where the shell finds them).
    Completions {
        /// bash, zsh or fish.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Write the manual pages, waxseal.1 and one per subcommand (waxseal-keys-list.1, …),
    /// into DIR (scripts/install puts them in PREFIX/share/man/man1).
    Man {
        /// The directory; created if missing.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Fetch the repository's trusted_root.json (and signing_config.v0.2.json) over TUF,
    /// checking signatures, expiry and rollback; it becomes the default trusted root.
    Update {
        /// The TUF repository (metadata at URL/, targets at URL/targets/).
        #[arg(long, value_name = "URL", default_value = waxseal::trustroot::DEFAULT_REPOSITORY)]
        repository: String,
        /// The repository's TUF root.json, obtained out of band, for its first update
        /// (later updates start from the root stored by the last one; the default
        /// repository's ships with waxseal).
        #[arg(long, value_name = "FILE")]
        root: Option<PathBuf>,
    },
    /// Print the default trusted root (JSON); with --json, where it comes from and its digest.
    Show,
}

#[derive(Debug, Subcommand)]
enum ApprovalsCommand {
    /// The waiting requests: id, key, who has approved, expiry, requester.
    List,
    /// Exactly the text approvers sign (no added newline), so that
    /// `waxseal approvals show ID > req.txt; ssh-keygen -Y sign -f KEY -n waxseal-approval req.txt` works.
    Show {
        /// The request's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; names the first broken or missing record.
    Verify {
        /// Audit files in chain order (default: every file in --dir).
        files: Vec<PathBuf>,
        /// The audit directory (default: $XDG_STATE_HOME/waxseal/audit).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The last records, from the agent.
    Tail {
        /// How many.
        #[arg(short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        n: u32,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// A self-signed root certificate (Fulcio's root profile) for an agent key.
    Root {
        /// The root key, DEVICE/LABEL; its [[key]] entry must allow purpose x509-tbs.
        #[arg(long)]
        key: String,
        /// Subject common name.
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        cn: Option<String>,
        /// Subject organization.
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        org: Option<String>,
        /// Validity in days, from now (default 3650).
        #[arg(long, conflicts_with = "template", value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
        /// A Fulcio certificate-maker JSON template giving the subject, validity
        /// (certLife) and extensions (README.md, "Templates"); refuses --cn/--org/--days.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Where the PEM certificate goes; an existing file is never replaced.
        #[arg(long, default_value = "root.pem")]
        out: PathBuf,
        /// Also store the certificate on the key's PKCS#11 token as `fulcio createca`
        /// does (CKA_ID = ID, label PKCS11CA), for Fulcio's pkcs11ca.
        #[arg(long, value_name = "ID")]
        pkcs11_store: Option<String>,
        /// A ceremony transcript (README.md, "Ceremony transcripts").
        #[command(flatten)]
        record: commands::TranscriptArgs,
    },
    /// An intermediate certificate signed by the root key, and the chain file for
    /// Fulcio's --kms-cert-chain-path (intermediate first, root last).
    Intermediate {
        /// The intermediate's key, DEVICE/LABEL.
        #[arg(long, conflicts_with = "csr", required_unless_present = "csr")]
        key: Option<String>,
        /// Certify the key of this PKCS#10 request (PEM or DER) instead; its signature
        /// is checked first.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// The root key, DEVICE/LABEL.
        #[arg(long)]
        root_key: String,
        /// The root certificate (from `waxseal ca root`).
        #[arg(long, value_name = "PEMFILE")]
        root_cert: PathBuf,
        /// Subject common name.
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        cn: Option<String>,
        /// Subject organization.
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        org: Option<String>,
        /// Validity in days, from now (default 1825); clipped to the root's.
        #[arg(long, conflicts_with = "template", value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
        /// A Fulcio certificate-maker JSON template giving the subject, validity
        /// (certLife, clipped to the root's) and extensions (README.md, "Templates");
        /// refuses --cn/--org/--days.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Where the PEM chain goes; an existing file is never replaced.
        #[arg(long, default_value = "chain.pem")]
        out: PathBuf,
        /// A ceremony transcript (README.md, "Ceremony transcripts").
        #[command(flatten)]
        record: commands::TranscriptArgs,
    },
    /// A timestamping certificate (RFC 3161 TSA signer, as sigstore/timestamp-authority
    /// requires: end entity, keyUsage digitalSignature, only a critical timeStamping
    /// extended key usage) issued by an agent CA key, and the TSA's chain file.
    Tsa {
        /// The TSA's key, DEVICE/LABEL.
        #[arg(
            long,
            conflicts_with = "public_key",
            required_unless_present = "public_key"
        )]
        key: Option<String>,
        /// Certify this public key (PEM `PUBLIC KEY` or DER SubjectPublicKeyInfo)
        /// instead: a TSA whose key lives elsewhere.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// The issuing CA's key, DEVICE/LABEL (a root or an intermediate).
        #[arg(long)]
        issuer_key: String,
        /// The issuer's chain: its certificate first, its root last (`ca root`'s or `ca
        /// intermediate`'s output).
        #[arg(long, value_name = "PEMFILE")]
        issuer_chain: PathBuf,
        /// Subject common name.
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        cn: Option<String>,
        /// Subject organization.
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        org: Option<String>,
        /// Validity in days, from now (default 365); clipped to the issuer's.
        #[arg(long, conflicts_with = "template", value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: Option<u32>,
        /// A Fulcio certificate-maker leaf template (keyUsage digitalSignature,
        /// extKeyUsage TimeStamping) giving the subject and validity (README.md,
        /// "Templates"); refuses --cn/--org/--days.
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// Where the PEM chain goes (TSA certificate, then the issuer's chain); an
        /// existing file is never replaced.
        #[arg(long, default_value = "tsa-chain.pem")]
        out: PathBuf,
        /// A ceremony transcript (README.md, "Ceremony transcripts").
        #[command(flatten)]
        record: commands::TranscriptArgs,
    },
    /// A certificate revocation list signed by an agent CA key (purpose x509-crl),
    /// revoking the certificates given (e.g. an intermediate that must go).
    Crl {
        /// The CA key, DEVICE/LABEL; its [[key]] entry must allow purpose x509-crl.
        #[arg(long)]
        key: String,
        /// The CA's certificate (PEM; the first certificate of the file).
        #[arg(long, value_name = "PEMFILE")]
        issuer_cert: PathBuf,
        /// A certificate to revoke (PEM; the first certificate of the file, e.g. `ca
        /// intermediate`'s chain); repeat for more. None: an empty CRL.
        #[arg(long, value_name = "PEMFILE")]
        revoke: Vec<PathBuf>,
        /// The revocation reason: unspecified, keyCompromise, caCompromise,
        /// affiliationChanged, superseded, cessationOfOperation.
        #[arg(long, default_value = "superseded")]
        reason: String,
        /// The CRL number; default: the current Unix time, so that each CRL's is larger.
        #[arg(long)]
        crl_number: Option<u64>,
        /// Days until nextUpdate.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Where the PEM CRL goes; an existing file is never replaced.
        #[arg(long, default_value = "crl.pem")]
        out: PathBuf,
        /// A ceremony transcript (README.md, "Ceremony transcripts").
        #[command(flatten)]
        record: commands::TranscriptArgs,
    },
    /// Ceremony transcripts (`--transcript DIR` of root, intermediate, tsa, crl).
    #[command(subcommand)]
    Transcript(TranscriptCommand),
    /// A Sigstore TrustedRoot v0.2 (JSON) for the clients of a private deployment:
    /// the CA chain, the Rekor log's key, optionally a CT log's key, and the TSA's
    /// chain, each with its validity window.
    TrustedRoot {
        /// The Fulcio chain (`ca intermediate`'s output: intermediate first, root last);
        /// repeat for each intermediate while they overlap (README.md, "Intermediate
        /// rotation").
        #[arg(long, value_name = "PEMFILE")]
        ca_chain: Vec<PathBuf>,
        /// The CA's URL (Fulcio).
        #[arg(long, value_name = "URL", requires = "ca_chain")]
        ca_url: Option<String>,
        /// The Rekor log's URL.
        #[arg(long, value_name = "URL", requires = "rekor_key")]
        rekor_url: Option<String>,
        /// The Rekor log's public key (PEM).
        #[arg(long, value_name = "PEMFILE", requires = "rekor_url")]
        rekor_key: Option<PathBuf>,
        /// A CT log's URL.
        #[arg(long, value_name = "URL", requires = "ctlog_key")]
        ctlog_url: Option<String>,
        /// The CT log's public key (PEM).
        #[arg(long, value_name = "PEMFILE", requires = "ctlog_url")]
        ctlog_key: Option<PathBuf>,
        /// Since when the logs' keys are valid (RFC 3339); default: now.
        #[arg(long, value_name = "TIME")]
        logs_valid_from: Option<String>,
        /// The TSA's chain (`ca tsa`'s output: TSA certificate first, root last).
        #[arg(long, value_name = "PEMFILE")]
        tsa_chain: Option<PathBuf>,
        /// The TSA's URL.
        #[arg(long, value_name = "URL", requires = "tsa_chain")]
        tsa_url: Option<String>,
        /// Where the JSON goes; an existing file is never replaced.
        #[arg(short = 'o', long, default_value = "trusted_root.json")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TranscriptCommand {
    /// Check a ceremony transcript offline: the witness's signature over MANIFEST,
    /// every file's SHA-256, no file missing or extra, the audit records' chain links,
    /// the `signed` record naming tbs.der, the result's TBS and signature, approvals.
    Verify {
        /// The transcript directory.
        dir: PathBuf,
        /// The witness's public key (PEM) you trust; without it the transcript's own
        /// witness.pub.pem is used, which proves integrity, not who witnessed.
        #[arg(long, value_name = "PEMFILE")]
        witness_public_key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SshCommand {
    /// authorized_keys lines for every key whose policy allows `ssh`.
    Keys,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// NAME DEVICE ALG PURPOSES of every key.
    List {
        /// Add each key's RFC 7512 URI as the PKCS#11 module shows it
        /// (pkcs11:token=DEVICE;object=LABEL;type=private).
        #[arg(long)]
        uri: bool,
    },
    /// Generate a key on its device (the private key never leaves it).
    Generate {
        /// DEVICE/LABEL, e.g. hsm/release.
        name: String,
        /// Algorithm.
        #[arg(long, value_parser = parse_alg)]
        alg: KeyAlg,
        /// YubiKey: when the key wants a touch to sign (never, always, cached).
        #[arg(long, value_parser = parse_touch)]
        touch: Option<TouchPolicy>,
        /// YubiKey: when the key wants the PIN (never, once, always).
        #[arg(long, value_parser = parse_pin_policy)]
        pin_policy: Option<PinPolicy>,
        /// TPM: bind the key to these PCRs, BANK:I,J,… (e.g. sha256:0,2,4,7): it signs
        /// only while they hold the values it is bound to (their current values, or
        /// --pcr-values).
        #[arg(long, value_name = "BANK:PCRS", value_parser = parse_pcrs)]
        pcrs: Option<PcrSelection>,
        /// TPM, with --pcrs: bind to the values in FILE instead of the current ones
        /// (`BANK:INDEX=HEX` lines, or the output of tpm2_pcrread).
        #[arg(long, value_name = "FILE", requires = "pcrs")]
        pcr_values: Option<PathBuf>,
    },
    /// Attestation: the device's evidence that the key was made inside it (TPM:
    /// TPM2_Certify by the agent's attestation key). JSON on stdout, or a file in DIR.
    /// `--format tpm|step`: the ACME device-attest-01 attestation object instead
    /// (docs/key-attestation.md).
    Attest {
        /// DEVICE/LABEL.
        name: String,
        /// Write DIR/LABEL.FORMAT.json (json) or DIR/LABEL.FORMAT.cbor (tpm, step)
        /// instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Qualifying data (hex, at most 32 bytes) to bind into the evidence; random if
        /// absent. For tpm: the TPM's extraData; for step: the 32-byte SHA-256 digest the
        /// key signs.
        #[arg(long, value_name = "HEX", conflicts_with = "challenge")]
        nonce: Option<String>,
        /// The ACME key authorization (token.thumbprint): its SHA-256 is the nonce.
        #[arg(long, value_name = "KEYAUTH")]
        challenge: Option<String>,
        /// json (the agent's evidence), tpm (WebAuthn TPM attestation statement) or
        /// step (step-ca's PIV format).
        #[arg(long, default_value = "json", value_parser = ["json", "tpm", "step"])]
        format: String,
        /// For tpm: PEM file with the certificate of the TPM's attestation key, then its
        /// CA chain (the statement's x5c).
        #[arg(long, value_name = "FILE")]
        ak_cert: Option<PathBuf>,
    },
    /// Bring a key made elsewhere into a device (README.md, "Importing keys"). TPM: a
    /// key wrapped for this TPM's storage root key by TPM2_Duplicate (the files
    /// `tpm2_duplicate -G null -r DUP -s SEED` and the key's `tpm2_create -u PUB`
    /// write); the plaintext key never reaches this machine. YubiKey: a PEM private key
    /// (--key), which the card takes in the clear.
    Import {
        /// DEVICE/LABEL, e.g. tpm/release or yk/9c.
        name: String,
        /// TPM: an importable TSS2 key file (`TSS2 PRIVATE KEY`, id-importablekey: what
        /// `wrap-for` and ssh-tpm-agent's remote wrapping write), or with --public and
        /// --seed the duplicate alone (TPM2B_PRIVATE, `tpm2_duplicate -r`).
        #[arg(long, value_name = "FILE", conflicts_with = "key")]
        duplicate: Option<PathBuf>,
        /// TPM: the key's public area (TPM2B_PUBLIC, `tpm2_create -u`).
        #[arg(long, value_name = "FILE", requires_all = ["duplicate", "seed"])]
        public: Option<PathBuf>,
        /// TPM: the encrypted seed (TPM2B_ENCRYPTED_SECRET, `tpm2_duplicate -s`).
        #[arg(long, value_name = "FILE", requires_all = ["duplicate", "public"])]
        seed: Option<PathBuf>,
        /// YubiKey: the private key, PEM (PKCS#8 or SEC1; P-256 or P-384).
        #[arg(long, value_name = "FILE", conflicts_with = "wrapped")]
        key: Option<PathBuf>,
        /// PKCS#11: a PKCS#8 private key wrapped under a secret key of the token
        /// (`openssl enc -id-aes256-wrap-pad`, or `C_WrapKey` on another token).
        #[arg(long, value_name = "FILE", requires_all = ["unwrapping_key", "public_key"], conflicts_with = "duplicate")]
        wrapped: Option<PathBuf>,
        /// PKCS#11: CKA_LABEL of the token's secret key that unwraps --wrapped.
        #[arg(long, value_name = "LABEL", requires = "wrapped")]
        unwrapping_key: Option<String>,
        /// PKCS#11: the unwrap mechanism.
        #[arg(long, default_value = "aes-key-wrap-pad", value_parser = ["aes-key-wrap-pad"], requires = "wrapped")]
        mechanism: String,
        /// PKCS#11: the key's public key (PEM or DER SubjectPublicKeyInfo), stored beside
        /// it once the token shows that it is the unwrapped key's.
        #[arg(long, value_name = "FILE", requires = "wrapped")]
        public_key: Option<PathBuf>,
        /// YubiKey: when the key wants a touch to sign (never, always, cached).
        #[arg(long, value_parser = parse_touch)]
        touch: Option<TouchPolicy>,
        /// YubiKey: when the key wants the PIN (never, once, always).
        #[arg(long, value_parser = parse_pin_policy)]
        pin_policy: Option<PinPolicy>,
    },
    /// Wrap a plaintext P-256, P-384, RSA 2048 or RSA 3072 key (PEM) for another
    /// machine's TPM, here, without a TPM: TPM2_Duplicate's format for that TPM's
    /// storage root key (SRK), which only that TPM can import (`waxseal keys import
    /// tpm/NAME --duplicate OUT` there). Writes an importable TSS2 key file (the form
    /// ssh-tpm-agent also reads), or with `--format tpm2-tools` OUT.pub, OUT.dpriv and
    /// OUT.seed.
    WrapFor {
        /// The target TPM's storage root key: its TPM2B_PUBLIC (`tpm2_readpublic -o`)
        /// or PEM public key (`-f pem`), read on the target (README.md, "Importing
        /// keys"). `--tpm-ek` is accepted as another name, but the key must be the SRK,
        /// not the endorsement key: a TPM imports only under a storage key.
        #[arg(long, visible_alias = "tpm-ek", value_name = "FILE")]
        tpm_srk: PathBuf,
        /// The private key, PEM (PKCS#8, SEC1 or PKCS#1).
        key: PathBuf,
        /// The output file (default: KEY without its extension, plus
        /// `.tpm-import.pem`); with `--format tpm2-tools` the prefix of the three files
        /// (default: KEY without its extension, plus `.tpmdup`).
        #[arg(short = 'o', long, value_name = "OUT")]
        out: Option<PathBuf>,
        /// `tss2`: one importable TSS2 key file (`TSS2 PRIVATE KEY`, id-importablekey);
        /// `tpm2-tools`: the three TPM2B files `tpm2_import` reads.
        #[arg(long, default_value = "tss2", value_parser = ["tss2", "tpm2-tools"])]
        format: String,
    },
    /// Print a public key.
    Pubkey {
        /// DEVICE/LABEL.
        name: String,
        /// pem (SubjectPublicKeyInfo) or ssh (authorized_keys line).
        #[arg(long, default_value = "pem", value_parser = ["pem", "ssh"])]
        format: String,
    },
}

/// The Sigstore services a bundle is logged and timestamped with: the same flags, with
/// the same meaning and checks, for `waxseal sign` and `waxseal attest`
/// (`commands::services`). Every field is optional: the config's `[sigstore]` table may
/// fill it (cli/src/defaults.rs), so what one flag needs (a Rekor URL its key, a timeout
/// a TSA) is checked after the table is applied; flags that exclude each other are
/// refused here.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// Upload the signature to this Rekor log and put the entry into the bundle (an
    /// attestation: its DSSE envelope, as a dsse entry; in Rekor v2 its PAE's
    /// hashedrekord).
    #[arg(long, value_name = "URL")]
    pub rekor_url: Option<String>,
    /// The Rekor log's public key (PEM): its answer (for v2, its checkpoint) is checked
    /// against it; with --signing-config, every chosen log's.
    #[arg(long, value_name = "PEMFILE")]
    pub rekor_public_key: Option<PathBuf>,
    /// A Sigstore TrustedRoot (JSON) instead of --rekor-public-key: each log's key is
    /// the one of its `tlogs[]` entry with the same `baseUrl`, and each timestamp must
    /// be signed by one of its `timestampAuthorities`.
    #[arg(long, value_name = "FILE", conflicts_with = "rekor_public_key")]
    pub trusted_root: Option<PathBuf>,
    /// The Rekor API: 1 (default: hashedrekord v0.0.1, or dsse v0.0.1 for attestations,
    /// with a signed entry timestamp) or 2 (hashedrekord v0.0.2, no signed time: needs
    /// --tsa-url; no Ed25519 keys).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub rekor_version: Option<u8>,
    /// Timestamp each signature with this RFC 3161 time-stamp authority and put its
    /// checked answer into the bundle.
    #[arg(long, value_name = "URL")]
    pub tsa_url: Option<String>,
    /// Seconds the TSA has to answer (default: 10).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub tsa_timeout: Option<u64>,
    /// Choose the Rekor logs and TSAs from this Sigstore SigningConfig v0.2 (JSON), as
    /// sigstore-go does: valid now, the highest API version, one per operator, then
    /// its selectors (ANY, ALL, EXACT). Each chosen log adds an entry, each TSA a
    /// timestamp.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rekor_url", "tsa_url"])]
    pub signing_config: Option<PathBuf>,
    /// Ignore the [sigstore] table of the config file: only the services and trust
    /// files given here are used.
    #[arg(long)]
    pub no_sigstore_defaults: bool,
}

impl ServiceArgs {
    /// The flags as plain values, for the config's defaults (`waxseal::defaults`).
    pub fn flags(&self) -> defaults::ServiceFlags {
        defaults::ServiceFlags {
            signing_config: self.signing_config.clone(),
            trusted_root: self.trusted_root.clone(),
            rekor_url: self.rekor_url.clone(),
            rekor_version: self.rekor_version,
            rekor_public_key: self.rekor_public_key.clone(),
            tsa_url: self.tsa_url.clone(),
            tsa_timeout: self.tsa_timeout,
        }
    }
}

/// The service flags `--raw` and `--digest` conflict with: they write no bundle.
const SERVICE_FLAGS: [&str; 4] = ["rekor_url", "tsa_url", "trusted_root", "signing_config"];

#[derive(Debug, clap::Args)]
struct SignArgs {
    /// Files to sign, each into its own bundle (FILE.sigstore.json) or, with --raw,
    /// signature (FILE.sig); many files are signed over one connection.
    #[arg(
        value_name = "FILE",
        required_unless_present = "digest",
        conflicts_with = "digest"
    )]
    files: Vec<PathBuf>,
    /// Key NAME (DEVICE/LABEL).
    #[arg(long)]
    key: String,
    /// Sign this digest (hex) instead of a file.
    #[arg(long, value_name = "HEX", conflicts_with_all = SERVICE_FLAGS)]
    digest: Option<String>,
    /// Hash algorithm of --digest (default: the key's, SHA-384 for P-384, else SHA-256).
    #[arg(long, value_parser = parse_hash)]
    hash: Option<HashAlg>,
    /// RSA keys: sign with PSS instead of PKCS#1 v1.5 (with --raw or --digest only:
    /// a Sigstore bundle cannot say its signature is PSS).
    #[arg(long)]
    pss: bool,
    /// Where the bundle goes (default: FILE.sigstore.json); one FILE only.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["raw", "digest"])]
    bundle: Option<PathBuf>,
    /// Write only the bare signature (base64 DER) to FILE.sig instead of a bundle.
    #[arg(long, conflicts_with = "digest", conflicts_with_all = SERVICE_FLAGS)]
    raw: bool,
    /// With --raw: where the signature goes (default: FILE.sig); one FILE only.
    #[arg(long, value_name = "OUT", requires = "raw")]
    out: Option<PathBuf>,
    /// Rekor, TSA, signing config, trusted root.
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Debug, clap::Args)]
struct AttestArgs {
    /// Files the attestation is about: each file's name and SHA-256 become a subject of
    /// the statement.
    #[arg(
        value_name = "SUBJECT",
        required_unless_present = "statement",
        conflicts_with = "statement"
    )]
    subjects: Vec<PathBuf>,
    /// Key NAME (DEVICE/LABEL).
    #[arg(long)]
    key: String,
    /// The predicate type, a URI (e.g. https://slsa.dev/provenance/v1).
    #[arg(
        long = "type",
        value_name = "URI",
        required_unless_present = "statement",
        conflicts_with = "statement"
    )]
    predicate_type: Option<String>,
    /// The predicate: a file holding one JSON object.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "statement",
        conflicts_with = "statement"
    )]
    predicate: Option<PathBuf>,
    /// A complete in-toto statement v1 to sign as it is, instead of --type, --predicate
    /// and SUBJECTs; its subjects must name their SHA-256.
    #[arg(long, value_name = "FILE")]
    statement: Option<PathBuf>,
    /// Where the bundle goes (default: SUBJECT.intoto.sigstore.json beside the first
    /// SUBJECT, or STATEMENT.sigstore.json beside the --statement file).
    #[arg(long, value_name = "OUT")]
    bundle: Option<PathBuf>,
    /// Rekor, TSA, signing config, trusted root: as for `waxseal sign`.
    #[command(flatten)]
    services: ServiceArgs,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The signed file, or `sha256:<64 hex>` (its digest) when no file has that name; for
    /// a DSSE bundle, one of the in-toto statement's subjects.
    #[arg(value_name = "FILE_OR_DIGEST")]
    file: PathBuf,
    /// The Sigstore bundle (default: FILE.sigstore.json, or FILE.sig when only that exists).
    #[arg(long, value_name = "BUNDLE", conflicts_with = "signature")]
    bundle: Option<PathBuf>,
    /// A bare signature file instead of a bundle, base64 or raw DER.
    #[arg(long, value_name = "SIG")]
    signature: Option<PathBuf>,
    /// Check the bundle's transparency log entries against this Rekor public key (PEM).
    #[arg(long, value_name = "PEMFILE", conflicts_with_all = ["signature", "trusted_root"])]
    rekor_public_key: Option<PathBuf>,
    /// Check the bundle's RFC 3161 timestamps against this TSA's certificates (PEM: the
    /// TSA's signing certificate, or the certificates that issued it).
    #[arg(long, value_name = "PEMFILE", conflicts_with_all = ["signature", "trusted_root"])]
    tsa_cert_chain: Option<PathBuf>,
    /// Verify with this agent key.
    #[arg(
        long,
        conflicts_with = "public_key",
        required_unless_present_any = ["public_key", "certificate_identity", "certificate_identity_regexp"]
    )]
    key: Option<String>,
    /// Verify with this PEM public key (no agent needed).
    #[arg(long, value_name = "PEMFILE")]
    public_key: Option<PathBuf>,
    /// RSA keys: the bare signature is PSS.
    #[arg(long)]
    pss: bool,
    /// Keyless bundles: the certificate's SAN (email or URI) must be exactly this.
    #[arg(long, value_name = "ID", conflicts_with_all = ["key", "public_key", "signature", "certificate_identity_regexp"])]
    certificate_identity: Option<String>,
    /// Keyless bundles: a SAN must match this regular expression (unanchored, as cosign's).
    #[arg(long, value_name = "RE", conflicts_with_all = ["key", "public_key", "signature"])]
    certificate_identity_regexp: Option<String>,
    /// Keyless bundles: the certificate's OIDC issuer must be exactly this URL.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "certificate_oidc_issuer_regexp"
    )]
    certificate_oidc_issuer: Option<String>,
    /// Keyless bundles: the OIDC issuer must match this regular expression (unanchored).
    #[arg(long, value_name = "RE")]
    certificate_oidc_issuer_regexp: Option<String>,
    /// A Sigstore TrustedRoot (JSON): every log, CT log, Fulcio CA and TSA the bundle's
    /// entries, certificate and timestamps must chain to, with their validity windows.
    /// Needed for certificate identities (default: the trusted root `waxseal trust
    /// update` keeps); with --public-key/--key it makes the transparency log required.
    #[arg(long, value_name = "FILE", conflicts_with = "signature")]
    trusted_root: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Stop the demo agent instead.
    #[arg(long)]
    stop: bool,
}

fn parse_alg(s: &str) -> Result<KeyAlg, String> {
    s.parse()
}

fn parse_hash(s: &str) -> Result<HashAlg, String> {
    s.parse()
}

fn parse_touch(s: &str) -> Result<TouchPolicy, String> {
    s.parse()
}

fn parse_pin_policy(s: &str) -> Result<PinPolicy, String> {
    s.parse()
}

fn parse_pcrs(s: &str) -> Result<PcrSelection, String> {
    PcrSelection::parse(s)
}

/// Stdout went away: a closed pipe is a normal end, anything else an error.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("waxseal: cannot write to stdout: {e}");
    std::process::exit(1);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waxseal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
