// A hostile repository: a chunk that is not a regular file (a link to /dev/zero, to a big
// file or to a copy of its own right bytes, a FIFO, a character device) is an integrity
// error naming the chunk, found promptly; and reads are bounded by what the object may
// hold: a chunk, manifest or config replaced by a huge sparse file is refused without
// reading it (peak memory stays small).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { hamal, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from '../helpers/disks.ts';

const sh = promisify(execFile);
const KILL20 = ['timeout', '-s', 'KILL', '20'];
/** Under a 20 s SIGKILL, and /usr/bin/time -v right above node, so its peak RSS is node's. */
const TIMED = ['timeout', '-s', 'KILL', '20', '/usr/bin/time', '-v'];
const out = (r: Run) => `${r.stdout}\n${r.stderr}`;
const show = (r: Run) => `exit ${r.code} ${r.signal ?? ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
const maxRssKiB = (r: Run): number => {
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr);
  assert.ok(m, `no /usr/bin/time report: ${show(r)}`);
  return Number(m![1]);
};

let dir: string;
let repo: string;
let img: string;
let version: string;
let manifestKey: string;
let hash: string; // the chunk of block 0
let chunkKey: string;
let chunkPath: string;
let chunkBytes: Buffer;

test.before(async () => {
  dir = await tempDir('hamal-hostile-chunks-');
  repo = join(dir, 'repo');
  img = join(dir, 'disk.img');
  await makeImage(img, MiB, [[0, pattern(MiB, 21)]]);
  const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL20);
  assert.is(r.code, 0, show(r));
  version = JSON.parse(r.stdout).disks[0].version;
  manifestKey = `vms/v/disks/d/versions/${version}.json`;
  const m = JSON.parse(await fsp.readFile(join(repo, manifestKey), 'utf8'));
  hash = m.blocks[0];
  chunkKey = `chunks/${hash.slice(0, 2)}/${hash}`;
  chunkPath = join(repo, chunkKey);
  chunkBytes = await fsp.readFile(chunkPath);
  const v = await hamal(['verify', '--target', repo, '--deep'], {}, KILL20);
  assert.is(v.code, 0, show(v));
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

/** Replaces the chunk with what `make` puts at its path, runs `body`, then puts the real chunk back. */
async function withChunk(make: (path: string) => Promise<void>, body: () => Promise<void>): Promise<void> {
  await fsp.rm(chunkPath);
  try {
    await make(chunkPath);
    await body();
  } finally {
    await fsp.rm(chunkPath, { force: true });
    await fsp.writeFile(chunkPath, chunkBytes, { mode: 0o600 });
  }
}

/** verify, verify --deep and restore each exit 1 within the timeout naming the chunk; restore leaves no file. */
async function refusedNamingChunk(what: string): Promise<void> {
  for (const deep of [[], ['--deep']]) {
    const t0 = Date.now();
    const v = await hamal(['verify', '--target', repo, ...deep], {}, KILL20);
    assert.is(v.code, 1, `verify ${deep} with ${what}: ${show(v)}`);
    assert.ok(out(v).includes(chunkKey), `verify ${deep} with ${what} does not name ${chunkKey}: ${show(v)}`);
    assert.ok(Date.now() - t0 < 20_000);
  }
  const outDir = join(dir, 'out');
  await fsp.mkdir(outDir, { recursive: true });
  const o = join(outDir, 'restored.img');
  const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', o], {}, KILL20);
  assert.is(r.code, 1, `restore with ${what}: ${show(r)}`);
  assert.ok(out(r).includes(chunkKey), `restore with ${what} does not name ${chunkKey}: ${show(r)}`);
  assert.equal(await fsp.readdir(outDir), [], `restore with ${what} left files`);
  await fsp.rm(outDir, { recursive: true });
}

test('2: a chunk that is a link to /dev/zero is an integrity error naming it', async () => {
  await withChunk((p) => fsp.symlink('/dev/zero', p), () => refusedNamingChunk('a link to /dev/zero'));
});

test('2: a chunk that is a FIFO is an integrity error naming it (no read blocks)', async () => {
  await withChunk(async (p) => void (await sh('mkfifo', ['-m', '600', p])), () => refusedNamingChunk('a FIFO'));
});

test('2: a chunk that is a character device (mknod c 1 5, a /dev/zero) is an integrity error naming it', async () => {
  await withChunk(async (p) => void (await sh('mknod', ['-m', '600', p, 'c', '1', '5'])), () => refusedNamingChunk('a character device'));
});

test('2: a chunk that is a link to a big (4 GiB sparse) file is an integrity error naming it', async () => {
  const big = join(dir, 'big.bin');
  await sh('truncate', ['-s', '4G', big]);
  try {
    await withChunk((p) => fsp.symlink(big, p), () => refusedNamingChunk('a link to a 4 GiB file'));
  } finally {
    await fsp.rm(big, { force: true });
  }
});

test('2: a chunk that is a link to a file holding exactly its right bytes is still refused (the link is not followed)', async () => {
  const elsewhere = join(dir, 'elsewhere');
  await fsp.mkdir(elsewhere);
  const copy = join(elsewhere, hash);
  await fsp.writeFile(copy, chunkBytes);
  try {
    await withChunk((p) => fsp.symlink(copy, p), () => refusedNamingChunk('a link to a correct copy'));
    assert.is((await fsp.readFile(copy)).equals(chunkBytes), true, 'the linked-to file changed');
  } finally {
    await fsp.rm(elsewhere, { recursive: true, force: true });
  }
});

test('3: a chunk replaced by a 4 GiB sparse regular file: verify, verify --deep and restore report it without reading it', async () => {
  await withChunk(
    async (p) => {
      await fsp.writeFile(p, chunkBytes, { mode: 0o600 });
      await sh('truncate', ['-s', '4G', p]);
    },
    async () => {
      for (const deep of [[], ['--deep']]) {
        const t0 = Date.now();
        const v = await hamal(['verify', '--target', repo, ...deep], {}, TIMED);
        const ms = Date.now() - t0;
        assert.is(v.code, 1, `verify ${deep}: ${show(v)}`);
        assert.ok(out(v).includes(chunkKey), `verify ${deep} does not name ${chunkKey}: ${show(v)}`);
        assert.ok(ms < 20_000, `verify ${deep} took ${ms} ms`);
        const rss = maxRssKiB(v);
        assert.ok(rss < 300 * 1024, `verify ${deep} peaked at ${rss} KiB`);
      }
      const outDir = join(dir, 'out');
      await fsp.mkdir(outDir, { recursive: true });
      try {
        const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', join(outDir, 'x.img')], {}, TIMED);
        assert.is(r.code, 1, `restore: ${show(r)}`);
        assert.ok(out(r).includes(chunkKey), `restore does not name ${chunkKey}: ${show(r)}`);
        const rss = maxRssKiB(r);
        assert.ok(rss < 300 * 1024, `restore peaked at ${rss} KiB`);
        assert.equal(await fsp.readdir(outDir), []);
      } finally {
        await fsp.rm(outDir, { recursive: true, force: true });
      }
    },
  );
});

test('3: a manifest grown to a 600 MiB sparse file (over the 512 MiB document bound) is refused naming it, without reading it', async () => {
  const p = join(repo, manifestKey);
  const saved = await fsp.readFile(p);
  try {
    await sh('truncate', ['-s', '600M', p]);
    const t0 = Date.now();
    const v = await hamal(['verify', '--target', repo], {}, TIMED);
    assert.is(v.code, 1, `verify: ${show(v)}`);
    assert.ok(out(v).includes(manifestKey), `verify does not name ${manifestKey}: ${show(v)}`);
    assert.ok(Date.now() - t0 < 20_000);
    const rss = maxRssKiB(v);
    assert.ok(rss < 300 * 1024, `verify peaked at ${rss} KiB (read the 600 MiB manifest)`);
    const o = join(dir, 'm.img');
    const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--version', version, '--out', o], {}, TIMED);
    assert.is(r.code, 1, `restore: ${show(r)}`);
    assert.ok(out(r).includes(manifestKey), `restore does not name ${manifestKey}: ${show(r)}`);
    assert.ok(maxRssKiB(r) < 300 * 1024, `restore peaked at ${maxRssKiB(r)} KiB`);
    assert.not.ok(await fsp.stat(o).catch(() => null), 'restore left an output file');
  } finally {
    await fsp.writeFile(p, saved);
  }
});

test('3: a config grown to a 600 MiB sparse file (over its 1 MiB bound) is refused naming config, without reading it', async () => {
  const p = join(repo, 'config');
  const saved = await fsp.readFile(p);
  try {
    await sh('truncate', ['-s', '600M', p]);
    for (const cmd of [['versions'], ['verify']]) {
      const t0 = Date.now();
      const r = await hamal([...cmd, '--target', repo], {}, TIMED);
      assert.ok(r.code === 1 || r.code === 2, `${cmd}: ${show(r)}`);
      assert.match(out(r), /\bconfig\b/, `${cmd} does not name config: ${show(r)}`);
      assert.ok(Date.now() - t0 < 20_000);
      const rss = maxRssKiB(r);
      assert.ok(rss < 300 * 1024, `${cmd} peaked at ${rss} KiB (read the 600 MiB config)`);
    }
  } finally {
    await fsp.writeFile(p, saved);
  }
});

test('the repository is sound again after every case (the tests put each object back)', async () => {
  const v = await hamal(['verify', '--target', repo, '--deep'], {}, KILL20);
  assert.is(v.code, 0, show(v));
  const o = join(dir, 'final.img');
  const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', o], {}, KILL20);
  assert.is(r.code, 0, show(r));
  assert.is(await sha256File(o), await sha256File(img));
});

test.run();
