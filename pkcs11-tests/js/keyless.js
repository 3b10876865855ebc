// Keyless Sigstore bundles made by sigstore-js, for the waxseal verifier's tests:
// @sigstore/sign (FulcioSigner, RekorWitness, TSAWitness, MessageSignatureBundleBuilder)
// against @sigstore/mock's Fulcio (with its CT log), Rekor v1 and TSA handlers behind one
// Node HTTP server on 127.0.0.1, signing with a mock identity token.
// Usage: node keyless.js OUTDIR ARTIFACT [--ca-minutes-ago N]
// Writes OUTDIR/bundle.json, OUTDIR/trusted_root.json (the mock services' trusted root,
// v0.2: the Rekor log, the CT log, the Fulcio CA and the TSA, each valid from an hour
// before now) and OUTDIR/identity.json ({identity, issuer}); prints "OK" and exits.
// --ca-minutes-ago N: the Fulcio CA's clock is N minutes behind, so that its leaf
// certificate (valid ten minutes) has expired for N > 10.
'use strict';
const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const {
  initializeCA, initializeCTLog, initializeTLog, initializeTSA,
  fulcioHandler, rekorHandler, tsaHandler,
} = require('@sigstore/mock');
const {
  FulcioSigner, RekorWitness, TSAWitness, MessageSignatureBundleBuilder,
} = require('@sigstore/sign');
const { bundleToJSON } = require('@sigstore/bundle');

const IDENTITY = 'https://github.com/waxseal/release/.github/workflows/release.yml@refs/heads/main';
const ISSUER = 'https://token.actions.githubusercontent.com';

// An unsigned JWT: the mock Fulcio reads its claims and checks no signature.
function token(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`;
}

const spki = (key) => key.export({ format: 'der', type: 'spki' });
const b64 = (b) => Buffer.from(b).toString('base64');

async function main() {
  const args = process.argv.slice(2);
  let caMinutesAgo = 0;
  const i = args.indexOf('--ca-minutes-ago');
  if (i >= 0) caMinutesAgo = Number(args.splice(i, 2)[1]);
  const [outDir, artifactPath] = args;
  if (!outDir || !artifactPath) throw new Error('usage: node keyless.js OUTDIR ARTIFACT [--ca-minutes-ago N]');
  const ec = () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const [caKey, ctKey, tlogKey, tsaKey] = [ec(), ec(), ec(), ec()];
  const handlers = {};
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const h = handlers[req.url.split('?')[0]];
      if (!h || req.method !== 'POST') {
        res.writeHead(404);
        return res.end();
      }
      const r = await h(Buffer.concat(chunks).toString());
      res.writeHead(r.statusCode, { 'content-type': r.contentType || 'application/json' });
      res.end(r.response);
    });
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${server.address().port}`;
  const caClock = caMinutesAgo ? new Date(Date.now() - caMinutesAgo * 60_000) : undefined;
  const ctlog = await initializeCTLog(ctKey);
  const ca = await initializeCA(caKey, ctlog, caClock);
  const tlog = await initializeTLog(url, tlogKey);
  const tsa = await initializeTSA(tsaKey);
  // Whole seconds: see tsa.js (the mock writes genTime fractions @sigstore/core misreads).
  tsa.getCurrentTime = () => new Date(Math.floor(Date.now() / 1000) * 1000);
  for (const h of [fulcioHandler(ca), rekorHandler(tlog), tsaHandler(tsa)]) {
    handlers[h.path] = h.fn;
  }

  const jwt = token({ iss: ISSUER, sub: IDENTITY, aud: 'sigstore', exp: Math.floor(Date.now() / 1000) + 600 });
  const signer = new FulcioSigner({
    identityProvider: { getToken: async () => jwt },
    fulcioBaseURL: url,
  });
  const builder = new MessageSignatureBundleBuilder({
    signer,
    witnesses: [new RekorWitness({ rekorBaseURL: url }), new TSAWitness({ tsaBaseURL: url })],
  });
  const bundle = await builder.create({ data: fs.readFileSync(artifactPath) });

  const start = new Date(Date.now() - 3600_000).toISOString();
  const root = {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [{
      baseUrl: url,
      hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: b64(spki(tlogKey.publicKey)), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } },
      logId: { keyId: b64(crypto.createHash('sha256').update(spki(tlogKey.publicKey)).digest()) },
    }],
    certificateAuthorities: [{
      subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
      uri: url,
      certChain: { certificates: [{ rawBytes: b64(ca.rootCertificate) }] },
      validFor: { start: caClock ? new Date(caClock.getTime() - 3600_000).toISOString() : start },
    }],
    ctlogs: [{
      baseUrl: url,
      hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: b64(ctlog.publicKey), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } },
      logId: { keyId: b64(ctlog.logID) },
    }],
    timestampAuthorities: [{
      subject: { organization: 'sigstore.mock', commonName: 'tsa' },
      uri: url,
      certChain: { certificates: [{ rawBytes: b64(tsa.intCertificate) }, { rawBytes: b64(tsa.rootCertificate) }] },
      validFor: { start },
    }],
  };
  fs.writeFileSync(path.join(outDir, 'bundle.json'), JSON.stringify(bundleToJSON(bundle), null, 2));
  fs.writeFileSync(path.join(outDir, 'trusted_root.json'), JSON.stringify(root, null, 2));
  fs.writeFileSync(path.join(outDir, 'identity.json'), JSON.stringify({ identity: IDENTITY, issuer: ISSUER }));
  server.close();
  process.stdout.write('OK\n');
}

main().catch((e) => {
  process.stderr.write(`keyless.js: ${e.stack || e}\n`);
  process.exit(1);
});
