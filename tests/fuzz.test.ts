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
        startBlock: fc.oneof(fc.constant(0), fc.integer({ min: -8, max: 1 << 20 })),
        blockCount: fc.oneof(fc.constant(64), fc.integer({ min: -8, max: 4096 })),
        sectorsPerBlock: fc.oneof(fc.constant(128), fc.integer({ min: -1, max: 4096 }), fc.double()),
        bitCount: fc.oneof(fc.constant(64), fc.integer(), fc.anything()),
        bitmap: fc.oneof(fc.uint8Array({ minLength: 8, maxLength: 8 }).map((b) => Buffer.from(b).toString('base64')), fc.string(), fc.anything()),
      }),
      fc.integer({ min: 0, max: 1 << 30 }),
      (page, capacity) => {
        try {
          const out = bitmapExtents(page as never, { startBlock: 0, blockCount: 64 }, capacity, 'fuzz');
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
  const header: JournalHeader = { format: JOURNAL_FORMAT, repository: 'r', vm: 'v', disk: 'd', capacity: 1 << 20, blockSize: 65536, parent: null, since: null, snapshotId: 's' };
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

test.run();
