// Blocks of which only parts changed: the changed parts are read from the source and
// written over the parent's chunk from the repository (DiskSyncOptions.patchBelow). What
// must hold: every version restores byte-exact (sha256), the source is asked for the
// changed bytes only, and a parent chunk that cannot be read costs a whole read, not the sync.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { from, type Observable } from 'rxjs';
import { FsStore, Repository, restoreDisk, runVmSync, type DiskInfo, type Extent, type Manifest, type Snapshot, type Source, type SyncEvent } from '../mod.ts';
import { MiB, pattern, sha256File, tempDir } from './helpers/disks.ts';

const BLOCK = MiB;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * A disk in memory with exact change tracking, as CBT reports it: each write is recorded
 * under the generation it happened in; a snapshot is a frozen copy named by its generation.
 */
class TrackedDisk implements Source {
  readonly platform = 'tracked';
  private data: Buffer;
  private generation = 0;
  private readonly writes: Array<{ generation: number; offset: number; length: number }> = [];
  /** Bytes the pipeline asked the source for, and in how many reads. */
  readBytes = 0;
  reads = 0;

  constructor(capacity: number) {
    this.data = Buffer.alloc(capacity);
  }

  write(offset: number, bytes: Uint8Array): void {
    this.data.set(bytes, offset);
    this.writes.push({ generation: this.generation, offset, length: bytes.length });
  }

  get bytes(): Buffer {
    return this.data;
  }

  async snapshot(vm: string): Promise<Snapshot> {
    const frozen = Buffer.from(this.data);
    const changeId = String(this.generation++);
    const disk: DiskInfo = { id: 'd', label: 'd', capacity: frozen.length, changeId };
    const writes = this.writes.filter((w) => w.generation < Number(changeId) + 1);
    return {
      vm: { id: vm, name: vm },
      id: `snap-${changeId}`,
      platform: this.platform,
      disks: [disk],
      // Full: every area ever written (the rest is zero). Since: the areas written after it.
      changes: (_d: DiskInfo, since: string | null): Observable<Extent> =>
        from(
          writes
            .filter((w) => since === null || w.generation > Number(since))
            .map(({ offset, length }) => ({ offset, length }))
            .sort((a, b) => a.offset - b.offset),
        ),
      read: async (_d, offset, length, into) => {
        this.readBytes += length;
        // Every other read comes back in memory of its own: the pipeline must copy it in.
        if (into && this.reads++ % 2 === 0) {
          frozen.copy(into, 0, offset, offset + length);
          return into.subarray(0, length);
        }
        return Buffer.from(frozen.subarray(offset, offset + length));
      },
      release: async () => {},
    };
  }
}

interface Run {
  manifest: Manifest;
  events: SyncEvent[];
  readBytes: number;
}

async function sync(source: TrackedDisk, repo: Repository, options: { patchBelow?: number; full?: boolean } = {}): Promise<Run> {
  const before = source.readBytes;
  const events: SyncEvent[] = [];
  const r = await runVmSync(source, 'vm', repo, options, (e) => events.push(e));
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join('; '));
  return { manifest: r.versions[0]!, events, readBytes: source.readBytes - before };
}

async function restoredSha(repo: Repository, manifest: Manifest, dir: string): Promise<string> {
  const out = join(dir, `r-${manifest.version}.img`);
  await restoreDisk(repo, manifest, out);
  const got = await sha256File(out);
  await fsp.rm(out);
  return got;
}

