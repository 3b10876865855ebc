"""Checks ACME device-attest-01 attestation objects made by `waxseal keys attest
--format tpm|step` with decoders waxseal did not write: cbor2 and cryptography
(pinned in requirements.txt). Used by pkcs11-tests/tests/key_attest_formats.rs.

  attobj.py make-ak-cert AK_SPKI.pem OUT_DIR [plain]
      a test attestation CA (OUT_DIR/ca.pem) and an AK certificate for the given key
      in the WebAuthn §8.3.1 profile (OUT_DIR/ak.pem: AK certificate then CA); with
      `plain`, outside that profile (a subject, no SAN, no tcg-kp-AIKCertificate)
  attobj.py tpm  PAYLOAD.json KEYAUTH PUBKEY.pem ROOT.pem
  attobj.py step PAYLOAD.json KEYAUTH PUBKEY.pem ROOT.pem

PAYLOAD.json is the ACME challenge response body {"attObj": base64url}. Prints OK
lines; exits non-zero naming the first check that failed.
"""

import base64
import datetime
import hashlib
import json
import struct
import sys

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID, ObjectIdentifier


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def load_payload(path):
    with open(path) as f:
        body = json.load(f)
    check(set(body) == {"attObj"}, "payload members %r, want only attObj" % sorted(body))
    s = body["attObj"]
    check("=" not in s and "+" not in s and "/" not in s, "attObj is not unpadded base64url")
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    obj = cbor2.loads(raw)
    # Deterministic encoding: cbor2's canonical form is the same bytes.
    check(cbor2.dumps(obj, canonical=True) == raw, "attObj is not canonical CBOR")
    check(isinstance(obj, dict), "attObj is not a map")
    check(set(obj) == {"fmt", "attStmt"}, "attObj keys %r" % sorted(obj))
    return obj


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        check(self.pos + n <= len(self.data), "structure truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def tpm2b(self):
        return self.take(self.u16())

    def done(self):
        return self.pos == len(self.data)


TPM_ALG_RSA, TPM_ALG_ECC, TPM_ALG_NULL, TPM_ALG_SHA256 = 0x0001, 0x0023, 0x0010, 0x000B
TPM_ALG_ECDSA = 0x0018
CURVES = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1()}


def parse_pub_area(data):
    """TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4) -> (nameAlg, attributes, public key)."""
    r = Reader(data)
    typ, name_alg, attrs = r.u16(), r.u16(), r.u32()
    r.tpm2b()  # authPolicy
    sym = r.u16()
    if sym != TPM_ALG_NULL:
        r.u16()
        r.u16()
    scheme = r.u16()
    if scheme != TPM_ALG_NULL:
        r.u16()
    if typ == TPM_ALG_ECC:
        curve = r.u16()
        kdf = r.u16()
        if kdf != TPM_ALG_NULL:
            r.u16()
        x, y = r.tpm2b(), r.tpm2b()
        check(curve in CURVES, "unknown curve 0x%04x" % curve)
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), CURVES[curve]
        ).public_key()
    elif typ == TPM_ALG_RSA:
        r.u16()  # keyBits
        exponent = r.u32() or 65537
        modulus = r.tpm2b()
        key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    else:
        fail("pubArea type 0x%04x" % typ)
    check(r.done(), "bytes after the TPMT_PUBLIC")
    return name_alg, attrs, key


def parse_cert_info(data):
    """TPMS_ATTEST (TPM 2.0 Part 2 §10.12.12) of TPM2_Certify."""
    r = Reader(data)
    magic, typ = r.u32(), r.u16()
    r.tpm2b()  # qualifiedSigner
    extra = r.tpm2b()
    r.take(17)  # TPMS_CLOCK_INFO
    r.take(8)  # firmwareVersion
    name = r.tpm2b()
    r.tpm2b()  # qualifiedName
    check(r.done(), "bytes after the TPMS_ATTEST")
    return magic, typ, extra, name


def spki(key):
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_spki(path):
    with open(path, "rb") as f:
        return spki(serialization.load_pem_public_key(f.read()))


