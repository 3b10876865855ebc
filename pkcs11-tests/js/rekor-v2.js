// A STAND-IN for a Rekor v2 log (rekor-tiles), for the tests: POST /api/v2/log/entries
// with a hashedrekord or dsse v0.0.2 CreateEntryRequest (sigstore/protobuf-specs
// rekor/v2) in, a TransparencyLogEntry with an RFC 6962 inclusion proof and a C2SP
// checkpoint out.
// Usage: node rekor-v2.js LOG_PUBLIC_KEY_OUT.pem [ok|refuse]
// Prints "PORT <n>" once listening; serves until killed. As a module (keyless.js):
// createLog(origin) gives {publicKey, spki, entry(request)} to mount on another server.
//
// Why a stand-in: @sigstore/mock 0.13's rekorV2Handler answers entries that no verifier
// accepts (its canonicalizedBody is its internal request object rather than a Rekor v2
// Entry, its inclusion proof's index lies outside its one-leaf tree, and its rootHash
// bytes are the base64 decoding of a hex string), and rekor-tiles cannot run here. What
// this log answers is checked by @sigstore/verify, which waxseal did not write.
//
// The log keeps its leaves in memory, so later entries get proofs with sibling hashes.
// MODE refuse answers every entry with HTTP 400, as Rekor v2 does for an entry whose
// signature does not verify.
'use strict';
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const canonicalize = require('canonicalize');
const { pae } = require('./rekor.js');

const sha256 = (...parts) => {
  const h = crypto.createHash('sha256');
  parts.forEach((p) => h.update(p));
  return h.digest();
};
const ALGORITHMS = { 32: 'SHA2_256', 48: 'SHA2_384', 64: 'SHA2_512' };
const leafHash = (data) => sha256(Buffer.from([0]), data);
const nodeHash = (l, r) => sha256(Buffer.from([1]), l, r);

// RFC 6962 section 2.1: the root of leaves[lo, hi), and the audit path of leaf m.
function root(leaves) {
  if (leaves.length === 1) return leaves[0];
  const k = 2 ** Math.floor(Math.log2(leaves.length - 1));
  return nodeHash(root(leaves.slice(0, k)), root(leaves.slice(k)));
}
function path(leaves, m) {
  if (leaves.length === 1) return [];
  const k = 2 ** Math.floor(Math.log2(leaves.length - 1));
  return m < k
    ? [...path(leaves.slice(0, k), m), root(leaves.slice(k))]
    : [...path(leaves.slice(k), m - k), root(leaves.slice(0, k))];
}

// The public key of a protobuf-specs Verifier ({publicKey|x509Certificate: {rawBytes}}).
function verifierKey(v) {
  if (v && v.publicKey && v.publicKey.rawBytes) {
    return crypto.createPublicKey({ key: Buffer.from(v.publicKey.rawBytes, 'base64'), format: 'der', type: 'spki' });
  }
  if (v && v.x509Certificate && v.x509Certificate.rawBytes) {
    return new crypto.X509Certificate(Buffer.from(v.x509Certificate.rawBytes, 'base64')).publicKey;
  }
  throw new Error('a verifier has neither publicKey nor x509Certificate');
}

