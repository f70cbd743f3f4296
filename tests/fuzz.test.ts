// Property-based fuzzing (fast-check, fixed seed, bounded runs) of the parsers that read
// bytes hamal does not control: every input either parses or fails with hamal's own
// error naming the input, never a crash (TypeError, RangeError), a hang or a write out of
// bounds. Seeds and run counts are fixed so CI is reproducible and well under 60 s.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { promises as fsp } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { HamalError } from '../src/errors.ts';
import { parseManifest } from '../src/repo/Manifest.ts';
import { parseTask } from '../src/tasks/loadTask.ts';
import { parseConfig } from '../src/config/loadConfig.ts';
import { bitmapExtents } from '../src/sources/fusion_compute/cbtBitmap.ts';
import { Journal, JOURNAL_FORMAT, type JournalHeader } from '../src/repo/Journal.ts';
import { tempDir } from './helpers/disks.ts';
import { generateKeyPairSync, sign } from 'node:crypto';
import { parseSoapReply } from '../src/sources/vmware/SoapReply.ts';
import { changedAreasPage } from '../src/sources/vmware/changedAreas.ts';
import { parseRbdDiff } from '../src/ceph/Rbd.ts';
import { tasksOf } from '../src/service/HttpControlPlane.ts';
import { acceptTask, TaskAnswered, TaskElsewhere, TaskRejected } from '../src/service/SignedTask.ts';
import { TaskLedger } from '../src/service/TaskLedger.ts';
import { canonicalJson } from '../src/canonicalJson.ts';
import { ChunkCodec } from '../src/repo/ChunkCodec.ts';
import { MasterKey } from '../src/repo/MasterKey.ts';
import { zstd } from '../src/repo/Zstd.ts';

const SEED = 20261125;
const ours = (f: () => unknown) => {
  try {
    f();
    return true;
  } catch (err) {
    if (err instanceof HamalError) return true;
    throw err;
  }
};

/** JSON-ish text: valid JSON of arbitrary shape, JSON of the expected shape with junk values, and raw noise. */
const jsonish = (shape: fc.Arbitrary<unknown>) => fc.oneof(fc.json(), shape.map((v) => JSON.stringify(v)), fc.string(), fc.uint8Array().map((b) => Buffer.from(b).toString('latin1')));

test('manifests: any bytes parse or fail as MANIFEST_CORRUPT / FORMAT_UNKNOWN', () => {
  const shape = fc.record({ format: fc.oneof(fc.constant(1), fc.anything()), capacity: fc.anything(), blockSize: fc.anything(), blocks: fc.anything() }, { requiredKeys: [] });
  fc.assert(
    fc.property(jsonish(shape), (text) => ours(() => parseManifest(Buffer.from(text, 'latin1'), 'fuzz'))),
    { seed: SEED, numRuns: 3000 },
  );
});

test('task files: any text parses or fails as a UsageError naming the file', () => {
  const shape = fc.record(
    { version: fc.oneof(fc.constant(1), fc.anything()), source: fc.anything(), target: fc.anything(), schedule: fc.anything(), options: fc.anything() },
    { requiredKeys: [] },
  );
  fc.assert(
    fc.property(jsonish(shape), (text) => {
      try {
        parseTask(text, 'fuzz.json');
      } catch (err) {
        if (!(err instanceof HamalError)) throw err;
        assert.match(err.message, 'fuzz.json');
      }
      return true;
    }),
    { seed: SEED, numRuns: 2000 },
  );
});

test('hamal.conf: any text parses or fails as a UsageError', () => {
  const line = fc.oneof(
    fc.constantFrom('[DEFAULT]', '[mass]', '[hamal]', '[s3]', '[vmware]', '[', ']', '= x', 'debug = True', 'interval = -1', 'interval = 99999999999', 'mass_endpoint = ftp://x'),
    fc.tuple(fc.constantFrom('debug', 'interval', 'max_logfile_size_mb', 'mass_endpoint', 'local_host_ip', 'log_rotation_type', 'x'), fc.string()).map(([k, v]) => `${k} = ${v}`),
    fc.string(),
  );
  fc.assert(
    fc.property(fc.array(line, { maxLength: 30 }), (lines) => ours(() => parseConfig(lines.join('\n'), 'fuzz.conf'))),
    { seed: SEED, numRuns: 2000 },
  );
});

test('FusionCompute bitmaps: any answer gives extents inside the disk, ascending and disjoint, or FC_BAD_BITMAP', () => {
  fc.assert(
    fc.property(
      fc.record({
        sectorOfBlock: fc.oneof(fc.constant(128), fc.integer({ min: -1, max: 4096 }), fc.double()),
        bitNum: fc.oneof(fc.constant(64), fc.integer({ min: -8, max: 80 }), fc.anything()),
        bit1Num: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.anything()),
        bitMap: fc.oneof(
          fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => Buffer.from(b).toString('hex')),
          fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => Buffer.from(b).toString('base64')),
          fc.string(),
          fc.anything(),
        ),
      }),
      fc.integer({ min: 0, max: 1 << 30 }),
      (page, capacity) => {
        try {
          const out = bitmapExtents(page as never, { startBlock: 0, blockNum: 64 }, capacity, 'fuzz');
          let end = -1;
          for (const e of out) {
            assert.ok(e.length > 0 && e.offset > end && e.offset + e.length <= capacity, JSON.stringify(e));
            end = e.offset + e.length;
          }
        } catch (err) {
          if (!(err instanceof HamalError) || err.code !== 'FC_BAD_BITMAP') throw err;
        }
        return true;
      },
    ),
    { seed: SEED, numRuns: 10000 },
  );
});

