//! The x509-tbs judge against the attack it exists for: a key allowed to issue leaf
//! certificates only (`x509_issue = ["leaf"]`) is asked to sign TBSCertificates that a
//! lenient reader takes for a leaf but OpenSSL reads as a CA certificate.
//!
//! Python's `cryptography` builds each trick (mostly with `x509.UnrecognizedExtension`,
//! the rest spliced into its DER) and a whole certificate of it, signed by a throwaway
//! root; a real agent on SoftHSM2 must refuse every one and log the refusal in its audit
//! log; and OpenSSL must read that very certificate as a CA (`CA:TRUE`, `Certificate
//! Sign`, `SSL CA`), and where it goes that far, verify a leaf issued under it. So the
//! agent refuses exactly what OpenSSL would trust as a CA. A proper leaf is signed,
//! and `x509_eku` holds a key to the purposes it lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use pkcs11_tests::{pkcs11_device, require, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, KeyAlg};

/// May issue leaf certificates only.
const LEAVES: &str = "hsm/leaves";
/// May issue leaf certificates for code signing only.
const CODESIGN: &str = "hsm/codesign";

/// Writes, into the directory `argv[1]`: `root.pem`, a throwaway CA; for each trick and
/// for the proper leaves, `NAME.tbs.der` (the TBSCertificate the agent is asked to
/// sign), `NAME.pem` (the same TBSCertificate signed by the root, as the agent would
/// have) and `NAME.leaf.pem` (a leaf issued by NAME's own key).
const TRICKS_PY: &str = r#"
import base64, datetime, os, sys, textwrap
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

out = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(minutes=5)
later = now + datetime.timedelta(days=30)
name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
new_key = lambda: ec.generate_private_key(ec.SECP256R1())
U = lambda oid, value: x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)

def tlv(tag, content):
    n = len(content)
    head = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + head + content

def children(der):
    """The TLVs inside one DER TLV."""
    n, i = der[1], 2
    if n & 0x80:
        i += n & 0x7f
    body, kids = der[i:], []
    while body:
        l, h = body[1], 2
        if l & 0x80:
            h += l & 0x7f
            l = int.from_bytes(body[2:h], "big")
        kids.append(body[:h + l])
        body = body[h + l:]
    return kids

def raw_ext(oid_hex, value, critical=b""):
    """One extension, its parts written as given (`oid_hex`: the OID's contents)."""
    return tlv(0x30, tlv(0x06, bytes.fromhex(oid_hex)) + critical + tlv(0x04, value))

def with_raw_exts(tbs, exts):
    """`tbs` (built without extensions) with `exts` as its extensions [3]."""
    return tlv(0x30, b"".join(children(tbs)) + tlv(0xa3, tlv(0x30, b"".join(exts))))

def pem(der):
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64)) + "\n-----END CERTIFICATE-----\n"

def write(path, data):
    with open(os.path.join(out, path), "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)

root_key = new_key()
root = (x509.CertificateBuilder().subject_name(name("root")).issuer_name(name("root"))
        .public_key(root_key.public_key()).serial_number(1).not_valid_before(now).not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(root_key, hashes.SHA256()))
write("root.pem", root.public_bytes(serialization.Encoding.PEM).decode())

def base(subject, key, issuer="root"):
    return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(later))

def leaf_under(subject, key):
    c = base("issued-by-" + subject, new_key(), issuer=subject).sign(key, hashes.SHA256())
    return c.public_bytes(serialization.Encoding.PEM).decode()

def emit(subject, key, tbs, cert_der):
    write(subject + ".tbs.der", tbs)
    write(subject + ".pem", pem(cert_der))
    write(subject + ".leaf.pem", leaf_under(subject, key))

def built(subject, exts):
    key = new_key()
    b = base(subject, key)
    for ext, critical in exts:
        b = b.add_extension(ext, critical=critical)
    c = b.sign(root_key, hashes.SHA256())
    emit(subject, key, c.tbs_certificate_bytes, c.public_bytes(serialization.Encoding.DER))

