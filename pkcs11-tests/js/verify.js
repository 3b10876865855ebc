// Verifies a Sigstore bundle with @sigstore/verify, a verifier waxseal did not write.
// Usage: node verify.js BUNDLE ARTIFACT PUBLIC_KEY.pem [REKOR_PUBLIC_KEY.pem REKOR_URL]
//                       [--tsa TSA_CHAIN.pem]
// The trusted root names exactly the services given: the Rekor log (v1 or v2, by its
// key and URL) and the TSA (its certificate chain, signing certificate first).
// Nothing given: key-only bundle, tlogThreshold 0 and timestampThreshold 0. A Rekor key
// alone: the default thresholds (one tlog entry, one timestamp: a v1 SET counts). A TSA
// alone: one RFC 3161 timestamp and no tlog entry. Both: one of each. A DSSE bundle
// (waxseal attest) is checked the same way, and ARTIFACT must be one of its
// statement's subjects. Prints "OK" and exits 0, or prints the error and exits 1.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

function main() {
  const args = process.argv.slice(2);
  let tsaChainPath;
  const tsa = args.indexOf('--tsa');
  if (tsa >= 0) [, tsaChainPath] = args.splice(tsa, 2);
  const [bundlePath, artifactPath, keyPath, rekorKeyPath, rekorUrl] = args;
  if (!keyPath) throw new Error('usage: node verify.js BUNDLE ARTIFACT PUBLIC_KEY.pem [REKOR_PUBLIC_KEY.pem]');
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const artifact = fs.readFileSync(artifactPath);
  const publicKey = crypto.createPublicKey(fs.readFileSync(keyPath));
  const der = publicKey.export({ format: 'der', type: 'spki' });
  const hint = crypto.createHash('sha256').update(der).digest('base64');
  const keyFinder = (h) => {
    if (h !== hint) throw new Error(`unknown key hint ${h} (expected ${hint})`);
    return { publicKey, validFor: () => true };
  };
  const root = { mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1', tlogs: [], certificateAuthorities: [], ctlogs: [], timestampAuthorities: [] };
  let options = { tlogThreshold: 0, timestampThreshold: 0 };
  if (rekorKeyPath) {
    const logKey = crypto.createPublicKey(fs.readFileSync(rekorKeyPath));
    const logDer = logKey.export({ format: 'der', type: 'spki' });
    root.tlogs.push({
      baseUrl: rekorUrl || 'http://127.0.0.1',
      hashAlgorithm: 'SHA2_256',
      publicKey: { rawBytes: logDer.toString('base64'), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor: { start: '2000-01-01T00:00:00Z' } },
      logId: { keyId: crypto.createHash('sha256').update(logDer).digest('base64') },
    });
    options = {};
  }
  if (tsaChainPath) {
    const chain = fs.readFileSync(tsaChainPath, 'utf8')
      .match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g)
      .map((pem) => ({ rawBytes: new crypto.X509Certificate(pem).raw.toString('base64') }));
    root.timestampAuthorities.push({
      subject: { organization: 'waxseal tests', commonName: 'tsa' },
      uri: 'http://127.0.0.1',
      certChain: { certificates: chain },
      validFor: { start: '2000-01-01T00:00:00Z' },
    });
    options = { tlogThreshold: rekorKeyPath ? 1 : 0, timestampThreshold: 1 };
  }
  const trust = toTrustMaterial(TrustedRoot.fromJSON(root), keyFinder);
  new Verifier(trust, options).verify(toSignedEntity(bundle, artifact));
  // A DSSE bundle's signature covers the envelope, not the artifact: @sigstore/verify
  // leaves matching the artifact to its caller, so this harness checks that the
  // artifact's SHA-256 is one of the in-toto statement's subjects.
  if (bundle.content.$case === 'dsseEnvelope') {
    const statement = JSON.parse(bundle.content.dsseEnvelope.payload.toString('utf8'));
    const sha256 = crypto.createHash('sha256').update(artifact).digest('hex');
    const subjects = (statement.subject || []).map((s) => (s.digest || {}).sha256);
    if (!subjects.includes(sha256)) {
      throw new Error(`artifact sha256 ${sha256} is not a subject of the statement (${subjects.join(', ')})`);
    }
  }
  process.stdout.write('OK\n');
}

try {
  main();
} catch (e) {
  process.stdout.write(`FAILED: ${e.code ? e.code + ': ' : ''}${e.message}\n`);
  process.exit(1);
}
