// The S3 ceiling for the benchmark: a bare loop of pre-hashed 4 MiB PutObject calls with
// the same SDK and handler settings hamal uses. Usage: node dist/bench/s3PutLoop.js FILE BUCKET PREFIX
// (endpoint and keys from HAMAL_TEST_S3_* or AWS_*).
import http from 'node:http';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';

const [file, bucket, prefix] = process.argv.slice(2) as [string, string, string];
const BS = 4 * 1024 * 1024;
const inFlight = Number(process.env.IN_FLIGHT ?? 8);
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
const client = new S3Client({
  region: 'us-east-1',
  endpoint: process.env.HAMAL_TEST_S3_ENDPOINT,
  forcePathStyle: true,
  credentials: { accessKeyId: process.env.HAMAL_TEST_S3_ACCESS_KEY!, secretAccessKey: process.env.HAMAL_TEST_S3_SECRET_KEY! },
  requestChecksumCalculation: 'WHEN_REQUIRED',
  requestHandler: new NodeHttpHandler({ httpAgent: new http.Agent({ keepAlive: true, maxSockets: 16 }) }),
});
// Blocks are read and hashed before the clock starts: this is the upload ceiling alone.
const handle = await fsp.open(file);
const size = (await handle.stat()).size;
const blocks: Array<{ body: Buffer; sha: string }> = [];
for (let off = 0; off < size; off += BS) {
  const body = Buffer.allocUnsafe(Math.min(BS, size - off));
  await handle.read(body, 0, body.length, off);
  blocks.push({ body, sha: createHash('sha256').update(body).digest('hex') });
}
await handle.close();
const started = Date.now();
let next = 0;
await Promise.all(
  Array.from({ length: inFlight }, async () => {
    for (let i = next++; i < blocks.length; i = next++) {
      const { body, sha } = blocks[i]!;
      const cmd = new PutObjectCommand({ Bucket: bucket, Key: `${prefix}${sha}`, Body: body, ContentLength: body.length });
      cmd.middlewareStack.add(
        (nxt) => async (args) => {
          (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sha;
          return nxt(args);
        },
        { step: 'build', name: 'payloadHash' },
      );
      await client.send(cmd);
    }
  }),
);
const seconds = (Date.now() - started) / 1000;
console.log(JSON.stringify({ seconds, mibPerSecond: size / 1048576 / seconds }));
client.destroy();