def spliced(subject, exts):
    key = new_key()
    tbs = with_raw_exts(base(subject, key).sign(root_key, hashes.SHA256()).tbs_certificate_bytes, exts)
    sig = root_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    alg = tlv(0x30, tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    emit(subject, key, tbs, tlv(0x30, tbs + alg + tlv(0x03, b"\x00" + sig)))

BC, BC_OID = "2.5.29.19", "551d13"
CRITICAL, FALSE = bytes.fromhex("0101ff"), bytes.fromhex("010100")
h = bytes.fromhex
ku = lambda cert_sign: x509.KeyUsage(True, False, False, False, False, cert_sign, False, False, False)
eku = lambda *p: x509.ExtendedKeyUsage(list(p))

# basicConstraints CA:TRUE, honestly encoded.
built("bc-ca-true", [(x509.BasicConstraints(ca=True, path_length=None), True)])
# ... in BER: an indefinite length, not critical (the issue's own example).
built("bc-indefinite", [(U(BC, h("3080" "0101ff" "0000")), False)])
# ... with a long-form length for 3 bytes.
built("bc-long-length", [(U(BC, h("308103" "0101ff")), False)])
# ... with cA written as BOOLEAN 01 (DER says FF).
built("bc-ber-true", [(U(BC, h("3003" "010101")), True)])
# ... with the extension's critical FALSE written out.
spliced("bc-explicit-false", [raw_ext(BC_OID, h("3003" "0101ff"), FALSE)])
# Two basicConstraints: CA:FALSE, then CA:TRUE.
spliced("bc-duplicate", [raw_ext(BC_OID, h("3000"), CRITICAL), raw_ext(BC_OID, h("3003" "0101ff"), CRITICAL)])
# keyCertSign and no basicConstraints.
built("keycertsign-no-bc", [(ku(True), True)])
# Netscape certificate type "SSL CA" and nothing else.
built("netscape-ssl-ca", [(U("2.16.840.1.113730.1.1", h("03020204")), False)])

# Proper leaves, as Fulcio issues them (and one for TLS servers).
for subject, purpose in [("proper-leaf", ExtendedKeyUsageOID.CODE_SIGNING), ("proper-server", ExtendedKeyUsageOID.SERVER_AUTH)]:
    issuer = "https://accounts.example.org".encode()
    built(subject, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (ku(False), True),
        (eku(purpose), False),
        (x509.SubjectAlternativeName([x509.RFC822Name("dev@example.org")]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False),
        (U("1.3.6.1.4.1.57264.1.1", issuer), False),
        (U("1.3.6.1.4.1.57264.1.8", tlv(0x0c, issuer)), False),
    ])
"#;

/// How far OpenSSL goes in trusting a trick as a CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// `openssl verify` accepts a leaf it issued, under the root that issued it.
    ChainThroughRoot,
    /// `openssl verify -partial_chain` accepts a leaf it issued when it is the trust
    /// anchor (OpenSSL's X509_check_ca says CA, but not strongly enough for an
    /// intermediate).
    AsTrustAnchor,
    /// Only `openssl x509 -text` shows the CA bit: OpenSSL 3 flags duplicate extensions
    /// as invalid when it verifies.
    DisplayOnly,
}

/// One trick: its name in [`TRICKS_PY`], what the agent's refusal says (its code and a
/// part of the message), what `openssl x509 -text` shows and how far OpenSSL trusts it.
struct Trick {
    name: &'static str,
    code: ErrorCode,
    refusal: &'static [&'static str],
    openssl_text: &'static str,
    trust: Trust,
}

