// Verifies a Sigstore bundle with @sigstore/verify against a TrustedRoot file (as
// `waxseal ca trusted-root` writes it), not one this harness builds.
// Usage: node verify-root.js BUNDLE ARTIFACT TRUSTED_ROOT.json TLOGS TIMESTAMPS [PUBLIC_KEY.pem]
// TLOGS and TIMESTAMPS are the thresholds; no CT log SCT is asked for. A certificate
// bundle is checked against the root's certificateAuthorities; a key bundle needs
// PUBLIC_KEY. Prints "OK" and exits 0, or prints the error and exits 1.
'use strict';
const fs = require('fs');
const crypto = require('crypto');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

function main() {
  const [bundlePath, artifactPath, rootPath, tlogs, stamps, keyPath] = process.argv.slice(2);
  if (!stamps) throw new Error('usage: node verify-root.js BUNDLE ARTIFACT TRUSTED_ROOT TLOGS TIMESTAMPS [PUBLIC_KEY]');
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const artifact = fs.readFileSync(artifactPath);
  let keyFinder;
  if (keyPath) {
    const publicKey = crypto.createPublicKey(fs.readFileSync(keyPath));
    const der = publicKey.export({ format: 'der', type: 'spki' });
    const hint = crypto.createHash('sha256').update(der).digest('base64');
    keyFinder = (h) => {
      if (h !== hint) throw new Error(`unknown key hint ${h}`);
      return { publicKey, validFor: () => true };
    };
  }
  const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(rootPath, 'utf8')));
  const trust = toTrustMaterial(root, keyFinder);
  const options = { tlogThreshold: Number(tlogs), ctlogThreshold: 0, timestampThreshold: Number(stamps) };
  new Verifier(trust, options).verify(toSignedEntity(bundle, artifact));
  process.stdout.write('OK\n');
}

try {
  main();
} catch (e) {
  process.stdout.write(`FAILED: ${e.code ? e.code + ': ' : ''}${e.message}\n`);
  process.exit(1);
}
