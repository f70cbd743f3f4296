import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FsStore, LocalSource, Repository, restoreDisk, runVmSync, type Manifest } from '../mod.ts';
import { Slots } from '../src/streams/Slots.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from './helpers/disks.ts';

const GiB = 1024 * MiB;
let dir: string;
let repo: Repository;
let source: LocalSource;
const disks = () => ({
  boot: join(dir, 'boot.img'),
  data: join(dir, 'data.img'),
  small: join(dir, 'small.img'),
});
const synced: Array<Record<string, string>> = [];

async function syncAndRecord(): Promise<Manifest[]> {
  const r = await runVmSync(source, 'vm1', repo, { parallelDisks: 3, readers: 2, writers: 2 });
  assert.equal(r.failed, []);
  const d = disks();
  synced.push({ boot: await sha256File(d.boot), data: await sha256File(d.data), small: await sha256File(d.small) });
  return r.versions;
}

const stat = (versions: Manifest[], disk: string) => versions.find((m) => m.disk === disk)!.stats;

test.before(async () => {
  dir = await tempDir();
  const d = disks();
  // A sparse 4 GiB disk holding 64 MiB in 16 regions of 4 MiB at unaligned offsets.
  await makeImage(d.boot, 4 * GiB, Array.from({ length: 16 }, (_, i) => [i * 250 * MiB + 12345, pattern(4 * MiB, i + 1)] as [number, Buffer]));
  await makeImage(d.data, 48 * MiB, [[0, pattern(48 * MiB, 100)]]);
  await makeImage(d.small, 5 * MiB + 7, [[1, pattern(5 * MiB + 6, 200)]]);
  repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  source = new LocalSource({ vms: { vm1: [{ id: 'boot', path: d.boot }, { id: 'data', path: d.data }, { id: 'small', path: d.small }] } });
});

test.after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

test('full sync reads only the allocated areas of a sparse disk and stores its data once', async () => {
  const v = await syncAndRecord();
  const boot = stat(v, 'boot');
  // 16 unaligned 4 MiB regions touch 2 blocks each; only their allocated parts are read
  // (each rounded out to the file system's 4 KiB blocks), the rest of each block is zero.
  assert.ok(boot.readBytes >= 16 * 4 * MiB && boot.readBytes <= 16 * (4 * MiB + 8192), `read ${boot.readBytes}`);
  assert.is(boot.storedBytes, 32 * 4 * MiB);
  assert.is(boot.zeroBytes, 4 * GiB - 32 * 4 * MiB);
  assert.is(stat(v, 'data').storedBytes, 48 * MiB);
  assert.is(stat(v, 'small').storedBytes, 5 * MiB + 7);
});

test('incremental after writes at unaligned offsets across block boundaries stores only touched blocks', async () => {
  const d = disks();
  await writeAt(d.boot, 4 * MiB - 100, pattern(200, 7)); // straddles blocks 0 and 1
  await writeAt(d.boot, 3 * GiB + 1, pattern(10, 8)); // a block that was a hole
  await writeAt(d.data, 20 * MiB - 3, Buffer.alloc(8 * MiB + 6)); // zeroes block 5 whole, parts of 4 and 7
  await writeAt(d.small, 5 * MiB + 3, pattern(4, 9)); // the short last block
  const v = await syncAndRecord();
  assert.is(stat(v, 'boot').storedBytes, 3 * 4 * MiB);
  assert.is(stat(v, 'boot').changedBytes, 3 * 4 * MiB);
  assert.is(stat(v, 'data').storedBytes, 2 * 4 * MiB); // blocks 4 and 7 changed; 5 and 6 became zero
  assert.is(stat(v, 'data').changedBytes, 4 * 4 * MiB);
  assert.is(stat(v, 'small').storedBytes, 1 * MiB + 7);
  const m = await repo.readManifest('vm1', 'data', 'latest');
  assert.is(m.blocks[5], null);
  assert.is(m.parent, (await repo.listVersions('vm1', 'data'))[0]);
});

