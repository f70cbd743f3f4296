import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { allOutput, hamal, HAMAL_ARGV, TEST_CONFIG, TEST_LIB_DIR } from './helpers/cli.ts';
import { spawn } from 'node:child_process';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from './helpers/disks.ts';
import { VERSION } from '../src/version.ts';
import { REPO_ROOT } from './helpers/repoRoot.ts';

const root = REPO_ROOT;
let dir: string;
let repo: string;
let img: string;
const shas: string[] = [];
const run = (cmd: string, args: string[]) =>
  new Promise<{ code: number | null; stdout: string }>((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stdout += d));
    child.on('close', (code) => resolve({ code, stdout }));
  });

const sync = async () => {
  const r = await hamal(['sync', '--vm', 'vm1', '--disk', `d0=${img}`, '--target', `file://${repo}`, '--json', '--block-size', String(MiB)]);
  assert.is(r.code, 0, r.stderr);
  shas.push(await sha256File(img));
  return JSON.parse(r.stdout);
};

test.before(async () => {
  dir = await tempDir();
  repo = join(dir, 'repo');
  img = join(dir, 'disk.img');
  await makeImage(img, 6 * MiB, [[0, pattern(4 * MiB, 1)]]);
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

test('--version prints package.json version; --help of every command exits 0', async () => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  assert.is(VERSION, pkg.version);
  const v = await hamal(['--version']);
  assert.is(v.code, 0);
  assert.is(v.stdout.trim(), VERSION);
  for (const cmd of ['sync', 'restore', 'versions', 'verify', 'prune', 'config', 'demo']) {
    const h = await hamal([cmd, '--help']);
    assert.is(h.code, 0, cmd);
    assert.match(h.stdout, 'Usage: hamal');
  }
});

test('three syncs, then versions --json lists them with their fields', async () => {
  await sync();
  await writeAt(img, 2 * MiB + 5, pattern(10, 2));
  await sync();
  await writeAt(img, 5 * MiB, pattern(MiB, 3));
  await sync();
  const r = await hamal(['versions', '--target', repo, '--json']);
  assert.is(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout);
  assert.is(rows.length, 3);
  for (const k of ['vm', 'disk', 'version', 'parent', 'createdAt', 'capacity', 'changedBytes', 'storedBytes']) assert.ok(k in rows[0], k);
  assert.is(rows[1].parent, rows[0].version);
  assert.is(rows[1].changedBytes, MiB);
  const table = await hamal(['versions', '--target', repo]);
  assert.match(table.stdout, rows[2].version);
});

test('verify passes on a sound repository', async () => {
  const r = await hamal(['verify', '--target', repo, '--deep']);
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, '3 versions, 6 chunks checked (deep): all restorable');
});

