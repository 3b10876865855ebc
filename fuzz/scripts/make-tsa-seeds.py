#!/usr/bin/env python3
"""Writes the seeds of the `tsa_response` target under fuzz/corpus/tsa_response/.

Every seed is an answer of OpenSSL's own TSA (`openssl ts -reply`) to the query
`waxseal sign` would send for the target's fixed "signature" and nonce (see
fuzz_targets/tsa_response.rs: SIGNATURE and NONCE), so a seed passes the imprint and
nonce checks and mutations reach the CMS, the signed attributes and the certificate.
Variants: an RSA and a P-256 TSA certificate, signingCertificateV2 (SHA-256) and the
older signingCertificate (SHA-1), SHA-384 signer digest, accuracy,
ordering, a TSA name, the whole chain in the token, a rejection (status 2), and bare
tokens (`-token_out`). (OpenSSL refuses to sign with a certificate whose EKU is not
critical timeStamping alone, so that case is left to the fuzzer.)

Needs python3 and the openssl command. Run from anywhere: paths are relative to this
file. TSA keys are made afresh in a temp dir each run; the target embeds none of them.
"""
import hashlib, os, subprocess, tempfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent
OUT = FUZZ / "corpus" / "tsa_response"
SIGNATURE = b"waxseal fuzz signature\n"
NONCE = bytes([0x5A, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77])


def tlv(tag, content):
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(b)]) + b
    return bytes([tag]) + length + content


def query(digest_oid, imprint):
    """TimeStampReq v1, imprint, nonce, certReq TRUE, as cli/src/tsa.rs `request`."""
    alg = tlv(0x30, tlv(0x06, digest_oid))
    mi = tlv(0x30, alg + tlv(0x04, imprint))
    return tlv(0x30, tlv(0x02, b"\x01") + mi + tlv(0x02, NONCE) + tlv(0x01, b"\xff"))


SHA256 = bytes.fromhex("608648016503040201")
SHA512 = bytes.fromhex("608648016503040203")


def run(*args, cwd=None):
    done = subprocess.run(args, capture_output=True, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {done.stderr.decode()}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        j = lambda n: os.path.join(d, n)
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", j("root.key"), "-out", j("root.pem"), "-days", "3650",
            "-subj", "/O=waxseal fuzz/CN=tsa root",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        certs = {
            "rsa": ("rsa:2048", "extendedKeyUsage=critical,timeStamping\n"),
            "ec": ("ec", "extendedKeyUsage=critical,timeStamping\n"),
        }
        for name, (alg, eku) in certs.items():
            newkey = ["-newkey", alg] + (["-pkeyopt", "ec_paramgen_curve:P-256"] if alg == "ec" else [])
            run("openssl", "req", *newkey, "-nodes", "-keyout", j(f"{name}.key"),
                "-out", j(f"{name}.csr"), "-subj", f"/O=waxseal fuzz/CN=tsa {name}")
            Path(j(f"{name}.ext")).write_text(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n" + eku)
            run("openssl", "x509", "-req", "-in", j(f"{name}.csr"), "-CA", j("root.pem"),
                "-CAkey", j("root.key"), "-set_serial", "7", "-days", "3650",
                "-extfile", j(f"{name}.ext"), "-out", j(f"{name}.pem"))
        imprint = hashlib.sha256(SIGNATURE).digest()
        Path(j("q.tsq")).write_bytes(query(SHA256, imprint))
        Path(j("q512.tsq")).write_bytes(query(SHA512, hashlib.sha512(SIGNATURE).digest()))
        variants = {
            # name: (certificate, settings, query)
            "rsa-ess-v2": ("rsa", {"ess_cert_id_alg": "sha256"}, "q.tsq"),
            "ec-ess-v2": ("ec", {"ess_cert_id_alg": "sha256"}, "q.tsq"),
            "ec-ess-v1-sha1": ("ec", {"ess_cert_id_alg": "sha1"}, "q.tsq"),
            "ec-sha384-chain": ("ec", {"signer_digest": "sha384", "ess_cert_id_chain": "yes",
                                       "ess_cert_id_alg": "sha256"}, "q.tsq"),
            "rsa-accuracy-ordering-name": ("rsa", {
                                                   "ordering": "yes", "tsa_name": "yes",
                                                   "ess_cert_id_alg": "sha256"}, "q.tsq"),
            "rejected-sha512": ("ec", {"digests": "sha256"}, "q512.tsq"),
        }
        for name, (cert, extra, q) in variants.items():
            settings = {"serial": j("serial"), "crypto_device": "builtin",
                        "signer_cert": j(f"{cert}.pem"), "certs": j("root.pem"),
                        "signer_key": j(f"{cert}.key"), "signer_digest": "sha256",
                        "default_policy": "1.3.6.1.4.1.99999.1", "digests": "sha256, sha384, sha512",
                        "accuracy": "secs:1", "ordering": "no", "tsa_name": "no",
                        "ess_cert_id_chain": "no"}
            settings.update(extra)
            Path(j("serial")).write_text("01\n")
            Path(j("tsa.cnf")).write_text("[ tsa ]\ndefault_tsa = t\n[ t ]\n" + "".join(
                f"{k} = {v}\n" for k, v in settings.items()))
            run("openssl", "ts", "-reply", "-config", j("tsa.cnf"), "-queryfile", j(q), "-out", j("r.tsr"))
            (OUT / f"{name}.tsr").write_bytes(Path(j("r.tsr")).read_bytes())
            if not name.startswith("rejected"):
                run("openssl", "ts", "-reply", "-config", j("tsa.cnf"), "-queryfile", j(q),
                    "-token_out", "-out", j("t.tst"))
                (OUT / f"{name}.token").write_bytes(Path(j("t.tst")).read_bytes())
    print("seeds written under", OUT)


main()