def root_cert(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def verify_tpm(payload, keyauth, pubkey_pem, root_pem):
    obj = load_payload(payload)
    check(obj["fmt"] == "tpm", "fmt %r" % obj["fmt"])
    st = obj["attStmt"]
    check(set(st) == {"ver", "alg", "x5c", "sig", "certInfo", "pubArea"}, "attStmt keys %r" % sorted(st))
    check(st["ver"] == "2.0", "ver %r" % st["ver"])
    check(st["alg"] == -7, "alg %r, want -7 (ES256)" % st["alg"])
    check(isinstance(st["x5c"], list) and len(st["x5c"]) >= 1, "x5c is not a non-empty array")
    certs = [x509.load_der_x509_certificate(c) for c in st["x5c"]]
    ak = certs[0]
    root = root_cert(root_pem)
    chain = certs + ([] if certs[-1] == root else [root])
    for child, parent in zip(chain, chain[1:]):
        child.verify_directly_issued_by(parent)
    check(chain[-1] == root, "x5c does not end at the attestation CA")
    print("OK x5c: AK certificate chains to the attestation CA")

    magic, typ, extra, attested_name = parse_cert_info(st["certInfo"])
    check(magic == 0xFF544347, "certInfo magic 0x%08x, want TPM_GENERATED_VALUE" % magic)
    check(typ == 0x8017, "certInfo type 0x%04x, want TPM_ST_ATTEST_CERTIFY" % typ)
    want = hashlib.sha256(keyauth.encode()).digest()
    check(extra == want, "extraData %s, want SHA-256(key authorization) %s" % (extra.hex(), want.hex()))
    print("OK certInfo: TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY, extraData = SHA-256(keyAuthorization)")

    name_alg, attrs, key = parse_pub_area(st["pubArea"])
    check(name_alg == TPM_ALG_SHA256, "nameAlg 0x%04x" % name_alg)
    name = struct.pack(">H", name_alg) + hashlib.sha256(st["pubArea"]).digest()
    check(attested_name == name, "attested name %s != name of pubArea %s" % (attested_name.hex(), name.hex()))
    check(attrs & (1 << 1) and attrs & (1 << 5), "pubArea lacks fixedTPM or sensitiveDataOrigin")
    print("OK pubArea: its name is the attested name; fixedTPM, sensitiveDataOrigin")

    sr = Reader(st["sig"])
    sig_alg, sig_hash = sr.u16(), sr.u16()
    check(sig_alg == TPM_ALG_ECDSA and sig_hash == TPM_ALG_SHA256, "sig is not TPMT_SIGNATURE ECDSA SHA-256")
    r_, s_ = sr.tpm2b(), sr.tpm2b()
    check(sr.done(), "bytes after the TPMT_SIGNATURE")
    der = utils.encode_dss_signature(int.from_bytes(r_, "big"), int.from_bytes(s_, "big"))
    ak.public_key().verify(der, st["certInfo"], ec.ECDSA(hashes.SHA256()))
    print("OK sig: verifies with the AK certificate's key over certInfo")

    check(spki(key) == pem_spki(pubkey_pem), "pubArea's key is not `waxseal keys pubkey`")
    print("OK pubArea key = waxseal keys pubkey")


def verify_step(payload, keyauth, pubkey_pem, root_pem):
    obj = load_payload(payload)
    check(obj["fmt"] == "step", "fmt %r" % obj["fmt"])
    st = obj["attStmt"]
    check(set(st) == {"alg", "sig", "x5c"}, "attStmt keys %r" % sorted(st))
    check(isinstance(st["x5c"], list) and len(st["x5c"]) == 2, "x5c is not [slot, f9]")
    slot, f9 = [x509.load_der_x509_certificate(c) for c in st["x5c"]]
    slot.verify_directly_issued_by(f9)
    f9.verify_directly_issued_by(root_cert(root_pem))
    print("OK x5c: slot certificate <- f9 certificate <- attestation root")
    sig = cbor2.loads(st["sig"])
    check(isinstance(sig, bytes), "sig is not a CBOR-encoded byte string")
    key = slot.public_key()
    msg = keyauth.encode()
    if isinstance(key, ec.EllipticCurvePublicKey):
        check(st["alg"] == -7, "alg %r, want -7" % st["alg"])
        key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        check(st["alg"] == -257, "alg %r, want -257" % st["alg"])
        key.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
    else:
        fail("slot key type %r" % type(key))
    print("OK sig: verifies with the slot certificate's key over the key authorization")
    check(spki(key) == pem_spki(pubkey_pem), "slot certificate's key is not `waxseal keys pubkey`")
    print("OK slot certificate key = waxseal keys pubkey")


def make_ak_cert(ak_spki_pem, out_dir, plain=False):
    with open(ak_spki_pem, "rb") as f:
        ak_pub = serialization.load_pem_public_key(f.read())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "waxseal test attestation CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    # WebAuthn §8.3.1: empty subject; SAN directoryName with the TPM manufacturer,
    # model and version (TCG EK Credential Profile §3.2.9); EKU tcg-kp-AIKCertificate.
    tpm_dn = x509.Name([
        x509.NameAttribute(ObjectIdentifier("2.23.133.2.1"), "id:53575450"),
        x509.NameAttribute(ObjectIdentifier("2.23.133.2.2"), "swtpm"),
        x509.NameAttribute(ObjectIdentifier("2.23.133.2.3"), "id:20191023"),
    ])
    builder = (
        x509.CertificateBuilder()
        .issuer_name(ca_name)
        .public_key(ak_pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if plain:
        builder = builder.subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "an AK")])
        )
    else:
        builder = (
            builder.subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm_dn)]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ObjectIdentifier("2.23.133.8.3")]), critical=False)
        )
    ak = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    with open(out_dir + "/ca.pem", "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(out_dir + "/ak.pem", "wb") as f:
        f.write(ak.public_bytes(pem) + ca.public_bytes(pem))
    print("OK wrote", out_dir + "/ak.pem")


def main(argv):
    if len(argv) == 4 and argv[1] == "make-ak-cert":
        make_ak_cert(argv[2], argv[3])
    elif len(argv) == 5 and argv[1] == "make-ak-cert" and argv[4] == "plain":
        make_ak_cert(argv[2], argv[3], plain=True)
    elif len(argv) == 6 and argv[1] == "tpm":
        verify_tpm(*argv[2:])
    elif len(argv) == 6 and argv[1] == "step":
        verify_step(*argv[2:])
    else:
        fail("usage: see the docstring")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Exception as e:  # a check cryptography or cbor2 made: name it
        fail("%s: %s" % (type(e).__name__, e))
