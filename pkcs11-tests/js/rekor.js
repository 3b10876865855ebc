// A local Rekor v1 for the tests: @sigstore/mock's rekorHandler behind a Node HTTP
// server on 127.0.0.1. Usage: node rekor.js LOG_PUBLIC_KEY_OUT.pem [v1|v2]
// Prints "PORT <n>" once listening; serves until killed. POST /api/v1/log/entries only;
// with v2, the mock's rekorV2Handler on POST /api/v2/log/entries instead (whose answers
// do not check out: rekor-v2.js is the Rekor v2 the tests sign against).
'use strict';
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const { initializeTLog, rekorHandler, rekorV2Handler } = require('@sigstore/mock');

async function main() {
  const [out, api = 'v1'] = process.argv.slice(2);
  if (!out) throw new Error('usage: node rekor.js LOG_PUBLIC_KEY_OUT.pem [v1|v2]');
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
      const r = await handler.fn(Buffer.concat(chunks).toString('utf8'));
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

main().catch((e) => {
  process.stderr.write(`rekor.js: ${e.stack || e}\n`);
  process.exit(1);
});
