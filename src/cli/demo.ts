import { promises as fsp, createReadStream } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalSource } from '../sources/local/LocalSource.ts';
import { FsStore } from '../sinks/fs/FsStore.ts';
import { Repository } from '../repo/Repository.ts';
import { runVmSync } from '../streams/runVmSync.ts';
import { restoreDisk } from '../streams/restoreDisk.ts';
import { formatBytes, formatRate, formatTable } from './format.ts';

const MiB = 1024 * 1024;

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  const h = await fsp.open(path, 'r+');
  try {
    await h.write(data, 0, data.length, offset);
  } finally {
    await h.close();
  }
}

/**
 * The embedded default: two sample disks, a full sync, writes at unaligned offsets, an
 * incremental sync, both versions of both disks restored and compared byte for byte.
 * Needs nothing outside this machine. Returns the exit code.
 */
export async function demoCommand(opts: { dir?: string; keep?: boolean }): Promise<number> {
  const dir = opts.dir ?? (await fsp.mkdtemp(join(tmpdir(), 'hamal-demo-')));
  await fsp.mkdir(dir, { recursive: true });
  const out = (s: string) => process.stdout.write(s + '\n');
  out(`hamal demo in ${dir}`);
  try {
    // Sample disks: a sparse "system" disk and a "data" disk whose size is no multiple of
    // the block size and which holds a copy of some system data (dedup across disks).
    const sys = join(dir, 'system.img');
    const data = join(dir, 'data.img');
    const shared = randomBytes(8 * MiB);
    await fsp.writeFile(sys, '');
    await fsp.truncate(sys, 256 * MiB);
    await writeAt(sys, 0, shared);
    await writeAt(sys, 100 * MiB, randomBytes(10 * MiB));
    await writeAt(sys, 256 * MiB - 1536 * 1024, randomBytes(1536 * 1024));
    await fsp.writeFile(data, '');
    await fsp.truncate(data, 96 * MiB + 123 * 1024);
    await writeAt(data, 0, randomBytes(16 * MiB));
    await writeAt(data, 40 * MiB, shared);

    const repoDir = join(dir, 'repo');
    const store = await FsStore.open(repoDir, { create: true });
    const repo = await Repository.open(store, { create: true });
    const source = new LocalSource({ vms: { demo: [{ id: 'system', path: sys }, { id: 'data', path: data }] } });

    const expected: Array<{ sync: number; disk: string; sha: string }> = [];
    const rows = [['sync', 'disk', 'capacity', 'read', 'stored', 'dedup', 'zero-skipped', 'time', 'rate']];
    const syncOnce = async (n: number) => {
      const r = await runVmSync(source, 'demo', repo, { journalDir: join(dir, 'lib') });
      if (r.failed.length) throw r.failed[0]!.error;
      for (const m of r.versions) {
        const s = m.stats;
        rows.push([String(n), m.disk, formatBytes(m.capacity), formatBytes(s.readBytes), formatBytes(s.storedBytes), formatBytes(s.dedupBytes), formatBytes(s.zeroBytes), `${s.durationMs} ms`, formatRate(s.readBytes, s.durationMs)]);
      }
      expected.push({ sync: n, disk: 'system', sha: await sha256File(sys) }, { sync: n, disk: 'data', sha: await sha256File(data) });
      return r;
    };

    await syncOnce(1);
    // Writes at unaligned offsets, across block boundaries.
    await writeAt(sys, 4 * MiB - 1000, randomBytes(5000));
    await writeAt(sys, 180 * MiB + 7, randomBytes(3 * MiB));
    await writeAt(data, 50 * MiB + 333, randomBytes(3 * MiB));
    await syncOnce(2);
    out(formatTable(rows));

    let ok = true;
    const checks = [['restore', 'disk', 'version', 'written', 'time', 'sha256 equal']];
    for (const disk of ['system', 'data']) {
      const versions = await repo.listVersions('demo', disk);
      for (const [i, version] of versions.entries()) {
        const target = join(dir, `restored-${disk}-v${i + 1}.img`);
        // force: a demo run again in the same --dir replaces its own earlier restores.
        const res = await restoreDisk(repo, await repo.readManifest('demo', disk, version), target, { force: true });
        const same = (await sha256File(target)) === expected.find((e) => e.sync === i + 1 && e.disk === disk)!.sha;
        ok &&= same;
        checks.push([`v${i + 1}`, disk, version, formatBytes(res.writtenBytes), `${res.durationMs} ms`, same ? 'yes' : 'NO']);
      }
    }
    out('');
    out(formatTable(checks));
    await store.close();
    out(ok ? '\ndemo passed: every restored version equals its disk as synced' : '\ndemo FAILED: a restored version differs');
    return ok ? 0 : 1;
  } finally {
    if (!opts.keep && !opts.dir) await fsp.rm(dir, { recursive: true, force: true });
  }
}