// The logged Entry for a request, or an Error saying why the log refuses it. A dsse
// request is checked as rekor-tiles does (every signature over the PAE verifies with one
// of the verifiers; the payload hash is SHA-256); a hashedrekord request is logged as sent.
function logged(request) {
  if (request.dsseRequestV002) {
    const { envelope, verifiers } = request.dsseRequestV002;
    if (!envelope || !Array.isArray(envelope.signatures) || !Array.isArray(verifiers)) {
      throw new Error('expected a dsseRequestV002 with envelope and verifiers');
    }
    const payload = Buffer.from(envelope.payload || '', 'base64');
    const signed = pae(envelope.payloadType || '', payload);
    const signatures = envelope.signatures.map((s) => {
      const sig = Buffer.from(s.sig || '', 'base64');
      const verifier = verifiers.find((v) => {
        const key = verifierKey(v);
        return crypto.verify(key.asymmetricKeyType === 'ed25519' ? null : 'sha256', signed, key, sig);
      });
      if (!verifier) throw new Error('invalid signature: no verifier verifies it');
      return { content: s.sig, verifier };
    });
    if (signatures.length === 0) throw new Error('the envelope has no signatures');
    return {
      kind: 'dsse',
      body: {
        apiVersion: '0.0.2',
        kind: 'dsse',
        spec: {
          dsseV002: {
            payloadHash: { algorithm: 'SHA2_256', digest: sha256(payload).toString('base64') },
            signatures,
          },
        },
      },
    };
  }
  const r = request.hashedRekordRequestV002;
  if (!r || !r.digest || !r.signature || !r.signature.verifier) {
    throw new Error('expected a hashedRekordRequestV002 with digest, signature and verifier');
  }
  return {
    kind: 'hashedrekord',
    body: {
      apiVersion: '0.0.2',
      kind: 'hashedrekord',
      spec: {
        hashedRekordV002: {
          // The hash keyDetails names (rekor-tiles logs it), told here by its length.
          data: { algorithm: ALGORITHMS[Buffer.from(r.digest, 'base64').length] || 'SHA2_256', digest: r.digest },
          signature: r.signature,
        },
      },
    },
  };
}

// A log named `origin` (its checkpoints' first line), with a fresh P-256 key.
function createLog(origin) {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ format: 'der', type: 'spki' });
  // C2SP signed-note, signature type 0x02 (ECDSA): the key ID is SHA-256 of the SPKI.
  const keyId = sha256(spki).subarray(0, 4);
  const leaves = [];
  const entry = (request) => {
    const { kind, body: value } = logged(request);
    const body = Buffer.from(canonicalize(value));
    const index = leaves.length;
    leaves.push(leafHash(body));
    const rootHash = root(leaves);
    const note = `${origin}\n${leaves.length}\n${rootHash.toString('base64')}\n`;
    const sig = crypto.sign('sha256', Buffer.from(note), privateKey);
    const envelope = `${note}\n\u2014 ${origin} ${Buffer.concat([keyId, sig]).toString('base64')}\n`;
    return {
      logIndex: String(index),
      logId: { keyId: sha256(spki).toString('base64') },
      kindVersion: { kind, version: '0.0.2' },
      inclusionProof: {
        logIndex: String(index),
        rootHash: rootHash.toString('base64'),
        treeSize: String(leaves.length),
        hashes: path(leaves, index).map((h) => h.toString('base64')),
        checkpoint: { envelope },
      },
      canonicalizedBody: body.toString('base64'),
    };
  };
  return { publicKey, spki, entry };
}

async function main() {
  const [out, mode = 'ok'] = process.argv.slice(2);
  if (!out) throw new Error('usage: node rekor-v2.js LOG_PUBLIC_KEY_OUT.pem [ok|refuse]');
  let log;

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const answer = (code, value) => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(JSON.stringify(value));
      };
      if (req.method !== 'POST' || req.url !== '/api/v2/log/entries') {
        return answer(404, { code: 5, message: `no route ${req.method} ${req.url}` });
      }
      if (mode === 'refuse') {
        return answer(400, { code: 3, message: 'invalid signature: verification failed' });
      }
      try {
        answer(201, log.entry(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
      } catch (e) {
        answer(400, { code: 3, message: e.message });
      }
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const port = server.address().port;
    log = createLog(`127.0.0.1:${port}`);
    fs.writeFileSync(out, log.publicKey.export({ format: 'pem', type: 'spki' }));
    process.stdout.write(`PORT ${port}\n`);
  });
}

module.exports = { createLog };

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`rekor-v2.js: ${e.stack || e}\n`);
    process.exit(1);
  });
}
