// Holes of a local image come from qemu-img map; without it, or when it fails, the whole
// image is read, and the operator is told so: a thin 1 TiB image would read 1 TiB.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { allocatedExtents } from '../src/sources/local/allocatedExtents.ts';
import { log } from '../src/log/Logger.ts';
import { MiB, makeImage, tempDir } from './helpers/disks.ts';

/** Lines logged while fn runs, with PATH set to `path` (undefined: unchanged). */
async function logged<T>(path: string | undefined, fn: () => Promise<T>): Promise<{ value: T; lines: string[] }> {
  const lines: string[] = [];
  const before = process.env.PATH;
  log.configure({ sink: (l) => lines.push(l) });
  if (path !== undefined) process.env.PATH = path;
  try {
    return { value: await fn(), lines };
  } finally {
    process.env.PATH = before;
    log.configure({ sink: (l) => process.stderr.write(l + '\n') });
  }
}

/** Runs fn in a new temp folder, removed afterwards. */
async function inTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await tempDir();
  try {
    await fn(dir);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

test('a sparse image: only the areas written, no warning', () =>
  inTempDir(async (dir) => {
    const img = join(dir, 'thin.img');
    await makeImage(img, 64 * MiB, [[8 * MiB, Buffer.alloc(MiB, 1)], [40 * MiB, Buffer.alloc(2 * MiB, 2)]]);
    const { value, lines } = await logged(undefined, () => allocatedExtents(img, 64 * MiB));
    assert.equal(value, [
      { offset: 8 * MiB, length: MiB },
      { offset: 40 * MiB, length: 2 * MiB },
    ]);
    assert.equal(lines, []);
  }));

test('qemu-img that fails: the whole image is read and the warning names the image and the reason', () =>
  inTempDir(async (dir) => {
    const bin = join(dir, 'bin');
    await fsp.mkdir(bin);
    await fsp.writeFile(join(bin, 'qemu-img'), '#!/bin/sh\necho "qemu-img: Could not open: Permission denied" >&2\nexit 1\n', { mode: 0o700 });
    const img = join(dir, 'disk.img');
    await fsp.writeFile(img, Buffer.alloc(MiB, 3));
    const { value, lines } = await logged(`${bin}:/usr/bin:/bin`, () => allocatedExtents(img, MiB));
    assert.is(value, null);
    assert.is(lines.length, 1, lines.join('\n'));
    assert.match(lines[0]!, `qemu-img map of ${img} failed: all of it is read (qemu-img: Could not open: Permission denied)`);
  }));

test('qemu-img not installed: the whole image is read, said once per process', () =>
  inTempDir(async (dir) => {
    const img = join(dir, 'disk.img');
    await fsp.writeFile(img, Buffer.alloc(MiB, 3));
    const { value, lines } = await logged(join(dir, 'nothing-here'), async () => [await allocatedExtents(img, MiB), await allocatedExtents(img, MiB)]);
    assert.equal(value, [null, null]);
    assert.is(lines.length, 1, lines.join('\n'));
    assert.match(lines[0]!, 'qemu-img is not installed: holes in local images are read in full');
    assert.match(lines[0]!, 'install qemu-utils');
  }));

test.run();
