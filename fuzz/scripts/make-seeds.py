#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ and the keys under fuzz/keys/.

Needs python3 with `cryptography`. Run from anywhere: paths are relative to this file.
Keys are made afresh each run (the private halves are never written), so the bundle
seeds and fuzz/keys/ always match; re-run it and rebuild the bundle target together.
"""
import base64, hashlib, json, os, re, struct, datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

FUZZ = Path(__file__).resolve().parent.parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"
KEYS = FUZZ / "keys"


def out(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


b64 = lambda b: base64.b64encode(b).decode()
spki_der = lambda k: k.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
spki_pem = lambda k: k.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

# --- intoto_statement: in-toto statements v1, accepted and refused ---------------------
def intoto(subjects, kind="https://in-toto.io/Statement/v1"):
    return json.dumps({"_type": kind, "subject": subjects,
                       "predicateType": "https://slsa.dev/provenance/v1",
                       "predicate": {"buildDefinition": {"buildType": "make"}}}).encode()

sha = hashlib.sha256(b"release").hexdigest()
statement = intoto([{"name": "app.tgz", "digest": {"sha256": sha}},
                    {"digest": {"sha256": sha, "sha512": "00"}}])
for i, st in enumerate([
    statement,
    intoto([]),
    intoto([{"name": "a", "digest": {"sha1": "00"}}]),
    intoto([{"name": "a", "digest": {"sha256": sha}}], "https://in-toto.io/Statement/v0.1"),
]):
    out("intoto_statement", f"statement-{i:02}.json", st)

# --- native_frame and response: the golden exchanges --------------------------------
requests = [
    '{"id":0,"op":"hello","version":1}',
    '{"id":1,"op":"status"}',
    '{"id":1,"op":"list_keys"}',
    '{"id":2,"op":"public_key","key":"hsm/release"}',
    '{"id":4,"op":"generate_key","key":"hsm/git","alg":"ed25519"}',
    '{"id":4,"op":"generate_key","key":"yk/9c","alg":"p256","touch":"cached","pin_policy":"always"}',
    '{"id":3,"op":"sign","key":"hsm/release","purpose":"digest","hash":"sha256","digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}',
    '{"id":5,"op":"sign","key":"hsm/rsa","purpose":"blob","name":"release.tar.gz","hash":"sha384","padding":"pss","digest":"' + b64(bytes(48)) + '"}',
    '{"id":6,"op":"sign","key":"hsm/fulcio-root","purpose":"x509-tbs","tbs":"MAA="}',
    '{"id":7,"op":"sign","key":"hsm/release","purpose":"attest","statement":"' + b64(statement) + '"}',
    '{"id":6,"op":"attest","key":"tpm/git","nonce":"ABEiM0RVZneImaq7zN3u/w=="}',
    '{"id":7,"op":"store_certificate","key":"hsm/fulcio-root","object_id":"99","cert":"MAA="}',
    '{"id":8,"op":"unlock","device":"yk"}',
    '{"id":8,"op":"unlock"}',
    '{"id":9,"op":"lock"}',
    '{"id":10,"op":"audit_tail","n":5}',
    '{"id":9,"op":"status","future":[1,2,3]}',
    '{"id":4,"op":"sign","key":"a/b","purpose":"x509-tbs","tbs":"MAA=","digest":"AAAA"}',
    '{"id":5,"op":"format_disk"}',
    '{"id":4,"op":"generate_key","key":"hsm/fulcio","alg":"p256","raw_id":"OTk="}',
    '{"id":7,"op":"store_certificate","key":"hsm/fulcio-root","raw_id":"AP8=","label":"root","cert":"MAA="}',
    '{"id":7,"op":"store_certificate","key":"hsm/fulcio-root","object_id":"99","raw_id":"OTk=","cert":"MAA="}',
]
for i, r in enumerate(requests):
    out("native_frame", f"req-{i:02}.json", r)
    out("native_frame", f"req-{i:02}.frame", frame(r.encode()))
out("native_frame", "two-frames", frame(requests[0].encode()) + frame(requests[1].encode()))
out("native_frame", "too-large", struct.pack(">I", (1 << 20) + 1))
out("native_frame", "empty-frame", struct.pack(">I", 0))

responses = [
    '{"id":0,"ok":{"version":1,"agent":"waxseal-agent 0.1.0"}}',
    '{"id":1,"ok":{"agent":"waxseal-agent 0.1.0","version":1,"devices":[{"name":"hsm","kind":"pkcs11","present":true,"keys":2,"detail":"SoftHSM"},{"name":"tpm","kind":"tpm","present":false,"keys":0,"error":"absent"}],"keys":2}}',
    '{"id":1,"ok":{"keys":[{"name":"hsm/release","device":"hsm","alg":"p256","purposes":["digest","blob","ssh"],"uri":"pkcs11:token=waxseal;object=release"}]}}',
    '{"id":2,"ok":{"spki_der":"MAA=","pem":"-----BEGIN PUBLIC KEY-----\\n-----END PUBLIC KEY-----\\n","alg":"p384"}}',
    '{"id":4,"ok":{"key":{"name":"hsm/git","device":"hsm","alg":"ed25519","purposes":["ssh"]},"spki_der":"MAA=","pem":"x"}}',
    '{"id":4,"error":{"code":"key-exists","message":"device hsm already has a key labelled \'git\'; choose another name"}}',
    '{"id":6,"ok":{"key":"tpm/git","format":"tpm2-certify","evidence":{"nonce":"ABEiM0RVZneImaq7zN3u/w==","n":1.5e300}}}',
    '{"id":3,"ok":{"signature":"MEUCIQ==","alg":"ecdsa-p256-sha256"}}',
    '{"id":3,"error":{"code":"policy-denied","message":"no"}}',
    '{"id":8,"ok":{"device":"yk","locked":false,"message":"PIN verified; 3 tries left"}}',
    '{"id":7,"ok":{"key":"hsm/fulcio-root","object_id":"99","label":"PKCS11CA"}}',
    '{"id":10,"ok":{"records":[{"seq":1,"prev":"00"},{"seq":2}]}}',
    '{"id":1,"ok":{"keys":[{"name":"hsm/ca","device":"hsm","alg":"p384","purposes":["x509-tbs"],"uri":"pkcs11:token=ca;object=ca;id=%39%39","id":"OTk="}]}}',
    '{"id":2,"ok":{"spki_der":"MAA=","pem":"x","alg":"p384","certificate":"MAA=","certificate_id":"OTk=","certificate_label":"PKCS11CA"}}',
    '{"id":7,"ok":{"key":"hsm/fulcio-root","object_id":"00ff","label":"root"}}',
    '{"id":null,"error":{"code":"frame-too-large","message":"big"}}',
    '{"id":3,"notice":"touch your YubiKey"}',
    '{"id":3,"prompt":"PIN for hsm"}',
]
for i, r in enumerate(responses):
    out("response", f"resp-{i:02}.json", r)

# The exchanges of docs/protocol.md, as written (placeholders and all).
doc = (ROOT / "docs/protocol.md").read_text()
n = 0
for m in re.finditer(r"^[→←] (\{.*?)(?=^\S|^$)", doc, re.S | re.M):
    text = m.group(1).strip()
    target = "native_frame" if m.group(0).startswith("→") else "response"
    out(target, f"doc-{n:02}.json", text)
    n += 1

# --- tbs: certificates and their TBSCertificates ------------------------------------
now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org")])

p384 = ec.generate_private_key(ec.SECP384R1())
p256 = ec.generate_private_key(ec.SECP256R1())
rsa2k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
edk = ed25519.Ed25519PrivateKey.generate()
certs = {}
b = (x509.CertificateBuilder().subject_name(name("sigstore")).issuer_name(name("sigstore"))
     .public_key(p384.public_key()).serial_number(0x1234567890abcdef)
     .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
     .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True))
certs["root-p384"] = b.sign(p384, hashes.SHA384())
b = (x509.CertificateBuilder().subject_name(name("leaf")).issuer_name(name("sigstore-intermediate"))
     .public_key(p256.public_key()).serial_number(x509.random_serial_number())
     .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
     .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING, x509.ObjectIdentifier("1.2.3.4.5")]), critical=False)
     .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("me@example.org")]), critical=True))
certs["leaf-p256"] = b.sign(p256, hashes.SHA256())
b = (x509.CertificateBuilder().subject_name(name("rsa")).issuer_name(name("rsa"))
     .public_key(rsa2k.public_key()).serial_number(1)
     .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
certs["ca-rsa"] = b.sign(rsa2k, hashes.SHA512())
b = (x509.CertificateBuilder().subject_name(name("ed")).issuer_name(name("ed"))
     .public_key(edk.public_key()).serial_number(2)
     .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30)))
certs["ed25519"] = b.sign(edk, None)
for k, c in certs.items():
    out("tbs", f"{k}.tbs.der", c.tbs_certificate_bytes)
    out("tbs", f"{k}.cert.der", c.public_bytes(serialization.Encoding.DER))

# --- tbs_judge: the TBSCertificates above, and the tricks of x509_judge.rs ------------
# Each trick is a P-256 TBSCertificate whose extensions are spliced in as raw DER (or
# BER): what OpenSSL reads as a CA while a lenient reader may see a leaf.
def tlv(tag, content):
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(b)]) + b + content

def tlv_children(der):
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

def ext(oid_hex, value_hex, critical=b""):
    return tlv(0x30, tlv(0x06, bytes.fromhex(oid_hex)) + critical + tlv(0x04, bytes.fromhex(value_hex)))

for k, c in certs.items():
    out("tbs_judge", f"{k}.tbs.der", c.tbs_certificate_bytes)
bare = (x509.CertificateBuilder().subject_name(name("trick")).issuer_name(name("issuer"))
        .public_key(p256.public_key()).serial_number(7)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(p256, hashes.SHA256()).tbs_certificate_bytes)
BC, KU, EKU, CRIT, FALSE = "551d13", "551d0f", "551d25", bytes.fromhex("0101ff"), bytes.fromhex("010100")
sigstore = lambda n: "2b0601040183bf3001" + f"{n:02x}"
tricks = {
    "bc-indefinite": [ext(BC, "3080" "0101ff" "0000")],
    "bc-long-length": [ext(BC, "308103" "0101ff")],
    "bc-ber-true": [ext(BC, "3003" "010101", CRIT)],
    "bc-explicit-false": [ext(BC, "3003" "0101ff", FALSE)],
    "bc-duplicate": [ext(BC, "3000", CRIT), ext(BC, "3003" "0101ff", CRIT)],
    "bc-pathlen-no-ca": [ext(BC, "3003" "020100", CRIT)],
    "keycertsign-no-bc": [ext(KU, "03020284", CRIT)],
    "ku-trailing-zero": [ext(KU, "0303008400", CRIT)],
    "netscape-ssl-ca": [ext("6086480186f842010" "1", "03020204")],
    "leaf": [ext(BC, "3000", CRIT), ext(KU, "03020780", CRIT), ext(EKU, "300a06082b06010505070303"),
             ext(sigstore(1), b"https://accounts.example.org".hex()),
             ext(sigstore(8), "0c1c" + b"https://accounts.example.org".hex())],
    "ca": [ext(BC, "30060101ff020100", CRIT), ext(KU, "03020106", CRIT)],
}
for k, exts in tricks.items():
    tbs = tlv(0x30, b"".join(tlv_children(bare)) + tlv(0xa3, tlv(0x30, b"".join(exts))))
    out("tbs_judge", f"trick-{k}.tbs.der", tbs)

# --- config: README's example and the test suite's ----------------------------------
readme = (ROOT / "README.md").read_text()
m = re.search(r"```toml\n(.*?)```", readme, re.S)
out("config", "readme.toml", m.group(1))
cfg = (ROOT / "agent/src/config/tests.rs").read_text()
m = re.search(r'const GOOD: &str = r#"(.*?)"#;', cfg, re.S)
if m:
    out("config", "good.toml", m.group(1))
out("config", "yubikey.toml", '[[device]]\nname = "yk"\nkind = "yubikey"\nserial = 12345678\npin = "pinentry:/usr/bin/pinentry-tty"\nmgm_key = "file:/etc/mgm"\n\n[[key]]\nname = "yk/9c"\npurposes = ["ssh", "digest"]\nallow_uids = [1000]\nmax_per_day = 3\n')
out("config", "empty.toml", "")

# --- audit_chain: a sound chain, rotated and not ------------------------------------
GENESIS = "0" * 64
def chain(n, start=1, prev=GENESIS):
    lines = []
    for seq in range(start, start + n):
        line = json.dumps({"seq": seq, "ts": "2026-01-01T00:00:00Z", "event": "sign", "key": "hsm/release",
                           "uid": 1000, "prev": prev}, separators=(",", ":"))
        lines.append(line)
        prev = hashlib.sha256(line.encode()).hexdigest()
    return lines, prev
lines, last = chain(4)
out("audit_chain", "sound", "\n".join(lines) + "\n")
more, _ = chain(3, 5, last)
out("audit_chain", "rotated", "\n".join(lines) + "\n\n--8<--\n" + "\n".join(more) + "\n")
late, _ = chain(2, 1000, "ab" * 32)
out("audit_chain", "starts-late", "\n".join(late) + "\n")
bad = list(lines); bad[2] = bad[2].replace("hsm/release", "hsm/other")
out("audit_chain", "tampered", "\n".join(bad) + "\n")

# --- ssh_request: OpenSSH agent messages --------------------------------------------
def s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b
def mpint(i):
    b = i.to_bytes((i.bit_length() + 8) // 8, "big") if i else b""
    return s(b)
ed_pub = edk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
ed_priv = edk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
ed_blob = s("ssh-ed25519") + s(ed_pub)
p256_point = p256.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
p256_blob = s("ecdsa-sha2-nistp256") + s("nistp256") + s(p256_point)
rn = rsa2k.public_key().public_numbers()
rsa_blob = s("ssh-rsa") + mpint(rn.e) + mpint(rn.n)
out("ssh_request", "request-identities", bytes([11]))
out("ssh_request", "remove-all", bytes([19]))
out("ssh_request", "sign-ed25519", bytes([13]) + s(ed_blob) + s(b"data to sign") + struct.pack(">I", 0))
out("ssh_request", "sign-p256", bytes([13]) + s(p256_blob) + s(b"x" * 40) + struct.pack(">I", 0))
out("ssh_request", "sign-rsa-sha512", bytes([13]) + s(rsa_blob) + s(b"y" * 40) + struct.pack(">I", 4))
out("ssh_request", "remove-identity", bytes([18]) + s(ed_blob))
out("ssh_request", "lock", bytes([22]) + s("secret"))
out("ssh_request", "unlock", bytes([23]) + s("secret"))
out("ssh_request", "add-ed25519", bytes([17]) + s("ssh-ed25519") + s(ed_pub) + s(ed_priv + ed_pub) + s("comment"))
out("ssh_request", "add-constrained", bytes([25]) + s("ssh-ed25519") + s(ed_pub) + s(ed_priv + ed_pub) + s("c") + bytes([1]) + struct.pack(">I", 60) + bytes([2]))
out("ssh_request", "add-smartcard", bytes([20]) + s("/usr/lib/opensc-pkcs11.so") + s("1234"))
out("ssh_request", "ext-query", bytes([27]) + s("query"))
session_id = hashlib.sha256(b"kex").digest()
sig = edk.sign(session_id)
for fwd in (0, 1):
    body = s(ed_blob) + s(session_id) + s(s("ssh-ed25519") + s(sig)) + bytes([fwd])
    out("ssh_request", f"session-bind-{fwd}", bytes([27]) + s("session-bind@openssh.com") + body)

# --- ssh_session: conversations with the session handler, each message framed --------
binds = {fwd: bytes([27]) + s("session-bind@openssh.com") + s(ed_blob) + s(session_id)
        + s(s("ssh-ed25519") + s(sig)) + bytes([fwd]) for fwd in (0, 1)}
bad_sig = bytes(64)
bad_bind = (bytes([27]) + s("session-bind@openssh.com") + s(ed_blob) + s(session_id)
            + s(s("ssh-ed25519") + s(bad_sig)) + bytes([0]))
ssh_messages = {
    "identities": bytes([11]),
    "sign": bytes([13]) + s(p256_blob) + s(b"x" * 40) + struct.pack(">I", 0),
    "lock": bytes([22]) + s("secret"),
    "unlock": bytes([23]) + s("secret"),
    "add": bytes([17]) + s("ssh-ed25519") + s(ed_pub) + s(ed_priv + ed_pub) + s("comment"),
    "remove-all": bytes([19]),
    "query": bytes([27]) + s("query"),
    "bind": binds[0],
    "bind-forwarding": binds[1],
    "bind-bad-signature": bad_bind,
    "garbage": bytes([200, 1, 2, 3]),
}
conversations = {
    "ssh-add-L": ["identities"],
    "ssh-sign": ["bind", "identities", "sign"],
    "forwarded": ["bind-forwarding", "identities", "sign", "bind"],
    "bad-bind": ["bind-bad-signature", "identities"],
    "lock-unlock": ["lock", "identities", "lock", "unlock", "identities"],
    "hardware-only": ["add", "remove-all", "query", "garbage"],
}
for name, steps in conversations.items():
    out("ssh_session", name, b"".join(s(ssh_messages[m]) for m in steps))

# --- bundle: key-only and Rekor-logged bundles, offline-verifiable -------------------
KEYS.mkdir(exist_ok=True)
signer = ec.generate_private_key(ec.SECP256R1())
rekor = ec.generate_private_key(ec.SECP256R1())
artifact = b"waxseal fuzz artifact\n"
(KEYS / "artifact.txt").write_bytes(artifact)
(KEYS / "signer.spki.der").write_bytes(spki_der(signer))
(KEYS / "rekor.spki.der").write_bytes(spki_der(rekor))
digest = hashlib.sha256(artifact).digest()
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
signature = signer.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
hint = b64(hashlib.sha256(spki_der(signer)).digest())
def bundle(media, tlog):
    return {
        "mediaType": media,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": tlog},
        "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest)},
                             "signature": b64(signature)},
    }
out("bundle", "key-only.json", json.dumps(bundle("application/vnd.dev.sigstore.bundle.v0.3+json", []), indent=2))
out("bundle", "v0.1.json", json.dumps(bundle("application/vnd.dev.sigstore.bundle+json;version=0.1", [])))
body = json.dumps({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
    "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
    "signature": {"content": b64(signature), "publicKey": {"content": b64(spki_pem(signer))}}}},
    separators=(",", ":")).encode()
log_id = hashlib.sha256(spki_der(rekor)).digest()
index, itime = 3, 1767225600
set_payload = json.dumps({"body": b64(body), "integratedTime": itime, "logID": log_id.hex(), "logIndex": index},
                         separators=(",", ":")).encode()
set_sig = rekor.sign(set_payload, ec.ECDSA(hashes.SHA256()))
def leaf_hash(d): return hashlib.sha256(b"\x00" + d).digest()
def node_hash(l, r): return hashlib.sha256(b"\x01" + l + r).digest()
def root(leaves):
    if len(leaves) == 1: return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(root(leaves[:k]), root(leaves[k:]))
def path(leaves, m):
    if len(leaves) == 1: return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k: return path(leaves[:k], m) + [root(leaves[k:])]
    return path(leaves[k:], m - k) + [root(leaves[:k])]
size = 6
leaves = [leaf_hash(b"other %d" % i) for i in range(size)]
leaves[index] = leaf_hash(body)
root_hash = root(leaves)
note = f"rekor.example - 1234\n{size}\n{b64(root_hash)}\n"
note_sig = rekor.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
envelope = note + "\n" + "\u2014 rekor.example " + b64(log_id[:4] + note_sig) + "\n"
entry = {
    "logIndex": str(index), "logId": {"keyId": b64(log_id)},
    "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
    "integratedTime": str(itime),
    "inclusionPromise": {"signedEntryTimestamp": b64(set_sig)},
    "canonicalizedBody": b64(body),
}
out("bundle", "rekor-set-only.json", json.dumps(bundle("application/vnd.dev.sigstore.bundle.v0.3+json", [entry])))
entry_proof = dict(entry, inclusionProof={
    "logIndex": str(index), "rootHash": b64(root_hash), "treeSize": str(size),
    "hashes": [b64(h) for h in path(leaves, index)], "checkpoint": {"envelope": envelope}})
out("bundle", "rekor-proof.json", json.dumps(bundle("application/vnd.dev.sigstore.bundle.v0.3+json", [entry_proof]), indent=2))
keyless = bundle("application/vnd.dev.sigstore.bundle+json;version=0.2", [])
keyless["verificationMaterial"] = {"x509CertificateChain": {"certificates": [{"rawBytes": "MAA="}]}, "tlogEntries": []}
out("bundle", "keyless-v0.2.json", json.dumps(keyless))
dsse = bundle("application/vnd.dev.sigstore.bundle.v0.3+json", [])
del dsse["messageSignature"]
dsse["dsseEnvelope"] = {"payload": "e30=", "payloadType": "application/vnd.in-toto+json", "signatures": [{"sig": "MEUC", "keyid": ""}]}
out("bundle", "dsse.json", json.dumps(dsse))
# The KMS plug-in's argv[2], as sigstore's Go client marshals common.PluginArgs.
def kms(method, member=None, value=None, key="hsm/release", hash_func=5):
    init = {"protocolVersion": "v1", "keyResourceID": key, "hashFunc": hash_func,
            "ctxDeadline": "2026-12-01T00:00:00Z",
            "rpcOptions": {"ctxOpts": None, "keyVersion": "", "remoteVerification": False}}
    args = {"initOptions": init, "methodName": method}
    if member:
        args[member] = value
    return json.dumps(args)
msg = lambda digest, h=5: {"rpcOptions": {"keyVersion": ""}, "messageOptions": {"digest": digest, "hashFunc": h}}
out("kms_args", "default-algorithm", kms("defaultAlgorithm"))
out("kms_args", "supported-algorithms", kms("supportedAlgorithms", key=""))
out("kms_args", "create-key", kms("createKey", "createKey", {"algorithm": "ecdsa-sha2-384-nistp384"}))
out("kms_args", "public-key", kms("publicKey", "publicKey", {"publicKeyOptions": {"rpcOptions": {"keyVersion": ""}}}, key="waxseal://yk/9c"))
out("kms_args", "sign-digest", kms("signMessage", "signMessage", {"signOptions": msg(base64.b64encode(b"\x11" * 32).decode())}))
out("kms_args", "sign-stdin", kms("signMessage", "signMessage", {"signOptions": msg(None, 0)}, hash_func=6))
out("kms_args", "verify", kms("verifySignature", "verifySignature", {"signature": base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode(), "verifyOptions": msg(base64.b64encode(b"\x22" * 48).decode(), 6)}))
out("kms_args", "key-version", kms("publicKey", "publicKey", {"publicKeyOptions": {"rpcOptions": {"keyVersion": "2"}}}))
print("seeds written under", CORPUS)
