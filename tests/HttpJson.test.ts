import { test } from 'uvu';
import * as assert from 'uvu/assert';
import net from 'node:net';
import { once } from 'node:events';
import { HttpJson } from '../src/sources/http/HttpJson.ts';
import { HamalError } from '../src/errors.ts';

/**
 * A raw TCP server that answers HTTP requests as `answer` says: 'ok' replies and keeps the
 * connection, 'reset' resets the connection without a reply (a server closing an idle
 * keep-alive socket just as the request arrives).
 */
async function rawServer(answer: (connection: number, request: number) => 'ok' | 'reset') {
  const seen: Array<{ connection: number; request: number; line: string }> = [];
  let connections = 0;
  const server = net.createServer((socket) => {
    const connection = ++connections;
    let request = 0;
    let buffered = '';
    socket.on('data', (d) => {
      buffered += d.toString('latin1');
      for (let end = buffered.indexOf('\r\n\r\n'); end >= 0; end = buffered.indexOf('\r\n\r\n')) {
        const head = buffered.slice(0, end);
        const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffered.length < end + 4 + length) return;
        buffered = buffered.slice(end + 4 + length);
        request++;
        seen.push({ connection, request, line: head.split('\r\n')[0]! });
        if (answer(connection, request) === 'reset') {
          socket.resetAndDestroy();
          return;
        }
        const body = JSON.stringify({ connection, request });
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: keep-alive\r\n\r\n${body}`);
      }
    });
    socket.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  return { url, seen, close: () => server.close() };
}

test('a kept-alive socket the server reset is not an error: the request goes again on a new connection', async () => {
  // The second request on the first connection is reset, as an idle timeout closing it would.
  const s = await rawServer((c, r) => (c === 1 && r === 2 ? 'reset' : 'ok'));
  const http = new HttpJson(undefined, 5000);
  try {
    assert.equal((await http.request('GET', `${s.url}/a`)).body, { connection: 1, request: 1 });
    const again = await http.request('POST', `${s.url}/v1/tasks/t/succeeded`, {}, { ok: true });
    assert.is(again.status, 200);
    assert.equal(again.body, { connection: 2, request: 1 });
    assert.equal(
      s.seen.map((x) => `${x.connection}:${x.line}`),
      ['1:GET /a HTTP/1.1', '1:POST /v1/tasks/t/succeeded HTTP/1.1', '2:POST /v1/tasks/t/succeeded HTTP/1.1'],
    );
  } finally {
    http.close();
    s.close();
  }
});

test('a reset on a fresh connection is not retried: a retryable error naming the URL', async () => {
  const s = await rawServer(() => 'reset');
  const http = new HttpJson(undefined, 5000);
  try {
    const err = await http.request('POST', `${s.url}/v1/proxies/p/heartbeat`, {}, {}).then(
      () => null,
      (e: unknown) => e,
    );
    assert.instance(err, HamalError);
    assert.is((err as HamalError).code, 'HTTP_UNREACHABLE');
    assert.ok((err as HamalError).retryable);
    assert.match((err as Error).message, `POST ${s.url}/v1/proxies/p/heartbeat`);
    assert.is(s.seen.length, 1, 'sent once');
  } finally {
    http.close();
    s.close();
  }
});

test.run();