test('journals: any bytes on disk are resumed only when they check out, never thrown on', async () => {
  const dir = await tempDir();
  const header: JournalHeader = { format: JOURNAL_FORMAT, repository: 'r', vm: 'v', disk: 'd', capacity: 1 << 20, blockSize: 65536, parent: null, since: null, snapshotId: 's', changeId: null, generation: 0 };
  const path = Journal.pathFor(dir, header);
  await fsp.mkdir(join(path, '..'), { recursive: true });
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 600 }), fc.boolean(), jsonish(fc.record({ bytes: fc.anything(), sha256: fc.anything(), format: fc.anything() }, { requiredKeys: [] })), async (journal, matching, junk) => {
      // Half the time the checkpoint covers the bytes exactly, so the journal's own content is what gets checked.
      const ckpt = matching ? JSON.stringify({ format: 1, bytes: journal.length, records: 0, sha256: createHash('sha256').update(journal).digest('hex') }) : junk;
      await fsp.writeFile(path, journal);
      await fsp.writeFile(path.replace(/\.journal$/, '.checkpoint'), ckpt, 'latin1');
      const r = await Journal.recover(path, header);
      assert.ok(['none', 'resumed', 'truncated', 'corrupt', 'mismatch'].includes(r.status), r.status);
      if (r.status === 'resumed') for (const [i] of r.entries) assert.ok(i >= 0 && i < 16, `block ${i} outside the disk`);
      return true;
    }),
    { seed: SEED, numRuns: 300 },
  );
});

/** XML-shaped text: a SOAP envelope of random depth and names, with vim25-like elements, or noise. */
const xmlish = () => {
  const name = fc.constantFrom('soapenv:Envelope', 'soapenv:Body', 'Envelope', 'Body', 'soapenv:Fault', 'faultstring', 'detail', 'NotAuthenticatedFault', 'RetrievePropertiesResponse', 'returnval', 'changedArea', 'x', 'a:b:c');
  const text = fc.oneof(fc.string({ maxLength: 20 }), fc.constant('<![CDATA[x]]>'), fc.constant('&amp;'), fc.constant('&bogus;'));
  const el: fc.Memo<string> = fc.memo((n) =>
    n <= 1 ? fc.tuple(name, text).map(([k, t]) => `<${k}>${t}</${k}>`) : fc.tuple(name, fc.array(el(n - 1), { maxLength: 4 }), fc.boolean()).map(([k, kids, close]) => `<${k}>${kids.join('')}${close ? `</${k}>` : ''}`),
  );
  return fc.oneof(el(5), el(5).map((b) => `<soapenv:Envelope><soapenv:Body>${b}</soapenv:Body></soapenv:Envelope>`), fc.string(), fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b).toString('latin1')));
};

test('SOAP replies: any text gives returnval as a list, a fault, or VSPHERE_BAD_REPLY', () => {
  fc.assert(
    fc.property(xmlish(), fc.constantFrom(200, 500), (text, status) =>
      ours(() => {
        const r = parseSoapReply(text, 'RetrieveProperties', 'vc.test', status);
        assert.ok(Array.isArray(r.returnval));
        if (r.fault) assert.type(r.fault.message, 'string');
      }),
    ),
    { seed: SEED, numRuns: 3000 },
  );
});

test('changed areas (QueryChangedDiskAreas): any reply gives areas inside the page and the disk and a next start that moves on, or CBT_BAD_REPLY', () => {
  const capacity = 1 << 30;
  const num = fc.oneof(fc.integer({ min: -10, max: capacity + 10 }), fc.constant('123'), fc.constant('1e3'), fc.anything());
  const area = fc.oneof(fc.record({ start: num, length: num }, { requiredKeys: [] }), fc.anything());
  const info = fc.oneof(fc.record({ startOffset: num, length: num, changedArea: fc.oneof(fc.array(area, { maxLength: 5 }), area) }, { requiredKeys: [] }), fc.anything());
  fc.assert(
    fc.property(info, fc.integer({ min: 0, max: capacity - 1 }), (reply, start) =>
      ours(() => {
        const page = changedAreasPage(reply, start, capacity, 'disk 2000 of vm-1');
        for (const e of page.extents) assert.ok(Number.isSafeInteger(e.offset) && e.offset >= 0 && Number.isSafeInteger(e.length) && e.length > 0 && e.offset + e.length <= capacity, JSON.stringify(e));
        if (page.next !== null) assert.ok(page.next > start && page.next < capacity, `next ${page.next} after ${start}`);
      }),
    ),
    { seed: SEED, numRuns: 5000 },
  );
});

