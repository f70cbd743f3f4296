// The vSphere client's TLS and HTTP edges against plain Node servers: a pin checked on the
// leaf whatever signed it, nothing sent to a server that fails the pin, and replies that
// are not SOAP (a proxy's error page) reported with their status and text.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { rm } from 'node:fs/promises';
import { VsphereClient } from '../src/sources/vmware/VsphereClient.ts';
import { caSigned, selfSigned, type TestCert } from './helpers/testCerts.ts';
import { tempDir } from './helpers/disks.ts';

let dir: string;
let ca: TestCert;
let leaf: TestCert;
let self: TestCert;

test.before(async () => {
  dir = await tempDir();
  ({ ca, leaf } = caSigned(dir));
  self = selfSigned(dir);
});
test.after(() => rm(dir, { recursive: true, force: true }));

/** An https server with `cert` that answers every request `status` with `body`; counts requests. */
async function server(cert: TestCert, status: number, body: string, type = 'text/html') {
  let requests = 0;
  const s = https.createServer({ cert: cert.cert, key: cert.key }, (req, res) => {
    requests++;
    req.resume();
    res.writeHead(status, { 'Content-Type': type });
    res.end(body);
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const url = `https://127.0.0.1:${(s.address() as AddressInfo).port}/sdk`;
  return { url, requests: () => requests, close: () => new Promise((r) => s.close(r)) };
}

const PROXY_PAGE = '<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>The server is temporarily unable to service your request.</body></html>';
const connect = (url: string, over: object = {}) => VsphereClient.connect({ url, username: 'u', password: 'Secret-for-tls-tests', ...over });

test('a pin on a CA-signed leaf (CA not sent, not trusted) is enough; the reply that is no SOAP is named by status and text', async () => {
  const s = await server(leaf, 503, PROXY_PAGE);
  try {
    const err = await connect(s.url, { thumbprint: leaf.fingerprint256 }).then(() => assert.unreachable(), (e) => e);
    assert.is(err.code, 'VSPHERE_HTTP_ERROR', err.message);
    assert.match(err.message, /RetrieveServiceContent on 127\.0\.0\.1:\d+: HTTP 503, not a SOAP reply: "503 Service Unavailable Service Unavailable The server is temporarily/);
    assert.ok(err.retryable);
    assert.ok(s.requests() >= 1, 'the request reached the pinned server');
  } finally {
    await s.close();
  }
});

test('a wrong pin: refused naming the expected and the presented thumbprints, and nothing is sent', async () => {
  const s = await server(leaf, 200, '');
  try {
    const wrong = ca.fingerprint256;
    const err = await connect(s.url, { thumbprint: wrong.toLowerCase() }).then(() => assert.unreachable(), (e) => e);
    assert.is(err.code, 'TLS_THUMBPRINT_MISMATCH', err.message);
    assert.ok(err.message.includes(`expected ${wrong}`), err.message);
    assert.ok(err.message.includes(`presented SHA-256 ${leaf.fingerprint256}`), err.message);
    assert.is(s.requests(), 0, 'no request (no password, no cookie) was written to it');
  } finally {
    await s.close();
  }
});

test('without a pin: the CA file verifies the chain; neither CA nor pin is refused; a self-signed leaf takes its pin', async () => {
  const signed = await server(leaf, 500, 'not xml at all', 'text/plain');
  const selfServer = await server(self, 404, '');
  try {
    const viaCa = await connect(signed.url, { caFile: ca.certFile }).then(() => assert.unreachable(), (e) => e);
    assert.match(viaCa.message, /HTTP 500, not a SOAP reply: "not xml at all"/);
    const none = await connect(signed.url).then(() => assert.unreachable(), (e) => e);
    assert.is(none.code, 'VSPHERE_UNREACHABLE');
    assert.match(none.message, /cannot reach 127\.0\.0\.1:\d+: unable to (get local issuer|verify the first) certificate/);
    const pinned = await connect(selfServer.url, { thumbprint: self.fingerprint256 }).then(() => assert.unreachable(), (e) => e);
    assert.match(pinned.message, /HTTP 404, not a SOAP reply \(empty body\)/);
    const unpinned = await connect(selfServer.url).then(() => assert.unreachable(), (e) => e);
    assert.match(unpinned.message, /self-signed certificate/);
  } finally {
    await signed.close();
    await selfServer.close();
  }
});

test.run();
