// Verifies a keyless Sigstore bundle with @sigstore/verify, as `sigstore verify` would
// with a certificate identity: against a TrustedRoot file, requiring one transparency
// log entry, one SCT from a CT log of the root and one verified time (a timestamp or a
// signed entry timestamp), and the leaf's SAN and Fulcio OIDC issuer given.
// Usage: node verify-keyless.js BUNDLE TRUSTED_ROOT.json IDENTITY ISSUER [ARTIFACT]
// ARTIFACT is needed for a message signature; a DSSE envelope carries its payload.
// Prints "OK" and exits 0, or prints "FAILED: CODE: message" and exits 1.
'use strict';
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

function main() {
  const [bundlePath, rootPath, identity, issuer, artifactPath] = process.argv.slice(2);
  if (!issuer) throw new Error('usage: node verify-keyless.js BUNDLE TRUSTED_ROOT IDENTITY ISSUER [ARTIFACT]');
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(bundlePath, 'utf8')));
  const artifact = artifactPath ? fs.readFileSync(artifactPath) : undefined;
  const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(rootPath, 'utf8')));
  const options = { tlogThreshold: 1, ctlogThreshold: 1, timestampThreshold: 1 };
  const verifier = new Verifier(toTrustMaterial(root), options);
  verifier.verify(toSignedEntity(bundle, artifact), {
    subjectAlternativeName: identity,
    extensions: { issuer },
  });
  process.stdout.write('OK\n');
}

try {
  main();
} catch (e) {
  process.stdout.write(`FAILED: ${e.code ? e.code + ': ' : ''}${e.message}\n`);
  process.exit(1);
}
