// SIGTERM or SIGINT during `hamal restore`: the partial file is removed, a file that was
// at --out before is left as it was, and the exit code says which signal (143, 130).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { HAMAL, hamal } from '../helpers/cli.ts';
import { MiB, pattern, sha256File, tempDir } from '../helpers/disks.ts';

let dir: string;
let repo: string;
let conf: string;

/**
 * A restore slow enough to be caught in the middle: 64 MiB of 4 KiB blocks, one chunk at a
 * time (16384 chunk reads, about 2 s here). The content repeats, so the sync stays quick.
 */
test.before(async () => {
  dir = await tempDir('hamal-restore-sig-');
  repo = join(dir, 'repo');
  const img = join(dir, 'disk.img');
  const unit = pattern(16 * 4096, 3);
  await fsp.writeFile(img, Buffer.concat(Array.from({ length: (64 * MiB) / unit.length }, () => unit)));
  const r = await hamal(['sync', '--vm', 'v', '--disk', `d=${img}`, '--target', repo, '--block-size', '4096']);
  assert.is(r.code, 0, r.stderr);
  await fsp.rm(img);
  conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${join(dir, 'lib')}\n[hamal]\nrestore_concurrency = 1\n`);
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

/**
 * Starts `hamal restore` (umask 000) into `folder`, sends `signal` once its partial file
 * appears, and resolves to the exit code, stderr and the partial file's mode.
 */
async function interrupt(folder: string, signal: NodeJS.Signals, flags: string[] = []) {
  const args = ['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', join(folder, 'out.img'), ...flags];
  const child = spawn('sh', ['-c', 'umask 000 && exec "$0" "$@"', process.execPath, HAMAL, ...args], { env: { ...process.env, HAMAL_CONFIG: conf }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let partialMode: number | undefined;
  let running = true;
  void exited.then(() => (running = false));
  while (running && partialMode === undefined) {
    const partial = (await fsp.readdir(folder)).find((n) => n.startsWith('.out.img.hamal-partial-'));
    if (partial) partialMode = (await fsp.stat(join(folder, partial))).mode & 0o777;
    else await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.ok(running, `the restore ended before its partial file was seen: ${stderr}`);
  child.kill(signal);
  return { code: await exited, stderr, partialMode };
}

test('SIGTERM during a restore to a new file: exit 143, the partial file (0600 while it lived) is removed, no output', async () => {
  const folder = join(dir, 'term');
  await fsp.mkdir(folder);
  const r = await interrupt(folder, 'SIGTERM');
  assert.is(r.code, 143, r.stderr);
  assert.is(r.partialMode, 0o600, 'the partial file is 0600 whatever the umask');
  assert.match(r.stderr, /interrupted by SIGTERM: restore of vm v disk d version \S+ to \S+ stopped/);
  assert.equal(await fsp.readdir(folder), [], 'no partial file, no output file');
});

test('SIGINT during a restore --force over an existing file: exit 130, the existing file is as it was, no partial file', async () => {
  const folder = join(dir, 'int');
  await fsp.mkdir(folder);
  const out = join(folder, 'out.img');
  await fsp.writeFile(out, pattern(300_000, 11), { mode: 0o600 });
  const before = await fsp.stat(out);
  const sha = await sha256File(out);
  const r = await interrupt(folder, 'SIGINT', ['--force']);
  assert.is(r.code, 130, r.stderr);
  assert.equal(await fsp.readdir(folder), ['out.img'], 'no partial file');
  const after = await fsp.stat(out);
  assert.is(await sha256File(out), sha);
  assert.equal([after.ino, after.mode, after.size], [before.ino, before.mode, before.size]);
});

test.run();
