// A local RFC 3161 time-stamp authority for the tests: @sigstore/mock's tsaHandler behind
// a Node HTTP server on 127.0.0.1. Usage: node tsa.js CHAIN_OUT.pem [MODE]
// Writes the TSA's certificate chain (signing certificate, then root) to CHAIN_OUT.pem,
// prints "PORT <n>" once listening and serves until killed.
//
// The handler speaks sigstore's JSON timestamp API; this server speaks RFC 3161 over
// HTTP (a DER TimeStampReq in, a DER TimeStampResp out) and translates. The JSON API
// carries the nonce as a JavaScript number, which cannot hold 64 bits, so the query's
// nonce bytes are put into the TSTInfo the mock builds, before the mock signs it.
//
// MODE: ok (default); garbage (answers bytes that are no TimeStampResp); wrong-nonce
// (the token answers another nonce than the query's).
'use strict';
const http = require('http');
const fs = require('fs');
const crypto = require('crypto');
const asn1js = require('asn1js');
const pkijs = require('pkijs');
const { initializeTSA, tsaHandler } = require('@sigstore/mock');

const HASHES = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

function pem(der) {
  const b64 = Buffer.from(der).toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

async function main() {
  const [out, mode = 'ok'] = process.argv.slice(2);
  if (!out) throw new Error('usage: node tsa.js CHAIN_OUT.pem [ok|garbage|wrong-nonce]');
  const keyPair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const tsa = await initializeTSA(keyPair);
  fs.writeFileSync(out, pem(tsa.intCertificate) + pem(tsa.rootCertificate));
  // The nonce of the query being answered: set just before the handler runs, read
  // when the mock builds the TSTInfo (synchronously, at the start of its timestamp()).
  let nonce = null;
  const tstInfo = tsa.tstInfo.bind(tsa);
  tsa.tstInfo = (req) => {
    const info = tstInfo(req);
    info.nonce = nonce ? new asn1js.Integer({ valueHex: nonce }) : undefined;
    return info;
  };
  // Whole seconds: the mock writes genTime's milliseconds without trailing zeros (as
  // DER wants, e.g. "…30.5Z"), and @sigstore/core reads only exactly three fraction
  // digits, so one token in ten would fail there for that reason alone.
  tsa.getCurrentTime = () => new Date(Math.floor(Date.now() / 1000) * 1000);
  const handler = tsaHandler(tsa);
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const fail = (code, message) => {
        res.writeHead(code, { 'content-type': 'text/plain' });
        res.end(message);
      };
      if (req.method !== 'POST') return fail(405, 'POST a TimeStampReq');
      if (mode === 'garbage') {
        res.writeHead(200, { 'content-type': 'application/timestamp-reply' });
        return res.end('this is not a TimeStampResp');
      }
      let query;
      try {
        query = pkijs.TimeStampReq.fromBER(Buffer.concat(chunks));
      } catch (e) {
        return fail(400, `not a TimeStampReq: ${e.message}`);
      }
      const imprint = query.messageImprint;
      const alg = HASHES[imprint.hashAlgorithm.algorithmId];
      if (!alg) return fail(400, `unsupported hash ${imprint.hashAlgorithm.algorithmId}`);
      nonce = query.nonce ? Buffer.from(query.nonce.valueBlock.valueHexView) : null;
      if (nonce && mode === 'wrong-nonce') nonce[nonce.length - 1] ^= 0x01;
      const r = await handler.fn(JSON.stringify({
        artifactHash: Buffer.from(imprint.hashedMessage.valueBlock.valueHexView).toString('base64'),
        hashAlgorithm: alg,
        certificates: query.certReq || false,
      }));
      res.writeHead(r.statusCode === 201 ? 200 : r.statusCode, {
        'content-type': r.contentType || 'text/plain',
      });
      res.end(r.response);
    });
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`PORT ${server.address().port}\n`);
  });
}

main().catch((e) => {
  process.stderr.write(`tsa.js: ${e.stack || e}\n`);
  process.exit(1);
});
