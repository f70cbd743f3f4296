// A hostile repository: stray objects whose names do not percent-decode are reported by
// key and skipped (never "URI malformed"), and a config with a nonsensical field is
// refused naming the field; an `id` that is a path creates nothing outside hamal_lib_dir.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal, TEST_CONFIG, TEST_LIB_DIR, type Run } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from '../helpers/disks.ts';

const KILL20 = ['timeout', '-s', 'KILL', '20'];
const out = (r: Run) => `${r.stdout}\n${r.stderr}`;
const show = (r: Run) => `exit ${r.code} ${r.signal ?? ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/** Every entry below `root` (links not followed), as sorted relative paths with type and size. */
async function listing(root: string, skip: (rel: string) => boolean = () => false): Promise<string[]> {
  const rows: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    if (rel && skip(rel)) return;
    const p = rel ? join(root, rel) : root;
    const st = await fsp.lstat(p);
    if (st.isDirectory()) {
      if (rel) rows.push(`${rel}/`);
      for (const n of (await fsp.readdir(p)).sort()) await walk(rel ? `${rel}/${n}` : n);
    } else rows.push(`${rel} ${st.isFile() ? `size=${st.size} sha=${await sha256File(p)}` : `mode=${st.mode.toString(8)}`}`);
  };
  await walk('');
  return rows;
}

async function repoWithVersions(dir: string, n = 2) {
  const repo = join(dir, 'repo');
  const img = join(dir, 'disk.img');
  await makeImage(img, MiB, [[0, pattern(MiB, 51)]]);
  const versions: string[] = [];
  for (let i = 0; i < n; i++) {
    if (i) await writeAt(img, i * 65536, pattern(65536, 51 + i));
    const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536', '--json'], {}, KILL20);
    assert.is(r.code, 0, show(r));
    versions.push(JSON.parse(r.stdout).disks[0].version);
  }
  return { repo, img, versions };
}

test('5: stray objects with malformed percent-encoded names: versions, verify and prune --dry-run warn naming them and go on', async () => {
  const dir = await tempDir('hamal-hostile-stray-');
  try {
    const { repo, versions } = await repoWithVersions(dir);
    await fsp.mkdir(join(repo, 'vms', '%E0%A4%A'), { recursive: true });
    await fsp.writeFile(join(repo, 'vms', '%E0%A4%A', 'junk'), 'junk\n');
    await fsp.mkdir(join(repo, 'vms', 'v', 'disks', '%ZZ', 'versions'), { recursive: true });
    await fsp.writeFile(join(repo, 'vms', 'v', 'disks', '%ZZ', 'versions', 'x.json'), '{}');
    const before = await listing(repo);
    const strays = ['vms/%E0%A4%A', 'vms/v/disks/%ZZ'];
    const noUriError = (what: string, r: Run) => assert.not.ok(/URI malformed|URIError/.test(out(r)), `${what}: ${show(r)}`);

    const v = await hamal(['versions', '--target', repo, '--json'], {}, KILL20);
    noUriError('versions', v);
    assert.is(v.code, 0, show(v));
    assert.equal((JSON.parse(v.stdout) as Array<{ vm: string; disk: string; version: string }>).map((x) => `${x.vm}/${x.disk}@${x.version}`), versions.map((x) => `v/d@${x}`));
    for (const s of strays) assert.ok(v.stderr.includes(s), `versions gives no warning naming the stray ${s}: ${show(v)}`);
    const table = await hamal(['versions', '--target', repo], {}, KILL20);
    noUriError('versions (table)', table);
    assert.is(table.code, 0, show(table));
    for (const x of versions) assert.ok(table.stdout.includes(x), show(table));

    const verify = await hamal(['verify', '--target', repo, '--deep', '--json'], {}, KILL20);
    noUriError('verify', verify);
    assert.is(verify.code, 0, show(verify));
    assert.is(JSON.parse(verify.stdout).versions, 2);

    const dry = await hamal(['prune', '--target', repo, '--keep-last', '1', '--dry-run'], {}, KILL20);
    noUriError('prune --dry-run', dry);
    assert.is(dry.code, 0, show(dry));
    assert.equal(await listing(repo), before, 'a read-only command or a dry run changed the repository');

    const prune = await hamal(['prune', '--target', repo, '--keep-last', '1'], {}, KILL20);
    noUriError('prune', prune);
    assert.is(prune.code, 0, show(prune));
    const after = await hamal(['versions', '--target', repo, '--json'], {}, KILL20);
    assert.is(after.code, 0, show(after));
    assert.equal((JSON.parse(after.stdout) as Array<{ version: string }>).map((x) => x.version), [versions[1]]);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

const badBlockSizes = ['0', '-1', '3', '1e12', '"4096"', '4097', '1.5', 'null', '134217728'];

test('6: a config whose blockSize is 0, -1, 3, 1e12, "4096", ... is refused naming blockSize by versions, verify, restore and sync; nothing written', async () => {
  const dir = await tempDir('hamal-hostile-config-');
  try {
    const { repo, img } = await repoWithVersions(dir, 1);
    const cfgPath = join(repo, 'config');
    const original = await fsp.readFile(cfgPath, 'utf8');
    assert.match(original, /"blockSize": ?65536/);
    await writeAt(img, 0, pattern(65536, 60));
    for (const bad of badBlockSizes) {
      await fsp.writeFile(cfgPath, original.replace(/("blockSize": ?)65536/, `$1${bad}`));
      const before = await listing(repo);
      for (const args of [
        ['versions', '--target', repo],
        ['verify', '--target', repo, '--deep'],
        ['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', join(dir, 'out.img')],
        ['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo],
        ['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536'],
      ]) {
        const r = await hamal(args, {}, KILL20);
        assert.ok(r.code === 1 || r.code === 2, `${args[0]} with blockSize ${bad}: ${show(r)}`);
        assert.ok(out(r).includes('blockSize'), `${args[0]} with blockSize ${bad} does not name blockSize: ${show(r)}`);
        assert.not.ok(existsSync(join(dir, 'out.img')), 'restore wrote a file');
      }
      assert.equal(await listing(repo), before, `blockSize ${bad}: the repository changed`);
    }
    await fsp.writeFile(cfgPath, original);
    const ok = await hamal(['verify', '--target', repo, '--deep'], {}, KILL20);
    assert.is(ok.code, 0, show(ok));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

for (const badId of ['../../etc', '../../../../escaped', '/abs/path', 'ABCDEF0123456789ABCDEF0123456789', '', 12345]) {
  test(`6: a config whose id is ${JSON.stringify(badId)} is refused naming id; a sync creates nothing outside hamal_lib_dir`, async () => {
    const dir = await tempDir('hamal-hostile-id-');
    try {
      // hamal_lib_dir deep inside the test folder: whatever an id like ../../etc resolves to
      // from there stays inside the test folder, where it can be seen.
      const lib = join(dir, 'a', 'b', 'c', 'd', 'lib');
      await fsp.mkdir(lib, { recursive: true });
      const conf = join(dir, 'hamal.conf');
      await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[data_sync_v2]\nfsync_period_frequency = 1\n`);
      const env = { HAMAL_CONFIG: conf };
      const repo = join(dir, 'repo');
      const img = join(dir, 'disk.img');
      await makeImage(img, MiB, [[0, pattern(MiB, 61)]]);
      const first = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536'], env, KILL20);
      assert.is(first.code, 0, show(first));
      const cfgPath = join(repo, 'config');
      const cfg = JSON.parse(await fsp.readFile(cfgPath, 'utf8'));
      cfg.id = badId;
      await fsp.writeFile(cfgPath, JSON.stringify(cfg, null, 2));
      await writeAt(img, 0, pattern(2 * 65536, 62));
      const outside = (rel: string) => rel === 'a/b/c/d/lib';
      const before = await listing(dir, outside);
      const beforeTmpEtc = existsSync(join(TEST_LIB_DIR, '..', 'etc'));
      try {
        for (const [args, e] of [
          [['versions', '--target', repo], env],
          [['verify', '--target', repo], env],
          [['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536'], env],
          [['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '65536'], { HAMAL_CONFIG: TEST_CONFIG }],
        ] as Array<[string[], Record<string, string>]>) {
          const r = await hamal(args, e, KILL20);
          assert.ok(r.code === 1 || r.code === 2, `${args[0]} with id ${JSON.stringify(badId)}: ${show(r)}`);
          assert.match(out(r), /\bid\b/, `${args[0]} with id ${JSON.stringify(badId)} does not name id: ${show(r)}`);
          assert.match(out(r), /config/, `${args[0]} with id ${JSON.stringify(badId)} does not say it is the repository config: ${show(r)}`);
        }
        assert.equal(await listing(dir, outside), before, 'something was created or changed outside hamal_lib_dir (or in the repository)');
        assert.is(existsSync(join(TEST_LIB_DIR, '..', 'etc')), beforeTmpEtc, `a sync with TEST_CONFIG created ${join(TEST_LIB_DIR, '..', 'etc')}`);
        // And inside lib: no folder named after the bad id's parts.
        const libRows = await listing(lib);
        if (typeof badId === 'string' && badId) assert.not.ok(libRows.some((x) => x.includes('escaped') || x.includes('abs/path') || x.includes(badId)), libRows.join('\n'));
      } finally {
        if (!beforeTmpEtc) await fsp.rm(join(TEST_LIB_DIR, '..', 'etc'), { recursive: true, force: true });
      }
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
}

test.run();
