// A hostile repository: manifests are checked on every read. Two block entries swapped,
// the capacity or block size changed (with the digest kept, as bit rot leaves it, and
// with the digest recomputed, as a writer can), a manifest copied under another disk,
// another VM or another (newer) version id: restore refuses naming the manifest and
// writes no file, verify exits 1 naming it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, promises as fsp } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { hamal, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from '../helpers/disks.ts';

const KILL20 = ['timeout', '-s', 'KILL', '20'];
const out = (r: Run) => `${r.stdout}\n${r.stderr}`;
const show = (r: Run) => `exit ${r.code} ${r.signal ?? ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
/** Canonical JSON as docs/format.md defines it for `digest`: keys sorted, no whitespace. */
const canon = (v: Json): string =>
  Array.isArray(v)
    ? `[${v.map(canon).join(',')}]`
    : v !== null && typeof v === 'object'
      ? `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon(v[k]!)}`).join(',')}}`
      : JSON.stringify(v);
const digestOf = (m: { [k: string]: Json }): string => {
  const { digest: _omit, ...rest } = m;
  void _omit;
  return createHash('sha256').update(canon(rest)).digest('hex');
};

let dir: string;
let repo: string;
let v1: string;
let v2: string;
let other: string;
const key = (version: string, disk = 'd', vm = 'v') => `vms/${vm}/disks/${disk}/versions/${version}.json`;

