// A hostile repository (someone with write access to the directory, or bit rot): no
// symbolic link below the repository root is followed. `.tmp`, `vms/<vm>`, a versions
// folder or a chunk folder replaced by a link to a folder elsewhere: nothing there is
// read as repository content, written or deleted. The root itself may be a link.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, promises as fsp, readdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { hamal, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from '../helpers/disks.ts';

const KILL20 = ['timeout', '-s', 'KILL', '20'];
const out = (r: Run) => `${r.stdout}\n${r.stderr}`;
const show = (r: Run) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** Every entry below `root`, without following links: type, size, hash, mtime (a folder's mtime moves when anything is created or deleted in it). */
async function tree(root: string): Promise<string[]> {
  const rows: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const p = rel ? join(root, rel) : root;
    const st = await fsp.lstat(p);
    if (st.isSymbolicLink()) rows.push(`${rel} -> ${await fsp.readlink(p)}`);
    else if (st.isDirectory()) {
      rows.push(`${rel}/ mtime=${st.mtimeMs}`);
      for (const n of (await fsp.readdir(p)).sort()) await walk(rel ? `${rel}/${n}` : n);
    } else if (st.isFile()) rows.push(`${rel} size=${st.size} sha=${await sha256File(p)} mtime=${st.mtimeMs}`);
    else rows.push(`${rel} special mode=${st.mode.toString(8)}`);
  };
  await walk('');
  return rows;
}

