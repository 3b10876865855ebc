"""OpenSSL's own RFC 3161 TSA (`openssl ts -reply`) behind Python's http.server, for the
waxseal tests: a second TSA, independent of sigstore-js's.

Usage: python3 openssl_tsa.py DIR [existing]
Creates in DIR a root CA, an RSA-2048 TSA certificate whose only extended key usage is a
critical timeStamping (root.pem, tsa.pem, chain.pem), and tsa.cnf; prints "PORT <n>"
once listening on 127.0.0.1 and answers each POSTed TimeStampReq until killed.
With "existing", DIR already holds tsa.cnf (and the files it names): nothing is created,
so a test can serve a TSA certificate it issued itself.
"""

import http.server
import os
import subprocess
import sys
import tempfile


def run(*args):
    subprocess.run(args, check=True, capture_output=True)


def setup(d):
    j = lambda name: os.path.join(d, name)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", j("root.key"), "-out", j("root.pem"), "-days", "2",
        "-subj", "/O=waxseal tests/CN=openssl tsa root",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", j("tsa.key"),
        "-out", j("tsa.csr"), "-subj", "/O=waxseal tests/CN=openssl tsa")
    with open(j("tsa.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=critical,timeStamping\n")
    run("openssl", "x509", "-req", "-in", j("tsa.csr"), "-CA", j("root.pem"),
        "-CAkey", j("root.key"), "-CAcreateserial", "-days", "1",
        "-extfile", j("tsa.ext"), "-out", j("tsa.pem"))
    with open(j("chain.pem"), "w") as f:
        f.write(open(j("tsa.pem")).read() + open(j("root.pem")).read())
    with open(j("serial"), "w") as f:
        f.write("01\n")
    with open(j("tsa.cnf"), "w") as f:
        f.write(f"""[ tsa ]
default_tsa = waxseal_tests
[ waxseal_tests ]
dir = {d}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/root.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = no
ess_cert_id_chain = no
ess_cert_id_alg = sha256
""")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with tempfile.TemporaryDirectory(dir=self.server.dir) as t:
            q, r = os.path.join(t, "q.tsq"), os.path.join(t, "r.tsr")
            with open(q, "wb") as f:
                f.write(query)
            done = subprocess.run(
                ["openssl", "ts", "-reply", "-config", os.path.join(self.server.dir, "tsa.cnf"),
                 "-queryfile", q, "-out", r], capture_output=True)
            if done.returncode != 0:
                self.send_response(400)
                self.end_headers()
                self.wfile.write(done.stderr)
                return
            answer = open(r, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "application/timestamp-reply")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def main():
    d = os.path.abspath(sys.argv[1])
    if sys.argv[2:] != ["existing"]:
        setup(d)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.dir = d
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
