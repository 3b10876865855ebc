// A local Rekor v1 for the tests: @sigstore/mock's rekorHandler behind a Node HTTP
// server on 127.0.0.1. Usage: node rekor.js LOG_PUBLIC_KEY_OUT.pem [v1|v2] [ok|refuse]
// Prints "PORT <n>" once listening; serves until killed (keyless.js takes dsseBody as a
// module). POST /api/v1/log/entries only;
// with v2, the mock's rekorV2Handler on POST /api/v2/log/entries instead (whose answers
// do not check out: rekor-v2.js is the Rekor v2 the tests sign against). MODE refuse
// answers every entry with HTTP 400, as Rekor does for an entry it cannot verify.
//
// STAND-IN PART, for `dsse` v0.0.1 entries: the mock logs whatever entry it is sent as
// the entry's body, while real Rekor (sigstore/rekor, pkg/types/dsse/v0.0.1) verifies
// the envelope's signatures with the proposed verifiers and logs a canonical body of
// hashes instead of the proposed content:
//   {"apiVersion":"0.0.1","kind":"dsse","spec":{"envelopeHash":{"algorithm":"sha256",
//    "value":HEX},"payloadHash":{...},"signatures":[{"signature":B64,"verifier":B64 PEM}]}}
// A verifier (@sigstore/verify) reads the signature and payload hash from that body, so
// the mock's body of a DSSE entry is accepted by none. This wrapper does what Rekor does
// before the mock logs: it checks the envelope (each signature over the PAE with SHA-256,
// Ed25519 over the PAE itself, as Rekor's verifiers do; 400 otherwise) and hands the mock
// the canonical body, whose SET, inclusion proof and checkpoint the mock then signs.
'use strict';
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const { initializeTLog, rekorHandler, rekorV2Handler } = require('@sigstore/mock');

const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');

// DSSE's pre-authentication encoding.
function pae(type, payload) {
  const t = Buffer.from(type, 'utf8');
  return Buffer.concat([
    Buffer.from(`DSSEv1 ${t.length} `), t, Buffer.from(` ${payload.length} `), payload,
  ]);
}

// What Rekor stores for a proposed dsse v0.0.1 entry, or an Error saying why it refuses.
function dsseBody(spec) {
  const proposed = spec && spec.proposedContent;
  if (!proposed || typeof proposed.envelope !== 'string' || !Array.isArray(proposed.verifiers)) {
    throw new Error('dsse: expected proposedContent with envelope and verifiers');
  }
  const env = JSON.parse(proposed.envelope);
  const payload = Buffer.from(env.payload || '', 'base64');
  const signed = pae(env.payloadType || '', payload);
  // Each verifier: a PEM public key, or a PEM certificate (a keyless signer's).
  const verifiers = proposed.verifiers.map((v) => {
    const pem = Buffer.from(v, 'base64').toString('utf8');
    if (pem.includes('-----BEGIN CERTIFICATE-----')) {
      const cert = new crypto.X509Certificate(pem);
      return { key: cert.publicKey, logged: cert.toString() };
    }
    const key = crypto.createPublicKey(pem);
    return { key, logged: key.export({ type: 'spki', format: 'pem' }) };
  });
  const signatures = (env.signatures || []).map((s) => {
    const sig = Buffer.from(s.sig || '', 'base64');
    const v = verifiers.find(({ key }) => crypto.verify(
      key.asymmetricKeyType === 'ed25519' ? null : 'sha256', signed, key, sig));
    if (!v) throw new Error('dsse: all signatures must have a key that verifies it');
    // Rekor logs the verifier's canonical PEM: the key's, or the certificate's.
    return { signature: s.sig, verifier: Buffer.from(v.logged).toString('base64') };
  });
  if (signatures.length === 0) throw new Error('dsse: the envelope has no signatures');
  signatures.sort((a, b) => (a.signature < b.signature ? -1 : a.signature > b.signature ? 1 : 0));
  return {
    apiVersion: '0.0.1',
    kind: 'dsse',
    spec: {
      envelopeHash: { algorithm: 'sha256', value: sha256(Buffer.from(proposed.envelope, 'utf8')) },
      payloadHash: { algorithm: 'sha256', value: sha256(payload) },
      signatures,
    },
  };
}

async function main() {
  const [out, api = 'v1', mode = 'ok'] = process.argv.slice(2);
  if (!out) throw new Error('usage: node rekor.js LOG_PUBLIC_KEY_OUT.pem [v1|v2] [ok|refuse]');
  const keyPair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  fs.writeFileSync(out, keyPair.publicKey.export({ format: 'pem', type: 'spki' }));
  let handler;
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      if (req.method !== 'POST' || req.url !== handler.path) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 404, message: `no route ${req.method} ${req.url}` }));
        return;
      }
      const refuse = (message) => {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 400, message }));
      };
      if (mode === 'refuse') return refuse('error processing entry: invalid signature');
      let body = Buffer.concat(chunks).toString('utf8');
      if (api === 'v1') {
        try {
          const proposed = JSON.parse(body);
          if (proposed.kind === 'dsse') body = JSON.stringify(dsseBody(proposed.spec));
        } catch (e) {
          return refuse(e.message);
        }
      }
      const r = await handler.fn(body);
      res.writeHead(r.statusCode, { 'content-type': r.contentType || 'text/plain' });
      res.end(r.response);
    });
  });
  server.listen(0, '127.0.0.1', async () => {
    const port = server.address().port;
    const tlog = await initializeTLog(`http://127.0.0.1:${port}`, keyPair);
    handler = api === 'v2' ? rekorV2Handler(tlog) : rekorHandler(tlog);
    process.stdout.write(`PORT ${port}\n`);
  });
}

module.exports = { dsseBody, pae };

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`rekor.js: ${e.stack || e}\n`);
    process.exit(1);
  });
}