test('replica restore: v3 onto a replica of v1 writes only the differing blocks', async () => {
  const versions = JSON.parse((await hamal(['versions', '--target', repo, '--json'])).stdout).map((v: { version: string }) => v.version);
  const out = join(dir, 'replica.img');
  let r = await hamal(['restore', '--target', repo, '--vm', 'vm1', '--disk', 'd0', '--version', versions[0], '--out', out]);
  assert.is(r.code, 0, r.stderr);
  assert.is(await sha256File(out), shas[0]);
  r = await hamal(['restore', '--target', repo, '--vm', 'vm1', '--disk', 'd0', '--version', versions[2], '--from', versions[0], '--out', out, '--json']);
  assert.is(r.code, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  assert.is(res.writtenBlocks, 2); // block 2 (v2) and block 5 (v3)
  assert.is(res.writtenBytes, 2 * MiB);
  assert.is(await sha256File(out), shas[2]);
});

test('one flipped byte in a chunk: verify --deep names it and exits 1; restore fails naming it, leaving no output', async () => {
  const chunkDir = join(repo, 'chunks');
  const sub = (await fsp.readdir(chunkDir))[0]!;
  const name = (await fsp.readdir(join(chunkDir, sub)))[0]!;
  const file = join(chunkDir, sub, name);
  const original = await fsp.readFile(file);
  const bad = Buffer.from(original);
  bad[1234] = bad[1234]! ^ 1;
  await fsp.writeFile(file, bad);

  const shallow = await hamal(['verify', '--target', repo]);
  assert.is(shallow.code, 0, 'same size: only --deep can see it');
  const deep = await hamal(['verify', '--target', repo, '--deep']);
  assert.is(deep.code, 1);
  assert.match(deep.stdout, `corrupt: chunks/${sub}/${name}: content does not match its hash`);

  const vms = JSON.parse((await hamal(['versions', '--target', repo, '--json'])).stdout);
  const out = join(dir, 'restore-bad', 'out.img');
  await fsp.mkdir(join(dir, 'restore-bad'));
  let failed = false;
  for (const v of vms) {
    const r = await hamal(['restore', '--target', repo, '--vm', 'vm1', '--disk', 'd0', '--version', v.version, '--out', out]);
    if (r.code === 0) {
      await fsp.rm(out); // the next restore would be refused: out exists (no --force)
      continue;
    }
    failed = true;
    assert.is(r.code, 1);
    assert.match(r.stderr, `chunk chunks/${sub}/${name} does not match its hash`);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal(await fsp.readdir(join(dir, 'restore-bad')), [], 'no output file, not even a partial one');
  }
  assert.ok(failed, 'some version needs the corrupt chunk');
  await fsp.writeFile(file, original);
});

test('prune --keep-last 1 after three syncs: older versions and only their unique chunks go', async () => {
  const before = JSON.parse((await hamal(['versions', '--target', repo, '--json'])).stdout);
  const r = await hamal(['prune', '--target', repo, '--keep-last', '1', '--json']);
  assert.is(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.is(report.deletedVersions.length, 2);
  // Only v1's block 2 is in no kept version (v2's block 2 is still v3's).
  assert.is(report.deletedChunks, 1);
  const after = JSON.parse((await hamal(['versions', '--target', repo, '--json'])).stdout);
  assert.equal(after.map((v: { version: string }) => v.version), [before[2].version]);
  const v = await hamal(['verify', '--target', repo, '--deep']);
  assert.is(v.code, 0, v.stdout);
  const out = join(dir, 'after-prune.img');
  const rr = await hamal(['restore', '--target', repo, '--vm', 'vm1', '--disk', 'd0', '--out', out]);
  assert.is(rr.code, 0, rr.stderr);
  assert.is(await sha256File(out), shas[2]);
});

test('usage and input errors: one line, exit 2 or 1, no stack trace', async () => {
  const cases: Array<[string[], number, RegExp]> = [
    [['sync', '--vm', 'x'], 2, /sync needs --task FILE, or --vm NAME with at least one --disk/],
    [['sync', '--vm', 'x', '--disk', '/nonexistent.img', '--target', repo], 1, /disk nonexistent\.img: \/nonexistent\.img does not exist/],
    [['restore', '--target', repo, '--vm', 'vm1', '--disk', 'nope', '--out', join(dir, 'x.img')], 1, /no versions of vm vm1 disk nope/],
    [['versions', '--target', join(dir, 'nothing-here')], 1, /no hamal repository at file:\/\//],
    [['sync', '--vm', 'x', '--disk', img, '--target', 's3://bucket/p', '--readers', '0'], 2, /--readers must be a whole number from 1 to 1024/],
    [['restore', '--target', 'ftp://h/x', '--vm', 'a', '--disk', 'b', '--out', '/tmp/x'], 2, /target scheme ftp:\/\/ is not supported/],
    [['frobnicate'], 2, /unknown command 'frobnicate'/],
  ];
  for (const [args, code, message] of cases) {
    const r = await hamal(args);
    assert.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.not.match(r.stderr, /\n\s+at /, 'no stack trace');
  }
  const dbg = await hamal(['--debug', 'versions', '--target', join(dir, 'nothing-here')]);
  assert.match(dbg.stderr, /\n\s+at /, 'stack trace with --debug');
});

test('secrets from the config and tasks never reach the output', async () => {
  const conf = join(dir, 'secret.conf');
  await fsp.writeFile(conf, `[mass]\nauth_key = ab#cd-auth-key-for-tests\n[DEFAULT]\ndebug = True\nhamal_lib_dir = ${TEST_LIB_DIR}\n`);
  const task = join(dir, 'vmw.json');
  await fsp.writeFile(task, JSON.stringify({ version: 1, source: { platform: 'vmware', vm: 'w', connection: { host: '127.0.0.1', port: 1, username: 'u', password: 's3cr3t-Pa55word-for-tests' } }, target: repo }));
  await hamal(['--config', conf, 'sync', '--task', task]);
  await hamal(['--config', conf, 'config', 'check']);
  await hamal(['--config', conf, 'sync', '--vm', 'vm1', '--disk', `d0=${img}`, '--target', repo]);
  const secrets = readFileSync(join(root, 'tests/fixtures/secrets.txt'), 'utf8').split('\n').filter(Boolean);
  const everything = allOutput.join('\n');
  assert.ok(everything.length > 1000);
  for (const s of secrets) assert.not.ok(everything.includes(s), `secret ${s.slice(0, 4)}… in output`);
});

test('[sync] keys: the VM metadata goes beside its versions and under hamal_lib_dir', async () => {
  const lib = join(dir, 'meta-lib');
  const conf = join(dir, 'meta.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[sync]\nupload_metadata_to_oss = True\nsave_local_snapshot_metadata = True\n`);
  const target = join(dir, 'meta-repo');
  const r = await hamal(['--config', conf, 'sync', '--vm', 'web 1', '--disk', `d0=${img}`, '--target', target, '--json']);
  assert.is(r.code, 0, r.stderr);
  const version = JSON.parse(r.stdout).disks[0].version;
  const inRepo = await fsp.readdir(join(target, 'vms', 'web%201', 'metadata'));
  assert.is(inRepo.length, 1);
  const doc = JSON.parse(await fsp.readFile(join(target, 'vms', 'web%201', 'metadata', inRepo[0]!), 'utf8'));
  assert.is(doc.vm.name, 'web 1');
  assert.is(doc.platform, 'local');
  assert.equal(doc.disks.map((d: { id: string; version: string }) => [d.id, d.version]), [['d0', version]]);
  const local = await fsp.readdir(join(lib, 'metadata', 'web%201'));
  assert.equal(JSON.parse(await fsp.readFile(join(lib, 'metadata', 'web%201', local[0]!), 'utf8')), doc);
});

test('on a terminal, restore and verify show a progress bar that reaches 100%; with --json or without a terminal, none', async () => {
  const target = join(dir, 'bar-repo');
  const image = join(dir, 'bar.img');
  await makeImage(image, 24 * MiB, [[0, pattern(24 * MiB, 7)]]);
  assert.is((await hamal(['sync', '--vm', 'bar', '--disk', `d=${image}`, '--target', target])).code, 0);
  // script(1) runs the command on a pseudo-terminal and copies what it printed.
  const onTty = (args: string[]) => {
    const line = [...HAMAL_ARGV, '--config', TEST_CONFIG, ...args].map((a) => `'${a}'`).join(' ');
    return run('script', ['-qec', line, '/dev/null']);
  };
  const out = join(dir, 'bar.out');
  const restored = await onTty(['restore', '--target', target, '--vm', 'bar', '--disk', 'd', '--out', out]);
  assert.is(restored.code, 0, restored.stdout);
  assert.match(restored.stdout, /restoring bar\/d \|.*\| 100% 24\.0 MiB of 24\.0 MiB/);
  assert.is(await sha256File(out), await sha256File(image));
  const verified = await onTty(['verify', '--target', target, '--deep']);
  assert.is(verified.code, 0, verified.stdout);
  assert.match(verified.stdout, /verifying \(deep\) \|.*\| 100% 6 of 6 chunks/);
  const plain = await hamal(['restore', '--target', target, '--vm', 'bar', '--disk', 'd', '--out', join(dir, 'bar2.out')]);
  assert.not.match(plain.stdout + plain.stderr, /ETA/);
});

test('a background fdatasync that fails (injected ENOSPC) fails the sync and the restore naming the object, exit 1; nothing committed, no partial file', async () => {
  const target = join(dir, 'early-repo');
  const image = join(dir, 'early.img');
  await makeImage(image, 68 * MiB, [[0, pattern(68 * MiB, 3)]]);
  const failed = await hamal(['sync', '--vm', 'early', '--disk', `d=${image}`, '--target', target], { HAMAL_FAILPOINTS: 'store.datasync=enospc@3' });
  assert.is(failed.code, 1, failed.stderr);
  assert.match(failed.stderr, /cannot make object chunks\/\S+ durable .*ENOSPC/);
  assert.equal(JSON.parse((await hamal(['versions', '--target', target, '--json'])).stdout), []);
  assert.is((await hamal(['sync', '--vm', 'early', '--disk', `d=${image}`, '--target', target])).code, 0);
  const out = join(dir, 'early.out');
  const restore = await hamal(['restore', '--target', target, '--vm', 'early', '--disk', 'd', '--out', out], { HAMAL_FAILPOINTS: 'restore.datasync=enospc' });
  assert.is(restore.code, 1, restore.stderr);
  assert.ok(restore.stderr.includes(`cannot write ${out}: ENOSPC`), restore.stderr);
  assert.equal((await fsp.readdir(dir)).filter((f) => f.includes('early.out')), [], 'no file, partial or whole');
  assert.is((await hamal(['restore', '--target', target, '--vm', 'early', '--disk', 'd', '--out', out])).code, 0);
  assert.is(await sha256File(out), await sha256File(image));
});

test.run();