async function syncTo(repo: string, img: string, vm = 'v', disk = 'd'): Promise<string> {
  const r = await hamal(['sync', '--vm', vm, '--disk', `${disk}=${img}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL20);
  assert.is(r.code, 0, show(r));
  return JSON.parse(r.stdout).disks[0].version as string;
}

interface Manifest {
  blocks: Array<string | null>;
  [k: string]: unknown;
}
const manifest = async (repo: string, version: string, vm = 'v', disk = 'd'): Promise<Manifest> =>
  JSON.parse(await fsp.readFile(join(repo, 'vms', vm, 'disks', disk, 'versions', `${version}.json`), 'utf8'));

/** A repository with two versions of v/d: the second changes the first four 64 KiB blocks. */
async function twoVersions(dir: string) {
  const repo = join(dir, 'repo');
  const img = join(dir, 'disk.img');
  await makeImage(img, MiB, [[0, pattern(MiB, 1)]]);
  const sha1 = await sha256File(img);
  const v1 = await syncTo(repo, img);
  await writeAt(img, 0, pattern(4 * 65536, 2));
  const sha2 = await sha256File(img);
  const v2 = await syncTo(repo, img);
  return { repo, img, v1, v2, sha1, sha2 };
}

/** A pid no process has now (pid_max is small on this machine, so scan down from it). */
function deadPid(): number {
  for (let p = 32000; p > 1000; p--) if (!existsSync(`/proc/${p}`)) return p;
  throw new Error('no free pid');
}

/**
 * A bait folder that looks like a `.tmp/` full of things a sweeper removes: the folder of a
 * dead writer on this host, the folder of a writer elsewhere untouched for three days, a
 * loose file three days old, and a fresh file.
 */
async function makeBait(bait: string): Promise<void> {
  const pidns = (await fsp.readlink('/proc/self/ns/pid')).replace(/\D/g, '');
  const hexHost = Buffer.from(hostname()).toString('hex');
  const old = new Date(Date.now() - 3 * 24 * 3600 * 1000);
  await fsp.mkdir(bait);
  const dead = join(bait, `w-${deadPid()}-12345-${pidns}-0123456789abcdef-${hexHost}`);
  await fsp.mkdir(dead);
  await fsp.writeFile(join(dead, '9f8e7d6c5b4a3921'), pattern(70000, 11));
  const other = join(bait, `w-1-1-4026530000-fedcba9876543210-${Buffer.from('otherhost').toString('hex')}`);
  await fsp.mkdir(other);
  await fsp.writeFile(join(other, '0011223344556677'), pattern(5000, 12));
  await fsp.utimes(join(other, '0011223344556677'), old, old);
  await fsp.utimes(other, old, old);
  await fsp.writeFile(join(bait, 'a1b2c3d4e5f60718'), pattern(3000, 13));
  await fsp.utimes(join(bait, 'a1b2c3d4e5f60718'), old, old);
  await fsp.writeFile(join(bait, 'precious.txt'), 'do not touch\n');
  await fsp.utimes(dead, old, old);
  await fsp.utimes(bait, old, old);
}

test('1a: .tmp a link to a bait folder: versions, verify, restore and sync leave every bait file in place', async () => {
  const dir = await tempDir('hamal-hostile-tmp-');
  try {
    const repo = join(dir, 'repo');
    const img = join(dir, 'disk.img');
    await makeImage(img, MiB, [[0, pattern(MiB, 1)]]);
    const sha1 = await sha256File(img);
    await syncTo(repo, img);
    const bait = join(dir, 'bait');
    await makeBait(bait);
    await fsp.rm(join(repo, '.tmp'), { recursive: true, force: true });
    await fsp.symlink(bait, join(repo, '.tmp'));
    const before = await tree(bait);

    // Either the command works (.tmp is none of its business), or it fails naming `.tmp`.
    const okOrNamesTmp = (what: string, r: Run) => {
      if (r.code !== 0) {
        assert.is(r.code, 1, `${what}: ${show(r)}`);
        assert.ok(out(r).includes('.tmp'), `${what} failed without naming .tmp: ${show(r)}`);
      }
    };

    const versions = await hamal(['versions', '--target', repo, '--json'], {}, KILL20);
    okOrNamesTmp('versions', versions);
    assert.equal(await tree(bait), before, 'versions changed the bait folder');

    const verify = await hamal(['verify', '--target', repo, '--deep'], {}, KILL20);
    okOrNamesTmp('verify', verify);
    assert.equal(await tree(bait), before, 'verify changed the bait folder');

    const o = join(dir, 'restored.img');
    const restore = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', o], {}, KILL20);
    okOrNamesTmp('restore', restore);
    if (restore.code === 0) assert.is(await sha256File(o), sha1);
    assert.equal(await tree(bait), before, 'restore changed the bait folder');

    // A sync writes (and sweeps): it must neither write into the bait nor delete from it.
    await writeAt(img, 3 * 65536, pattern(2 * 65536, 3));
    const sha2 = await sha256File(img);
    const sync = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL20);
    okOrNamesTmp('sync', sync);
    assert.equal(await tree(bait), before, `sync changed the bait folder:\n${show(sync)}`);
    if (sync.code === 0) {
      const o2 = join(dir, 'restored2.img');
      const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', o2], {}, KILL20);
      assert.is(r.code, 0, show(r));
      assert.is(await sha256File(o2), sha2);
    }
    assert.ok((await fsp.lstat(join(repo, '.tmp'))).isSymbolicLink(), '.tmp link itself replaced');
    assert.equal(await tree(bait), before);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

for (const which of ['vms/v', 'vms/v/disks/d/versions']) {
  test(`1b: ${which} a link to a copy elsewhere: versions do not list it, restore does not read it, prune deletes nothing there`, async () => {
    const dir = await tempDir('hamal-hostile-vms-');
    try {
      const { repo } = await twoVersions(dir);
      const elsewhere = join(dir, 'elsewhere');
      await fsp.mkdir(elsewhere);
      const target = join(elsewhere, 'copy');
      await fsp.cp(join(repo, which), target, { recursive: true, preserveTimestamps: true });
      await fsp.rm(join(repo, which), { recursive: true });
      await fsp.symlink(target, join(repo, which));
      const before = await tree(elsewhere);

      const versions = await hamal(['versions', '--target', repo, '--json'], {}, KILL20);
      if (versions.code === 0) {
        const rows = JSON.parse(versions.stdout) as Array<{ vm: string }>;
        assert.equal(rows.filter((x) => x.vm === 'v'), [], `versions listed versions read through the link ${which}: ${versions.stdout}`);
      } else {
        assert.is(versions.code, 1, show(versions));
        assert.ok(out(versions).includes(which), `versions failed without naming ${which}: ${show(versions)}`);
      }

      // What the link hides was not verified: verify must not call the repository restorable.
      const verify = await hamal(['verify', '--target', repo, '--deep'], {}, KILL20);
      assert.is(verify.code, 1, show(verify));
      assert.ok(out(verify).includes(which), show(verify));

      const o = join(dir, 'out.img');
      const restore = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', o], {}, KILL20);
      assert.is.not(restore.code, 0, `restore read a version through the link ${which}: ${show(restore)}`);
      assert.not.ok(existsSync(o), 'restore left an output file');

      const chunksBefore = await tree(join(repo, 'chunks'));
      const prune = await hamal(['prune', '--target', repo, '--keep-last', '1'], {}, KILL20);
      // What the link hides may be versions: prune refuses rather than delete their chunks.
      assert.is(prune.code, 1, show(prune));
      assert.ok(out(prune).includes('prune stopped before deleting anything') && out(prune).includes(which), show(prune));
      assert.equal(await tree(join(repo, 'chunks')), chunksBefore, 'prune deleted chunks the hidden versions may need');
      assert.equal(await tree(elsewhere), before, `prune changed the linked-to folder: ${show(prune)}`);
      assert.ok((await fsp.lstat(join(repo, which))).isSymbolicLink(), 'the link itself was replaced');
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
}

test('1c: chunk folders linked to bait folders of chunk-named files: restore and verify do not read through them, prune deletes no bait file', async () => {
  const dir = await tempDir('hamal-hostile-chunkdir-');
  try {
    const { repo, v1, v2 } = await twoVersions(dir);
    const m1 = await manifest(repo, v1);
    const m2 = await manifest(repo, v2);
    const live = new Set(m2.blocks.filter((b): b is string => !!b));
    const v1Only = m1.blocks.filter((b): b is string => !!b && !live.has(b));
    assert.ok(v1Only.length > 0, 'test setup: the second sync leaves chunks only the first names');
    const x1 = v1Only[0]!.slice(0, 2);
    const x2 = [...live].map((h) => h.slice(0, 2)).find((x) => x !== x1);
    assert.ok(x2, 'test setup: a chunk of v2 in another folder');
    const baits: Record<string, string> = {};
    for (const x of [x1, x2!]) {
      const bait = join(dir, `bait-${x}`);
      await fsp.rename(join(repo, 'chunks', x), bait);
      // One more file named like an unreferenced chunk: prune's favourite kind.
      await fsp.writeFile(join(bait, x + 'ab'.repeat(31)), pattern(65536, 40));
      await fsp.symlink(bait, join(repo, 'chunks', x));
      baits[x] = bait;
    }
    const before = { [x1]: await tree(baits[x1]!), [x2!]: await tree(baits[x2!]!) };
    const namesLinked = (r: Run) => out(r).includes(`chunks/${x1}`) || out(r).includes(`chunks/${x2}`);

    const o = join(dir, 'out.img');
    const restore = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--version', v2, '--out', o], {}, KILL20);
    assert.is(restore.code, 1, `restore read chunks through a linked folder: ${show(restore)}`);
    assert.ok(namesLinked(restore), `restore's error does not name the chunk: ${show(restore)}`);
    assert.not.ok(existsSync(o), 'restore left an output file');

    for (const deep of [[], ['--deep']]) {
      const verify = await hamal(['verify', '--target', repo, ...deep], {}, KILL20);
      assert.is(verify.code, 1, `verify ${deep} passed through linked chunk folders: ${show(verify)}`);
      assert.ok(namesLinked(verify), `verify ${deep} does not name the chunk: ${show(verify)}`);
    }

    const prune = await hamal(['prune', '--target', repo, '--keep-last', '1'], {}, KILL20);
    assert.ok(prune.code === 0 || prune.code === 1, show(prune));
    for (const x of [x1, x2!]) {
      assert.equal(await tree(baits[x]!), before[x], `prune changed bait folder for chunks/${x}: ${show(prune)}`);
      assert.ok((await fsp.lstat(join(repo, 'chunks', x))).isSymbolicLink(), `chunks/${x} link replaced`);
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('1d: a repository reached through a symlinked root works: sync, incremental sync, versions, restore byte-equal, verify --deep, prune', async () => {
  const dir = await tempDir('hamal-hostile-rootlink-');
  try {
    const real = join(dir, 'real');
    await fsp.mkdir(real);
    const link = join(dir, 'link');
    await fsp.symlink(real, link);
    const img = join(dir, 'disk.img');
    await makeImage(img, MiB, [[0, pattern(MiB, 5)]]);
    const sha1 = await sha256File(img);
    const v1 = await syncTo(`file://${link}`, img);
    await writeAt(img, 7 * 65536, pattern(65536, 6));
    const sha2 = await sha256File(img);
    const v2 = await syncTo(link, img);
    assert.ok((await fsp.lstat(link)).isSymbolicLink(), 'the root link was replaced');
    assert.ok(existsSync(join(real, 'config')), 'the repository is not in the linked-to folder');
    assert.ok(readdirSync(join(real, 'vms', 'v', 'disks', 'd', 'versions')).length === 2);

    const versions = await hamal(['versions', '--target', link, '--json'], {}, KILL20);
    assert.is(versions.code, 0, show(versions));
    assert.equal((JSON.parse(versions.stdout) as Array<{ version: string }>).map((x) => x.version), [v1, v2]);

    for (const [v, sha] of [[v1, sha1], [v2, sha2]] as const) {
      const o = join(dir, `out-${v}.img`);
      const r = await hamal(['restore', '--target', link, '--vm', 'v', '--disk', 'd', '--version', v, '--out', o], {}, KILL20);
      assert.is(r.code, 0, show(r));
      assert.is(await sha256File(o), sha);
    }
    const verify = await hamal(['verify', '--target', `file://${link}`, '--deep'], {}, KILL20);
    assert.is(verify.code, 0, show(verify));
    const prune = await hamal(['prune', '--target', link, '--keep-last', '1'], {}, KILL20);
    assert.is(prune.code, 0, show(prune));
    const after = await hamal(['verify', '--target', link, '--deep', '--json'], {}, KILL20);
    assert.is(after.code, 0, show(after));
    assert.is(JSON.parse(after.stdout).versions, 1);
    const o = join(dir, 'out-latest.img');
    const r = await hamal(['restore', '--target', link, '--vm', 'v', '--disk', 'd', '--out', o], {}, KILL20);
    assert.is(r.code, 0, show(r));
    assert.is(await sha256File(o), sha2);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test.run();