const TRICKS: &[Trick] = &[
    Trick {
        name: "bc-ca-true",
        code: ErrorCode::PolicyDenied,
        refusal: &["basicConstraints CA:TRUE", "x509_issue = [\"leaf\"]"],
        openssl_text: "CA:TRUE",
        trust: Trust::ChainThroughRoot,
    },
    Trick {
        name: "bc-indefinite",
        code: ErrorCode::BadRequest,
        refusal: &["basicConstraints (2.5.29.19)", "indefinite length"],
        openssl_text: "CA:TRUE",
        trust: Trust::ChainThroughRoot,
    },
    Trick {
        name: "bc-long-length",
        code: ErrorCode::BadRequest,
        refusal: &["basicConstraints (2.5.29.19)", "long-form length"],
        openssl_text: "CA:TRUE",
        trust: Trust::ChainThroughRoot,
    },
    Trick {
        name: "bc-ber-true",
        code: ErrorCode::BadRequest,
        refusal: &["basicConstraints (2.5.29.19)", "BOOLEAN"],
        openssl_text: "CA:TRUE",
        trust: Trust::ChainThroughRoot,
    },
    Trick {
        name: "bc-explicit-false",
        code: ErrorCode::BadRequest,
        refusal: &[
            "basicConstraints (2.5.29.19)",
            "critical FALSE is written out",
        ],
        openssl_text: "CA:TRUE",
        trust: Trust::ChainThroughRoot,
    },
    Trick {
        name: "bc-duplicate",
        code: ErrorCode::BadRequest,
        refusal: &["basicConstraints (2.5.29.19)", "appears twice"],
        openssl_text: "CA:TRUE",
        trust: Trust::DisplayOnly,
    },
    Trick {
        name: "keycertsign-no-bc",
        code: ErrorCode::PolicyDenied,
        refusal: &["keyUsage keyCertSign", "x509_issue = [\"leaf\"]"],
        openssl_text: "Certificate Sign",
        trust: Trust::AsTrustAnchor,
    },
    Trick {
        name: "netscape-ssl-ca",
        code: ErrorCode::BadRequest,
        refusal: &["Netscape certificate type (2.16.840.1.113730.1.1)"],
        openssl_text: "SSL CA",
        trust: Trust::AsTrustAnchor,
    },
];

