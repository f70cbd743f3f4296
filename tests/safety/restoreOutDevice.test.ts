// `hamal restore --out /dev/loopN` on real loop devices over files in the test's folder:
// refused without --force, while mounted, while held, when smaller than the version, all
// before a byte is written; written whole with --force when none of these holds.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp, constants as fsc, createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { hamal, TEST_CONFIG, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from '../helpers/disks.ts';
import { loopDevicesAvailable, mkfsExt4, withLoopDevice, withMount } from '../helpers/loopDevice.ts';

let dir: string;
let repo: string;
let img: string;
let loops = false;
const versions: Array<{ version: string; sha: string }> = [];
const CAPACITY = MiB + 12345;
const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

const restore = (out: string, ...flags: string[]): Promise<Run> => hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', out, ...flags]);

const sync = async () => {
  const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json']);
  assert.is(r.code, 0, r.stderr);
  versions.push({ version: JSON.parse(r.stdout).disks[0].version, sha: await sha256File(img) });
};

/** Runs hamal's sources under Deno, as `deno task hamal` does. */
function deno(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(join(ROOT, 'node_modules/.bin/deno'), ['run', '--allow-all', join(ROOT, 'src/cli/hamal.ts'), ...args], { env: { ...process.env, HAMAL_CONFIG: TEST_CONFIG }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

/** SHA-256 of the first `length` bytes of a file or device. */
async function sha256Head(path: string, length: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { start: 0, end: length - 1 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const h = await fsp.open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await h.read(buf, 0, length, offset);
    return buf;
  } finally {
    await h.close();
  }
}

/** A sparse backing file of `size` bytes holding a recognisable pattern (not the version). */
async function backing(name: string, size: number): Promise<string> {
  const file = join(dir, name);
  await makeImage(file, size, [[0, pattern(size, 1234)]]);
  return file;
}

/** The test body with a loop device over a fresh backing file, or a printed note where there are none. */
const onLoop = (name: string, size: number, fn: (device: string, file: string) => Promise<void>) => async () => {
  if (!loops) {
    console.log(`  skipped (no usable losetup here): ${name}`);
    return;
  }
  const file = await backing(`${name}.backing`, size);
  await withLoopDevice(file, (device) => fn(device, file));
};

test.before(async () => {
  loops = await loopDevicesAvailable();
  dir = await tempDir('hamal-restore-dev-');
  repo = join(dir, 'repo');
  img = join(dir, 'disk.img');
  await makeImage(img, CAPACITY, [[0, pattern(CAPACITY, 8)]]);
  await sync();
  await writeAt(img, 5 * 65536 + 17, pattern(70_000, 9));
  await sync();
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

test(
  'a block device without --force is refused, with --from too; nothing is written',
  onLoop('noforce', 2 * MiB, async (device, file) => {
    const sha = await sha256File(file);
    for (const flags of [[], ['--from', versions[0]!.version]]) {
      const r = await restore(device, ...flags);
      assert.is(r.code, 2, r.stderr);
      assert.ok(r.stderr.includes(`${device} is a block device: writing it destroys what it holds; use --force to write it`), r.stderr);
    }
    assert.is(await sha256File(file), sha);
  }),
);

test(
  'a block device smaller than the version is refused with --force, before a byte is written',
  onLoop('small', MiB, async (device, file) => {
    const sha = await sha256File(file);
    const r = await restore(device, '--force');
    assert.is(r.code, 1, r.stderr);
    assert.ok(r.stderr.includes(`block device ${device} is ${MiB} bytes, smaller than the version's ${CAPACITY}: refusing to write it`), r.stderr);
    assert.is(await sha256File(file), sha, 'the backing file is unchanged');
  }),
);

test(
  'a mounted block device is refused with --force, naming the mount point; its superblock stays intact',
  onLoop('mounted', 4 * MiB, async (device, file) => {
    await mkfsExt4(device);
    const mnt = join(dir, 'mnt');
    await fsp.mkdir(mnt);
    await withMount(device, mnt, async () => {
      await fsp.writeFile(join(mnt, 'kept.txt'), 'still here');
      const r = await restore(device, '--force');
      assert.is(r.code, 1, r.stderr);
      assert.ok(r.stderr.includes(`block device ${device} is mounted on ${mnt}: refusing to write it`), r.stderr);
    });
    assert.is((await readAt(file, 1024 + 56, 2)).readUInt16LE(0), 0xef53, 'the ext4 superblock magic is where it was');
    assert.is.not(await sha256Head(file, 65536), await sha256Head(img, 65536), 'block 0 of the version was not written');
    await withMount(device, mnt, async () => assert.is(await fsp.readFile(join(mnt, 'kept.txt'), 'utf8'), 'still here'));
  }),
);

test(
  'a block device held open exclusively by another program is refused as busy (O_EXCL), nothing written',
  onLoop('held', 2 * MiB, async (device, file) => {
    const sha = await sha256File(file);
    // This process holds it as device-mapper or md would: mountinfo cannot tell, O_EXCL can.
    const holder = await fsp.open(device, fsc.O_RDONLY | fsc.O_EXCL);
    try {
      const r = await restore(device, '--force');
      assert.is(r.code, 1, r.stderr);
      assert.ok(r.stderr.includes(`block device ${device} is busy`), r.stderr);
    } finally {
      await holder.close();
    }
    assert.is(await sha256File(file), sha);
  }),
);

test(
  'an unmounted block device large enough, with --force: holds the version exactly; --from then writes only what differs',
  onLoop('ok', 2 * MiB, async (device, file) => {
    const tail = await readAt(file, CAPACITY, 2 * MiB - CAPACITY);
    const full = await restore(device, '--force', '--version', versions[0]!.version, '--json');
    assert.is(full.code, 0, full.stderr);
    assert.is(await sha256Head(device, CAPACITY), versions[0]!.sha);
    const update = await restore(device, '--force', '--version', versions[1]!.version, '--from', versions[0]!.version, '--json');
    assert.is(update.code, 0, update.stderr);
    assert.is(JSON.parse(update.stdout).writtenBlocks, 2, 'the two blocks the change touched');
    assert.is(await sha256Head(device, CAPACITY), versions[1]!.sha);
    assert.ok((await readAt(file, CAPACITY, tail.length)).equals(tail), 'bytes past the capacity are not touched');
  }),
);

test(
  'a link to a block device (as /dev/VG/LV is): refused without --force, written as the device with it',
  onLoop('linked', 2 * MiB, async (device, file) => {
    const link = join(dir, 'lv-link');
    await fsp.symlink(device, link);
    try {
      const sha = await sha256File(file);
      const refused = await restore(link);
      assert.is(refused.code, 2, refused.stderr);
      assert.is(await sha256File(file), sha);
      const r = await restore(link, '--force', '--version', versions[1]!.version);
      assert.is(r.code, 0, r.stderr);
      assert.is(await sha256Head(device, CAPACITY), versions[1]!.sha);
      assert.ok((await fsp.lstat(link)).isSymbolicLink(), 'the link stays a link');
    } finally {
      await fsp.rm(link, { force: true });
    }
  }),
);

test(
  'under Deno too (whose node:fs cannot open with O_EXCL): a mounted block device is refused, an unmounted one written exactly with --force',
  onLoop('deno', 4 * MiB, async (device) => {
    const ok = await deno(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', device, '--force']);
    assert.is(ok.code, 0, ok.stderr);
    assert.is(await sha256Head(device, CAPACITY), versions[1]!.sha);
    await mkfsExt4(device);
    const mnt = join(dir, 'mnt-deno');
    await fsp.mkdir(mnt);
    await withMount(device, mnt, async () => {
      const r = await deno(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', device, '--force']);
      assert.is(r.code, 1, r.stderr);
      assert.ok(r.stderr.includes(`block device ${device} is mounted on ${mnt}: refusing to write it`), r.stderr);
    });
  }),
);

test.run();
