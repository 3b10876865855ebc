"""A TUF repository for pkcs11-tests/tests/trust_update.rs, built with python-tuf.

    make_tuf_repo.py init DIR NAME=FILE...      keys, root v1, targets/snapshot/timestamp v1
    make_tuf_repo.py publish DIR NAME=FILE...   new targets, snapshot and timestamp versions
    make_tuf_repo.py expire DIR                 a new timestamp version that expired yesterday
    make_tuf_repo.py rotate DIR                 root N+1 with new root and timestamp keys, signed
                                                by the old and the new root key; a new timestamp
    make_tuf_repo.py rotate-unsigned DIR        the same, but root N+1 signed by the new key only
    make_tuf_repo.py serve DIR                  serve DIR/repo on 127.0.0.1, print `PORT <n>`

DIR/keys holds the ed25519 private keys (one per role), DIR/repo is what the test serves over
HTTP: metadata with consistent snapshots (1.root.json, N.snapshot.json, N.targets.json,
timestamp.json) and targets/<sha256>.NAME. DIR/repo/root.json is the client's first root
(`waxseal trust update --root`).
"""

import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

ROLES = ["root", "targets", "snapshot", "timestamp"]


def signer(keys_dir, role):
    path = os.path.join(keys_dir, role + ".pem")
    if not os.path.exists(path):
        s = CryptoSigner.generate_ed25519()
        pem = s.private_bytes
        with open(path, "wb") as f:
            f.write(pem)
        return s
    with open(path, "rb") as f:
        private = serialization.load_pem_private_key(f.read(), None)
    public = SSlibKey.from_crypto(private.public_key())
    return CryptoSigner(private, public)


def future(days=30):
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


def write(repo, name, md, signers):
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    data = md.to_bytes(JSONSerializer(compact=False))
    tmp = os.path.join(repo, name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(repo, name))


def load(repo, name):
    with open(os.path.join(repo, name), "rb") as f:
        return Metadata.from_bytes(f.read())


def publish_targets(d, pairs, signers):
    repo = os.path.join(d, "repo")
    os.makedirs(os.path.join(repo, "targets"), exist_ok=True)
    state_path = os.path.join(d, "versions.json")
    if os.path.exists(state_path):
        with open(state_path) as f:
            versions = json.load(f)
    else:
        versions = {"targets": 0, "snapshot": 0, "timestamp": 0}
    targets = Targets(version=versions["targets"] + 1, expires=future())
    for pair in pairs:
        name, path = pair.split("=", 1)
        with open(path, "rb") as f:
            content = f.read()
        digest = hashlib.sha256(content).hexdigest()
        with open(os.path.join(repo, "targets", f"{digest}.{name}"), "wb") as f:
            f.write(content)
        targets.targets[name] = TargetFile(
            length=len(content), hashes={"sha256": digest}, path=name
        )
    versions["targets"] = targets.version
    write(repo, f"{targets.version}.targets.json", Metadata(targets), [signers["targets"]])

    snapshot = Snapshot(version=versions["snapshot"] + 1, expires=future())
    snapshot.meta["targets.json"] = MetaFile(version=targets.version)
    versions["snapshot"] = snapshot.version
    write(repo, f"{snapshot.version}.snapshot.json", Metadata(snapshot), [signers["snapshot"]])

    write_timestamp(d, versions, signers, future(1))


def write_timestamp(d, versions, signers, expires):
    repo = os.path.join(d, "repo")
    timestamp = Timestamp(
        version=versions["timestamp"] + 1,
        expires=expires,
        snapshot_meta=MetaFile(version=versions["snapshot"]),
    )
    versions["timestamp"] = timestamp.version
    write(repo, "timestamp.json", Metadata(timestamp), [signers["timestamp"]])
    with open(os.path.join(d, "versions.json"), "w") as f:
        json.dump(versions, f)


def rotate(d, signers, signed_by_old):
    """Root N+1 replacing the root and timestamp keys (the old private keys are kept as
    keys/ROLE-N.pem), then a timestamp signed by the new timestamp key."""
    repo = os.path.join(d, "repo")
    keys = os.path.join(d, "keys")
    with open(os.path.join(d, "versions.json")) as f:
        versions = json.load(f)
    n = versions.get("root", 1)
    root = load(repo, f"{n}.root.json").signed
    old_root = signers["root"]
    for role in ("root", "timestamp"):
        os.replace(os.path.join(keys, role + ".pem"), os.path.join(keys, f"{role}-{n}.pem"))
        signers[role] = signer(keys, role)
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        root.add_key(signers[role].public_key, role)
    root.version = n + 1
    by = [old_root, signers["root"]] if signed_by_old else [signers["root"]]
    write(repo, f"{n + 1}.root.json", Metadata(root), by)
    versions["root"] = n + 1
    write_timestamp(d, versions, signers, future(1))


def serve(repo):
    """Python's http.server over DIR/repo (read at each request: the test changes it)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    os.makedirs(repo, exist_ok=True)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=repo)
    )
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    command, d = argv[1], argv[2]
    if command == "serve":
        serve(os.path.join(d, "repo"))
        return
    keys = os.path.join(d, "keys")
    repo = os.path.join(d, "repo")
    os.makedirs(keys, exist_ok=True)
    os.makedirs(repo, exist_ok=True)
    signers = {role: signer(keys, role) for role in ROLES}
    if command == "init":
        root = Root(expires=future(365), consistent_snapshot=True)
        for role in ROLES:
            root.add_key(signers[role].public_key, role)
        md = Metadata(root)
        write(repo, "1.root.json", md, [signers["root"]])
        write(repo, "root.json", md, [signers["root"]])
        publish_targets(d, argv[3:], signers)
    elif command == "publish":
        publish_targets(d, argv[3:], signers)
    elif command == "expire":
        with open(os.path.join(d, "versions.json")) as f:
            versions = json.load(f)
        yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).replace(microsecond=0)
        write_timestamp(d, versions, signers, yesterday)
    elif command in ("rotate", "rotate-unsigned"):
        rotate(d, signers, command == "rotate")
    else:
        sys.exit(f"unknown command {command!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