/// A token with the two leaf-only keys (P-256).
fn judge_agent() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("x509", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let config = format!(
        "{}\n[[key]]\nname = \"{LEAVES}\"\npurposes = [\"x509-tbs\"]\nx509_issue = [\"leaf\"]\n\n[[key]]\nname = \"{CODESIGN}\"\npurposes = [\"x509-tbs\"]\nx509_issue = [\"leaf\"]\nx509_eku = [\"codeSigning\"]\n",
        pkcs11_device("hsm", "x509", &pin)
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key(LEAVES, KeyAlg::P256).unwrap();
    client.generate_key(CODESIGN, KeyAlg::P256).unwrap();
    (hsm, agent)
}

/// Runs [`TRICKS_PY`] into `dir`; fails naming scripts/install-deps without python3 and
/// its `cryptography` module.
fn make_tricks(dir: &Path) {
    require("python3");
    let probe = Command::new("python3")
        .args(["-c", "import cryptography.x509"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "python3 cannot import cryptography (Debian: python3-cryptography): run scripts/install-deps\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let mut child = Command::new("python3")
        .arg("-")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), TRICKS_PY.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the trick generator failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    require("openssl");
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The audit log's records, oldest first.
fn audit_records(agent: &Agent) -> Vec<Value> {
    let text = waxseal_agent::audit_chain::read_records(&agent.state_dir.join("audit/audit.jsonl"))
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The records about the TBSCertificate `tbs`.
fn records_of(agent: &Agent, tbs: &[u8]) -> Vec<Value> {
    let sha = hex::encode(Sha256::digest(tbs));
    audit_records(agent)
        .into_iter()
        .filter(|r| r["tbs_sha256"] == sha.as_str())
        .collect()
}

#[test]
fn a_leaf_only_key_refuses_every_certificate_openssl_reads_as_a_ca() {
    let (_hsm, agent) = judge_agent();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_tricks(dir);
    let mut client = agent.client();

    for trick in TRICKS {
        let name = trick.name;
        let tbs = std::fs::read(dir.join(format!("{name}.tbs.der"))).unwrap();

        // The agent refuses, naming why.
        match client.sign_tbs(LEAVES, &tbs) {
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.code, trick.code, "{name}: {e}");
                for want in trick.refusal {
                    assert!(e.message.contains(want), "{name}: {want:?} not in: {e}");
                }
            }
            other => panic!(
                "{name}: a leaf-only key signed a certificate OpenSSL reads as a CA: {other:?}"
            ),
        }

        // The refusal is in the audit log, and nothing was signed.
        let records = records_of(&agent, &tbs);
        assert_eq!(records.len(), 1, "{name}: {records:?}");
        assert_eq!(records[0]["event"], "refused", "{name}: {records:?}");
        assert_eq!(records[0]["key"], LEAVES);
        assert_eq!(records[0]["purpose"], "x509-tbs");
        assert_eq!(records[0]["code"], trick.code.to_string(), "{name}");

        // OpenSSL reads the very same TBSCertificate, signed, as a CA certificate.
        let cert = format!("{name}.pem");
        let (ok, text) = openssl(dir, &["x509", "-in", &cert, "-noout", "-text"]);
        assert!(ok, "{name}: {text}");
        assert!(
            text.contains(trick.openssl_text),
            "{name}: OpenSSL does not show {:?}:\n{text}",
            trick.openssl_text
        );
        let leaf = format!("{name}.leaf.pem");
        match trick.trust {
            Trust::ChainThroughRoot => {
                let (ok, out) = openssl(
                    dir,
                    &["verify", "-CAfile", "root.pem", "-untrusted", &cert, &leaf],
                );
                assert!(ok && out.contains(": OK"), "{name}: {out}");
            }
            Trust::AsTrustAnchor => {
                let (ok, out) =
                    openssl(dir, &["verify", "-partial_chain", "-CAfile", &cert, &leaf]);
                assert!(ok && out.contains(": OK"), "{name}: {out}");
            }
            Trust::DisplayOnly => {}
        }
    }

    // The control: OpenSSL does not let a proper leaf issue, even as a trust anchor, so
    // the verifications above are OpenSSL reading a CA and nothing laxer.
    let (ok, out) = openssl(
        dir,
        &[
            "verify",
            "-partial_chain",
            "-CAfile",
            "proper-leaf.pem",
            "proper-leaf.leaf.pem",
        ],
    );
    assert!(!ok && out.contains("invalid CA certificate"), "{out}");
    let (_, text) = openssl(dir, &["x509", "-in", "proper-leaf.pem", "-noout", "-text"]);
    assert!(
        text.contains("CA:FALSE") && !text.contains("Certificate Sign"),
        "{text}"
    );

    // The connection is still usable, and the agent signs a proper leaf, Fulcio's
    // Sigstore extensions and all.
    let tbs = std::fs::read(dir.join("proper-leaf.tbs.der")).unwrap();
    let signed = client.sign_tbs(LEAVES, &tbs).unwrap();
    let spki = client.public_key(LEAVES).unwrap().spki_der.0;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
    let sig = p256::ecdsa::Signature::from_der(&signed.signature.0).unwrap();
    key.verify(&tbs, &sig)
        .expect("the signature verifies over the TBSCertificate");
    let records = records_of(&agent, &tbs);
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["intent", "signed"], "{records:?}");
    assert_eq!(records[0]["certificate"]["ca"], "false", "{records:?}");
    assert_eq!(
        records[0]["certificate"]["eku"][0], "codeSigning",
        "{records:?}"
    );
}

#[test]
fn x509_eku_holds_a_key_to_its_purposes() {
    let (_hsm, agent) = judge_agent();
    let tmp = tempfile::tempdir().unwrap();
    make_tricks(tmp.path());
    let mut client = agent.client();
    let code_signing = std::fs::read(tmp.path().join("proper-leaf.tbs.der")).unwrap();
    let server = std::fs::read(tmp.path().join("proper-server.tbs.der")).unwrap();

    client.sign_tbs(CODESIGN, &code_signing).unwrap();
    // The key without x509_eku signs the server certificate; the other refuses it.
    client.sign_tbs(LEAVES, &server).unwrap();
    match client.sign_tbs(CODESIGN, &server) {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.code, ErrorCode::PolicyDenied, "{e}");
            assert!(
                e.message.contains("serverAuth")
                    && e.message.contains("x509_eku = [\"codeSigning\"]"),
                "{e}"
            );
        }
        other => panic!("a codeSigning key signed a serverAuth certificate: {other:?}"),
    }
    let refused: Vec<Value> = records_of(&agent, &server)
        .into_iter()
        .filter(|r| r["key"] == CODESIGN)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["event"], "refused");
    assert_eq!(refused[0]["certificate"]["eku"][0], "serverAuth");
}
