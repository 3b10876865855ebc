// Keyless Sigstore bundles made by sigstore-js, for the waxseal verifier's tests and the
// fuzz seeds: @sigstore/sign (FulcioSigner, RekorWitness, TSAWitness,
// MessageSignatureBundleBuilder, DSSEBundleBuilder) against @sigstore/mock's Fulcio (with
// its CT log), Rekor v1 and TSA handlers and the Rekor v2 stand-in of rekor-v2.js, behind
// one Node HTTP server on 127.0.0.1, signing with a mock identity token.
// Usage: node keyless.js OUTDIR ARTIFACT [--ca-minutes-ago N] [--log-minutes-ahead N] [--sha512-subject] [--make LIST]
// LIST: comma-separated bundles to make, each KIND-LOG with KIND `message` (a message
// signature over ARTIFACT) or `dsse` (an in-toto v1 statement naming ARTIFACT as its
// subject, in a DSSE envelope) and LOG `v1` (Rekor v1: hashedrekord 0.0.1, or dsse 0.0.1
// through rekor.js's dsseBody, as Rekor logs it) or `v2` (Rekor v2: hashedrekord or dsse
// 0.0.2). Every bundle also has an RFC 3161 timestamp. Default: message-v1.
// Writes OUTDIR/KIND-LOG.json for each, OUTDIR/bundle.json (the first of them),
// OUTDIR/trusted_root.json (the services' trusted root, v0.1 media type, both logs, the
// CT log, the Fulcio CA and the TSA, each valid from an hour before now) and
// OUTDIR/identity.json ({identity, issuer}); prints "OK" and exits.
// --ca-minutes-ago N: the Fulcio CA's clock is N minutes behind, so that its leaf
// certificate (valid ten minutes) has expired for N > 10.
// --sha512-subject: the statement names ARTIFACT by SHA-512 only (as npm's provenance).
// --log-minutes-ahead N: Rekor v1's clock is N minutes ahead, so that the integrated
// time its signed entry timestamp vouches for lies in the future.
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
  FulcioSigner, RekorWitness, TSAWitness, MessageSignatureBundleBuilder, DSSEBundleBuilder,
} = require('@sigstore/sign');
const { dsseBody } = require('./rekor.js');
const { createLog } = require('./rekor-v2.js');
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
  let logMinutesAhead = 0;
  const j = args.indexOf('--log-minutes-ahead');
  if (j >= 0) logMinutesAhead = Number(args.splice(j, 2)[1]);
  const sha512Subject = args.includes('--sha512-subject');
  if (sha512Subject) args.splice(args.indexOf('--sha512-subject'), 1);
  let make = ['message-v1'];
  const m = args.indexOf('--make');
  if (m >= 0) make = args.splice(m, 2)[1].split(',');
  for (const item of make) {
    if (!/^(message|dsse)-v[12]$/.test(item)) throw new Error(`--make: unknown bundle ${item}`);
  }
  const [outDir, artifactPath] = args;
  if (!outDir || !artifactPath) throw new Error('usage: node keyless.js OUTDIR ARTIFACT [--ca-minutes-ago N] [--log-minutes-ahead N] [--sha512-subject] [--make LIST]');
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
      let r;
      try {
        r = await h(Buffer.concat(chunks).toString());
      } catch (e) {
        r = { statusCode: 400, response: JSON.stringify({ code: 400, message: e.message }) };
      }
      res.writeHead(r.statusCode, { 'content-type': r.contentType || 'application/json' });
      res.end(r.response);
    });
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${server.address().port}`;
  const caClock = caMinutesAgo ? new Date(Date.now() - caMinutesAgo * 60_000) : undefined;
  const ctlog = await initializeCTLog(ctKey);
  const ca = await initializeCA(caKey, ctlog, caClock);
  const logClock = logMinutesAhead ? new Date(Date.now() + logMinutesAhead * 60_000) : undefined;
  const tlog = await initializeTLog(url, tlogKey, logClock);
  const tsa = await initializeTSA(tsaKey);
  // Whole seconds: see tsa.js (the mock writes genTime fractions @sigstore/core misreads).
  tsa.getCurrentTime = () => new Date(Math.floor(Date.now() / 1000) * 1000);
  for (const h of [fulcioHandler(ca), rekorHandler(tlog), tsaHandler(tsa)]) {
    handlers[h.path] = h.fn;
  }
  // Rekor v1 logs a dsse entry as Rekor does (rekor.js), then lets the mock sign it.
  const v1 = handlers['/api/v1/log/entries'];
  handlers['/api/v1/log/entries'] = (body) => {
    const proposed = JSON.parse(body);
    return v1(proposed.kind === 'dsse' ? JSON.stringify(dsseBody(proposed.spec)) : body);
  };
  const tlogV2 = createLog(`127.0.0.1:${server.address().port}`);
  handlers['/api/v2/log/entries'] = async (body) => ({
    statusCode: 201,
    response: JSON.stringify(tlogV2.entry(JSON.parse(body))),
  });

  const jwt = token({ iss: ISSUER, sub: IDENTITY, aud: 'sigstore', exp: Math.floor(Date.now() / 1000) + 600 });
  const signer = new FulcioSigner({
    identityProvider: { getToken: async () => jwt },
    fulcioBaseURL: url,
  });
  const data = fs.readFileSync(artifactPath);
  const statement = Buffer.from(JSON.stringify({
    _type: 'https://in-toto.io/Statement/v1',
    subject: [{
      name: path.basename(artifactPath),
      digest: sha512Subject
        ? { sha512: crypto.createHash('sha512').update(data).digest('hex') }
        : { sha256: crypto.createHash('sha256').update(data).digest('hex') },
    }],
    predicateType: 'https://slsa.dev/provenance/v1',
    predicate: { buildDefinition: { buildType: 'https://waxseal.dev/test' } },
  }));
  const bundles = {};
  for (const item of make) {
    const [kind, log] = item.split('-');
    const witnesses = [
      new RekorWitness({ rekorBaseURL: url, majorApiVersion: log === 'v2' ? 2 : 1 }),
      new TSAWitness({ tsaBaseURL: url }),
    ];
    const builder = kind === 'dsse'
      ? new DSSEBundleBuilder({ signer, witnesses })
      : new MessageSignatureBundleBuilder({ signer, witnesses });
    bundles[item] = kind === 'dsse'
      ? await builder.create({ data: statement, type: 'application/vnd.in-toto+json' })
      : await builder.create({ data });
  }

  const start = new Date(Date.now() - 3600_000).toISOString();
  const root = {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [tlogKey.publicKey, tlogV2.publicKey].map((key) => ({
      baseUrl: url,
      hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: b64(spki(key)), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start } },
      logId: { keyId: b64(crypto.createHash('sha256').update(spki(key)).digest()) },
    })),
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
  for (const [item, bundle] of Object.entries(bundles)) {
    fs.writeFileSync(path.join(outDir, `${item}.json`), JSON.stringify(bundleToJSON(bundle), null, 2));
  }
  fs.writeFileSync(path.join(outDir, 'bundle.json'), JSON.stringify(bundleToJSON(bundles[make[0]]), null, 2));
  fs.writeFileSync(path.join(outDir, 'trusted_root.json'), JSON.stringify(root, null, 2));
  fs.writeFileSync(path.join(outDir, 'identity.json'), JSON.stringify({ identity: IDENTITY, issuer: ISSUER }));
  server.close();
  process.stdout.write('OK\n');
}

main().catch((e) => {
  process.stderr.write(`keyless.js: ${e.stack || e}\n`);
  process.exit(1);
});