/** Runs fn on a new repository of 1 MiB blocks in a temp folder, removed afterwards. */
async function inRepo(fn: (repo: Repository, dir: string, root: string) => Promise<void>, options: object = {}): Promise<void> {
  const dir = await tempDir();
  try {
    const root = join(dir, 'repo');
    const repo = await Repository.open(await FsStore.open(root, { create: true }), { create: true, blockSize: BLOCK, ...options });
    await fn(repo, dir, root);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

const repoKinds = [
  { name: 'plain', options: {} },
  { name: 'aes-256-gcm + zstd', options: { encryption: 'aes-256-gcm', compression: 'zstd', secret: async () => ({ passphrase: 'patch-test-passphrase' }) } },
] as const;

for (const kind of repoKinds) {
  test(`${kind.name}: small changes are read alone and patched onto the parent's chunks; every version restores byte-exact`, async () => {
    await inRepo(async (repo, dir) => {
      const disk = new TrackedDisk(8 * BLOCK + 12345);
      disk.write(0, randomBytes(3 * BLOCK)); // random: stored as it is
      disk.write(4 * BLOCK, pattern(2 * BLOCK, 1)); // compressible: decompressed into fresh memory
      disk.write(8 * BLOCK, randomBytes(12345)); // the short last block
      const v1 = await sync(disk, repo);
      assert.is(v1.readBytes, 5 * BLOCK + 12345, 'a full sync reads what was written');
      const want1 = sha(disk.bytes);

      disk.write(100, randomBytes(4096)); // block 0
      disk.write(BLOCK - 10, randomBytes(20)); // straddles 0 and 1
      disk.write(4 * BLOCK + 65536, randomBytes(1000)); // block 4 (compressible parent)
      disk.write(4 * BLOCK + 65536 + 1000 + 100, randomBytes(50)); // a small gap: read as one with the part before
      disk.write(6 * BLOCK + 5, randomBytes(300)); // block 6, a hole in the parent
      disk.write(8 * BLOCK + 7, randomBytes(10)); // the short last block...
      disk.write(8 * BLOCK + 12340, randomBytes(5)); // ...and its end: its last page ends at the capacity
      const v2 = await sync(disk, repo);
      // Each part widened to whole 4 KiB pages within its block, parts under 64 KiB apart
      // read as one: block 0 two ranges (2 pages from 0, the last page), block 1 its first
      // page, block 4 one page for both writes, block 6 one page; block 8's two parts are
      // one range to its end, more than half of it: read whole.
      const read = 2 * 4096 + 4096 + 4096 + 4096 + 4096 + 12345;
      assert.is(v2.readBytes, read, 'only the pages of the changed bytes are read from the source');
      assert.is(v2.manifest.stats.readBytes, read);
      // Blocks 0, 1 and 4 are patched onto their parent's chunks; block 6 was a hole (zeros, no read).
      assert.is(v2.manifest.stats.parentReadBytes, 3 * BLOCK);
      assert.is(await restoredSha(repo, v1.manifest, dir), want1, 'version 1');
      assert.is(await restoredSha(repo, v2.manifest, dir), sha(disk.bytes), 'version 2');
    }, kind.options);
  });
}

test('a block changed over more than patchBelow of it, or with patchBelow 0, is read whole', async () => {
  await inRepo(async (repo, dir) => {
    const disk = new TrackedDisk(4 * BLOCK);
    disk.write(0, randomBytes(4 * BLOCK));
    await sync(disk, repo);
    disk.write(0, randomBytes(Math.floor(BLOCK * 0.6))); // 60% of block 0: over the default 50%
    disk.write(2 * BLOCK, randomBytes(100));
    const v2 = await sync(disk, repo);
    assert.is(v2.readBytes, BLOCK + 4096);
    assert.is(v2.manifest.stats.parentReadBytes, BLOCK);
    disk.write(3 * BLOCK, randomBytes(100));
    const v3 = await sync(disk, repo, { patchBelow: 0 });
    assert.is(v3.readBytes, BLOCK, 'patchBelow 0 reads whole blocks');
    assert.is(v3.manifest.stats.parentReadBytes, 0);
    assert.is(await restoredSha(repo, v3.manifest, dir), sha(disk.bytes));
  });
});

test("a parent chunk that is damaged or gone: the block is read whole, the sync goes on and says why", async () => {
  await inRepo(async (repo, dir, root) => {
    const disk = new TrackedDisk(3 * BLOCK);
    disk.write(0, randomBytes(3 * BLOCK));
    const v1 = await sync(disk, repo);
    const chunkFile = (id: string) => join(root, 'chunks', id.slice(0, 2), id); // docs/format.md, Layout
    const damaged = chunkFile(v1.manifest.blocks[0]!);
    const bytes = await fsp.readFile(damaged);
    bytes[1000] ^= 0xff;
    await fsp.writeFile(damaged, bytes);
    await fsp.rm(chunkFile(v1.manifest.blocks[1]!));
    disk.write(10, randomBytes(10));
    disk.write(BLOCK + 10, randomBytes(10));
    disk.write(2 * BLOCK + 10, randomBytes(10));
    const v2 = await sync(disk, repo);
    assert.is(v2.readBytes, 2 * BLOCK + 4096, 'blocks 0 and 1 whole, block 2 patched');
    const notes = v2.events.flatMap((e) => (e.type === 'block' && e.note ? [e.note] : []));
    assert.is(notes.length, 2, notes.join('\n'));
    assert.match(notes.find((n) => n.startsWith('block 0'))!, new RegExp(`chunk .*${v1.manifest.blocks[0]!.slice(0, 8)}.*does not match`));
    assert.match(notes.find((n) => n.startsWith('block 1'))!, /could not be read/);
    assert.is(await restoredSha(repo, v2.manifest, dir), sha(disk.bytes));
  });
});

test('a full sync asked for (--full) or forced by a tracking fault reads touched blocks whole: writes the tracker missed inside them are kept', async () => {
  await inRepo(async (repo, dir) => {
    const disk = new TrackedDisk(3 * BLOCK);
    for (let i = 0; i < 3; i++) disk.write(i * BLOCK, randomBytes(100));
    await sync(disk, repo);
    disk.bytes.set(randomBytes(1000), BLOCK + 50_000); // a write the tracker missed
    const full = await sync(disk, repo, { full: true });
    assert.is(full.readBytes, 3 * BLOCK, 'every touched block, whole');
    assert.is(full.manifest.stats.parentReadBytes, 0);
    assert.match(full.manifest.stats.fullReason ?? '', /full sync was requested/);
    assert.is(await restoredSha(repo, full.manifest, dir), sha(disk.bytes), 'the missed write is in the version');
    disk.bytes.set(randomBytes(1000), 70_000); // missed again...
    const snapshot = disk.snapshot.bind(disk);
    disk.snapshot = async (vm) => ({ ...(await snapshot(vm)), checkSince: async () => 'change tracking was reset' }); // ...and the tracker faults
    const forced = await sync(disk, repo);
    assert.is(forced.manifest.stats.fullReason, 'change tracking was reset: full sync');
    assert.is(forced.readBytes, 3 * BLOCK);
    assert.is(await restoredSha(repo, forced.manifest, dir), sha(disk.bytes), 'the missed write is in the version');
  });
});

test('a full sync reads only the parts its extents cover and leaves the rest of the block zero', async () => {
  await inRepo(async (repo, dir) => {
    const disk = new TrackedDisk(2 * BLOCK);
    disk.write(1000, randomBytes(5000));
    disk.write(BLOCK + 300_000, randomBytes(70_000));
    const v1 = await sync(disk, repo);
    assert.is(v1.readBytes, 8192 + (91 - 73) * 4096, 'the pages of the parts written');
    assert.is(v1.manifest.stats.parentReadBytes, 0);
    assert.is(await restoredSha(repo, v1.manifest, dir), sha(disk.bytes));
  });
});

test('a disk that never had change tracking is read by its allocated parts on every sync, not whole', async () => {
  await inRepo(async (repo, dir) => {
    const disk = new TrackedDisk(2 * BLOCK);
    const snapshot = disk.snapshot.bind(disk);
    // As a local file or a raw libvirt disk: an allocation map, no changeId.
    disk.snapshot = async (vm) => {
      const s = await snapshot(vm);
      return { ...s, disks: s.disks.map((d) => ({ ...d, changeId: null })) };
    };
    disk.write(1000, randomBytes(5000));
    await sync(disk, repo);
    disk.write(BLOCK + 300_000, randomBytes(70_000));
    const v2 = await sync(disk, repo);
    assert.is(v2.manifest.stats.fullReason, 'the parent has no changeId to diff against');
    assert.is(v2.readBytes, 8192 + (91 - 73) * 4096, 'the pages of the allocated parts');
    assert.is(await restoredSha(repo, v2.manifest, dir), sha(disk.bytes));
  });
});

test('a source that returns fewer bytes than asked fails the disk, naming the offset', async () => {
  await inRepo(async (repo) => {
    const disk = new TrackedDisk(2 * BLOCK);
    disk.write(0, randomBytes(2 * BLOCK));
    await sync(disk, repo);
    disk.write(BLOCK + 8192, randomBytes(10));
    const snapshot = disk.snapshot.bind(disk);
    disk.snapshot = async (vm) => {
      const s = await snapshot(vm);
      return { ...s, read: async (d, offset, length, into) => (await s.read(d, offset, length, into)).subarray(0, length - 1) };
    };
    const r = await runVmSync(disk, 'vm', repo);
    assert.is(r.versions.length, 0);
    assert.match(r.failed[0]!.error.message, new RegExp(`returned 4095 bytes for 4096 at offset ${BLOCK + 8192}`));
  });
});

test.run();