test('a second sync of unchanged disks stores 0 bytes', async () => {
  const v = await syncAndRecord();
  for (const disk of ['boot', 'data', 'small']) {
    assert.is(stat(v, disk).storedBytes, 0, disk);
    assert.is(stat(v, disk).changedBytes, 0, disk);
  }
});

test('every version restores to the image as it was at its sync (sha256)', async () => {
  for (const disk of ['boot', 'data', 'small']) {
    const versions = await repo.listVersions('vm1', disk);
    assert.is(versions.length, 3);
    for (const [i, version] of versions.entries()) {
      const out = join(dir, `restored-${disk}-${i}.img`);
      await restoreDisk(repo, await repo.readManifest('vm1', disk, version), out);
      assert.is(await sha256File(out), synced[i]![disk], `${disk} v${i + 1}`);
      await fsp.rm(out);
    }
  }
});

test('a restored sparse disk keeps its holes', async () => {
  const out = join(dir, 'boot-restored.img');
  await restoreDisk(repo, await repo.readManifest('vm1', 'boot', 'latest'), out);
  const st = await fsp.stat(out);
  assert.is(st.size, 4 * GiB);
  assert.ok(st.blocks * 512 < 256 * MiB, `allocated ${st.blocks * 512}`);
  await fsp.rm(out);
});

test('two VMs whose disks share content store it once', async () => {
  const copy = join(dir, 'copy.img');
  await fsp.copyFile(disks().data, copy);
  const other = new LocalSource({ vms: { vm2: [{ id: 'disk0', path: copy }] } });
  const r = await runVmSync(other, 'vm2', repo);
  const s = r.versions[0]!.stats;
  assert.is(s.storedBytes, 0);
  assert.ok(s.dedupBytes > 0);
  assert.equal(await repo.listVms(), ['vm1', 'vm2']);
});

test('a disk cap shared by two VM syncs (serve: max_running_disks) holds both to it, and both complete', async () => {
  const slots = new Slots(2);
  let max = 0;
  const acquire = slots.acquire.bind(slots);
  slots.acquire = async () => {
    const release = await acquire();
    max = Math.max(max, slots.used);
    return release;
  };
  const d = disks();
  const a = new LocalSource({ vms: { a: [{ id: 'x', path: d.data }, { id: 'y', path: d.small }] } });
  const b = new LocalSource({ vms: { b: [{ id: 'x', path: d.data }, { id: 'y', path: d.small }] } });
  const [ra, rb] = await Promise.all([runVmSync(a, 'a', repo, { parallelDisks: 2, diskSlots: slots }), runVmSync(b, 'b', repo, { parallelDisks: 2, diskSlots: slots })]);
  assert.equal([ra.versions.length, rb.versions.length, ra.failed, rb.failed], [2, 2, [], []]);
  assert.is(max, 2);
  assert.is(slots.used, 0, 'every slot given back');
});

test('a disk whose capacity changed gets a new full version of the new size; old versions stay restorable', async () => {
  const img = join(dir, 'grow.img');
  await makeImage(img, 6 * MiB, [[0, pattern(6 * MiB, 40)]]);
  const src = new LocalSource({ vms: { vm3: [{ id: 'g', path: img }] } });
  const first = await runVmSync(src, 'vm3', repo);
  const before = await sha256File(img);
  await fsp.truncate(img, 10 * MiB + 512);
  const notes: string[] = [];
  const second = await runVmSync(src, 'vm3', repo, {}, (e) => {
    if (e.type === 'disk-start') notes.push(...e.notes);
  });
  assert.match(notes.join(), /capacity changed from 6291456 to 10486272 bytes since version .*: full sync/);
  const m = second.versions[0]!;
  assert.is(m.capacity, 10 * MiB + 512);
  assert.is(m.parent, first.versions[0]!.version);
  assert.is(m.stats.storedBytes, 4 * MiB, 'block 0 deduplicated; block 1 grew from 2 to 4 MiB: a new chunk');
  const old = join(dir, 'grow-old.img');
  await restoreDisk(repo, first.versions[0]!, old);
  assert.is(await sha256File(old), before);
  const now = join(dir, 'grow-new.img');
  await restoreDisk(repo, m, now);
  assert.is(await sha256File(now), await sha256File(img));
});

test.run();