async function sync(img: string, disk: string): Promise<string> {
  const r = await hamal(['sync', '--vm', 'v', '--disk', `${disk}=${img}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL20);
  assert.is(r.code, 0, show(r));
  return JSON.parse(r.stdout).disks[0].version;
}

test.before(async () => {
  dir = await tempDir('hamal-hostile-manifests-');
  repo = join(dir, 'repo');
  const img = join(dir, 'disk.img');
  await makeImage(img, MiB, [[0, pattern(MiB, 31)]]);
  v1 = await sync(img, 'd');
  await writeAt(img, 2 * 65536, pattern(3 * 65536, 32));
  v2 = await sync(img, 'd');
  const img2 = join(dir, 'other.img');
  await makeImage(img2, MiB, [[0, pattern(MiB, 33)]]);
  other = await sync(img2, 'OTHER');
  const m = JSON.parse(await fsp.readFile(join(repo, key(v2)), 'utf8'));
  assert.is(digestOf(m), m.digest, 'test setup: this test computes digests the way docs/format.md says');
  assert.ok(m.blocks[0] && m.blocks[1] && m.blocks[0] !== m.blocks[1], 'test setup: two different first blocks');
  const v = await hamal(['verify', '--target', repo, '--deep'], {}, KILL20);
  assert.is(v.code, 0, show(v));
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

/** Restore of (vm, disk, version) exits 1 naming `named`, leaves no file; verify exits 1 naming it. */
async function refused(named: string, vm: string, disk: string, version: string, alsoAccept: string[] = []): Promise<void> {
  const names = (r: Run) => [named, ...alsoAccept].some((n) => out(r).includes(n));
  const outDir = join(dir, 'out');
  await fsp.mkdir(outDir, { recursive: true });
  try {
    const r = await hamal(['restore', '--target', repo, '--vm', vm, '--disk', disk, '--version', version, '--out', join(outDir, 'x.img')], {}, KILL20);
    assert.is(r.code, 1, `restore ${vm}/${disk}@${version}: ${show(r)}`);
    assert.ok(names(r), `restore does not name ${named}: ${show(r)}`);
    assert.equal(await fsp.readdir(outDir), [], 'restore left a file');
  } finally {
    await fsp.rm(outDir, { recursive: true, force: true });
  }
  const v = await hamal(['verify', '--target', repo], {}, KILL20);
  assert.is(v.code, 1, `verify: ${show(v)}`);
  assert.ok(names(v), `verify does not name ${named}: ${show(v)}`);
}

/** Rewrites the manifest of v/d@v2 with `edit`, runs `body`, puts the original back. */
async function tampered(edit: (m: { [k: string]: Json }) => void, body: () => Promise<void>): Promise<void> {
  const p = join(repo, key(v2));
  const saved = await fsp.readFile(p);
  try {
    const m = JSON.parse(saved.toString('utf8'));
    edit(m);
    await fsp.writeFile(p, JSON.stringify(m));
    await body();
  } finally {
    await fsp.writeFile(p, saved);
  }
}

const swap = (m: { [k: string]: Json }) => {
  const b = m.blocks as Json[];
  [b[0], b[1]] = [b[1]!, b[0]!];
};

test('4a: two block entries swapped (digest as it was): restore and verify refuse naming the manifest', async () => {
  await tampered(swap, () => refused(key(v2), 'v', 'd', v2));
});

test('4b: capacity reduced by 1 byte, same block count (digest as it was): refused naming the manifest', async () => {
  await tampered((m) => void (m.capacity = (m.capacity as number) - 1), () => refused(key(v2), 'v', 'd', v2));
});

test('4b: capacity reduced by 1 byte with the digest recomputed: still refused (the last chunk is longer than its block)', async () => {
  const last = JSON.parse(await fsp.readFile(join(repo, key(v2)), 'utf8')).blocks.at(-1) as string;
  await tampered(
    (m) => {
      m.capacity = (m.capacity as number) - 1;
      m.digest = digestOf(m);
    },
    () => refused(key(v2), 'v', 'd', v2, [`chunks/${last.slice(0, 2)}/${last}`]),
  );
});

test('4c: blockSize changed to 69632 (block count still 16; digest as it was): refused naming the manifest', async () => {
  await tampered((m) => void (m.blockSize = 69632), () => refused(key(v2), 'v', 'd', v2));
});

test("4c: blockSize changed with the digest recomputed: refused (not the repository's block size) naming the manifest", async () => {
  await tampered(
    (m) => {
      m.blockSize = 69632;
      m.digest = digestOf(m);
    },
    () => refused(key(v2), 'v', 'd', v2),
  );
  await tampered(
    (m) => {
      m.blockSize = 131072;
      m.blocks = (m.blocks as Json[]).slice(0, 8);
      m.digest = digestOf(m);
    },
    () => refused(key(v2), 'v', 'd', v2),
  );
});

test('4d: a manifest of disk d copied under disk OTHER (same version id): reading it as OTHER is refused naming it', async () => {
  const fake = key(v2, 'OTHER');
  await fsp.copyFile(join(repo, key(v2)), join(repo, fake));
  try {
    await refused(fake, 'v', 'OTHER', v2);
  } finally {
    await fsp.rm(join(repo, fake));
  }
  const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'OTHER', '--version', other, '--out', join(dir, 'o.img')], {}, KILL20);
  assert.is(r.code, 0, show(r));
  await fsp.rm(join(dir, 'o.img'));
});

test('4d: the old manifest v1 copied under a newer version id (a rollback of latest): refused naming it', async () => {
  const newer = '99991231T235959999Z-deadbeef';
  const fake = key(newer);
  await fsp.copyFile(join(repo, key(v1)), join(repo, fake));
  try {
    await refused(fake, 'v', 'd', newer);
    const o = join(dir, 'latest.img');
    const r = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--version', 'latest', '--out', o], {}, KILL20);
    // latest is either refused naming the impostor or is the real v2: never v1's blocks under another name.
    if (r.code === 0) {
      const again = join(dir, 'v2.img');
      const r2 = await hamal(['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--version', v2, '--out', again], {}, KILL20);
      assert.is(r2.code, 0, show(r2));
      assert.is(await sha256File(o), await sha256File(again), 'latest restored the copied v1 manifest');
    } else {
      assert.is(r.code, 1, show(r));
      assert.ok(out(r).includes(fake), show(r));
      assert.not.ok(existsSync(o));
    }
  } finally {
    await fsp.rm(join(repo, fake));
    await fsp.rm(join(dir, 'latest.img'), { force: true });
    await fsp.rm(join(dir, 'v2.img'), { force: true });
  }
});

test('4d: a manifest copied under another VM (vms/w/disks/d/versions/<same id>.json): refused naming it', async () => {
  const fake = key(v2, 'd', 'w');
  await fsp.mkdir(join(repo, 'vms', 'w', 'disks', 'd', 'versions'), { recursive: true });
  await fsp.copyFile(join(repo, key(v2)), join(repo, fake));
  try {
    await refused(fake, 'w', 'd', v2);
  } finally {
    await fsp.rm(join(repo, 'vms', 'w'), { recursive: true });
  }
});

test('the repository is sound again after every case', async () => {
  const v = await hamal(['verify', '--target', repo, '--deep', '--json'], {}, KILL20);
  assert.is(v.code, 0, show(v));
  assert.is(JSON.parse(v.stdout).versions, 3);
});

test.run();