test('rbd diff output: any text gives extents of whole non-negative bytes, or RBD_BAD_OUTPUT', () => {
  const ext = fc.record({ offset: fc.oneof(fc.nat(), fc.anything()), length: fc.oneof(fc.nat(), fc.anything()), exists: fc.anything() }, { requiredKeys: [] });
  fc.assert(
    fc.property(jsonish(fc.array(ext, { maxLength: 5 })), (text) =>
      ours(() => {
        for (const e of parseRbdDiff(text, 'changes of volumes/v@s')) assert.ok(Number.isSafeInteger(e.offset) && e.offset >= 0 && Number.isSafeInteger(e.length) && e.length > 0);
      }),
    ),
    { seed: SEED, numRuns: 3000 },
  );
});

test('control-plane answers: any poll body gives signed tasks that are accepted or rejected with a reason, never a crash', async () => {
  const dir = await tempDir();
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const nonces = new TaskLedger(join(dir, 'tasks'));
  const envelope = fc.record(
    {
      id: fc.oneof(fc.string(), fc.jsonValue()),
      proxyId: fc.oneof(fc.constant('p1'), fc.jsonValue()),
      issuedAt: fc.oneof(fc.constant(new Date().toISOString()), fc.jsonValue()),
      expiresAt: fc.oneof(fc.constant(new Date(Date.now() + 3600_000).toISOString()), fc.jsonValue()),
      nonce: fc.oneof(fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: 16, maxLength: 32 }), fc.jsonValue()),
      task: fc.oneof(fc.constant({ version: 1, source: { platform: 'local', vm: 'v', disks: [{ path: '/dev/null' }] } }), fc.jsonValue()),
      lease: fc.oneof(fc.record({ epoch: fc.oneof(fc.nat(), fc.jsonValue()), ttlSeconds: fc.oneof(fc.nat(), fc.jsonValue()) }), fc.jsonValue()),
    },
    { requiredKeys: [] },
  );
  // Half the envelopes are signed properly, so the checks after the signature are reached.
  const signedTask = fc.oneof(envelope.map((e) => ({ envelope: e, signature: sign(null, Buffer.from(canonicalJson(e)), privateKey).toString('base64') })), fc.record({ envelope: fc.jsonValue(), signature: fc.jsonValue() }, { requiredKeys: [] }), fc.jsonValue());
  const body = fc.oneof(fc.record({ tasks: fc.oneof(fc.array(signedTask, { maxLength: 3 }), fc.jsonValue()) }, { requiredKeys: [] }), fc.jsonValue());
  await fc.assert(
    fc.asyncProperty(body, async (b) => {
      let tasks: unknown[];
      try {
        tasks = tasksOf(b, 'http://cp.test/v1/proxies/p1/tasks');
      } catch (err) {
        assert.instance(err, HamalError);
        return true;
      }
      for (const t of tasks) {
        try {
          const ok = await acceptTask(t, publicKey, 'p1', nonces);
          assert.not.ok(ok instanceof TaskAnswered || ok instanceof TaskElsewhere, 'nothing ended or runs elsewhere');
          if (ok instanceof TaskAnswered || ok instanceof TaskElsewhere) continue;
          assert.type(ok.id, 'string');
          if (ok.lease) assert.ok(ok.lease.epoch >= 1 && ok.lease.ttlSeconds >= 3);
        } catch (err) {
          if (!(err instanceof TaskRejected)) throw err;
        }
      }
      return true;
    }),
    { seed: SEED, numRuns: 400 },
  );
});

test('stored chunks of format 2: any bytes decode to at most a block or fail as CHUNK_CORRUPT naming the chunk', async () => {
  const z = await zstd();
  const key = MasterKey.generate();
  const codec = new ChunkCodec('zstd', 'aes-256-gcm', key, z, 64 * 1024);
  const plainCodec = new ChunkCodec('zstd', 'none', null, z, 64 * 1024);
  const real = codec.encode('id', Buffer.alloc(50_000, 7));
  const realPlain = plainCodec.encode('id', Buffer.alloc(50_000, 7));
  // Raw noise, and real chunks with bytes flipped, cut or appended.
  const mutated = (base: Buffer) =>
    fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 1, max: 255 }), fc.nat(base.length), fc.uint8Array({ maxLength: 8 })).map(([at, x, cut, tail]) => {
      const b = Buffer.from(base);
      b[at]! ^= x;
      return Buffer.concat([b.subarray(0, Math.max(cut, 5)), tail]);
    });
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }).map((u) => Buffer.from(u)), mutated(real), mutated(realPlain)), fc.boolean(), (bytes, encrypted) =>
      ours(() => {
        const out = (encrypted ? codec : plainCodec).decode('id', 'chunks/id', Buffer.from(bytes));
        assert.ok(out.length <= 64 * 1024);
      }),
    ),
    { seed: SEED, numRuns: 2000 },
  );
});

test.run();
