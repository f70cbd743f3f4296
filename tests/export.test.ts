// `hamal export` (docs/export.md) against real NBD clients: nbdinfo, nbdcopy (libnbd-bin),
// qemu-img and qemu-io, plus a raw socket for what no real client sends.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, existsSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join, relative } from 'node:path';
import { allOutput, hamal, HAMAL_ARGV, TEST_CONFIG } from './helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from './helpers/disks.ts';
import { caSigned } from './helpers/testCerts.ts';
import { RawNbd, u32 } from './helpers/rawNbd.ts';

const PASS = 'export test passphrase 7';
let dir: string;
let repo: string;
let img: string;
/** Version ids, oldest first, and the sha256 of `hamal restore` of each. */
let versions: string[] = [];
const restoredSha: Record<string, string> = {};
const restoredFile: Record<string, string> = {};
let sockets = 0;
const sock = () => join(dir, `s${++sockets}.sock`);

// ---- processes: every child is killed when the test process ends, also after a failure
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

interface Exported {
  url: string;
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `sig`, resolves with the exit code. */
  stop: (sig?: NodeJS.Signals) => Promise<number | null>;
}

function spawnExport(args: string[], env: Record<string, string> = {}) {
  const argv = [...HAMAL_ARGV, 'export', '--verbose', ...args];
  const child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, HAMAL_CONFIG: TEST_CONFIG, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      live.delete(child);
      allOutput.push(out, err);
      resolve({ code, signal });
    }),
  );
  return { child, exited, stdout: () => out, stderr: () => err };
}

/** Starts `hamal export ARGS` and waits for the URL it prints when it serves. */
async function startExport(args: string[], env: Record<string, string> = {}): Promise<Exported> {
  const p = spawnExport(args, env);
  const end = Date.now() + 20_000;
  while (!p.stdout().includes('\n')) {
    const gone = await Promise.race([p.exited, new Promise((r) => setTimeout(() => r(null), 50))]);
    if (gone) throw new Error(`hamal export ${args.join(' ')} exited before serving: ${JSON.stringify(gone)} ${p.stderr()}`);
    if (Date.now() > end) throw new Error(`hamal export ${args.join(' ')} did not start: ${p.stderr()}`);
  }
  return {
    url: p.stdout().split('\n')[0]!,
    child: p.child,
    output: () => p.stderr(),
    exited: p.exited,
    stop: async (sig = 'SIGTERM') => {
      p.child.kill(sig);
      return (await p.exited).code;
    },
  };
}

/** The export's log once it holds `text` (it logs a refused client after the client has seen the refusal), or all of it after `ms`. */
async function logged(e: Exported, text: string, ms = 5000): Promise<string> {
  const end = Date.now() + ms;
  while (!e.output().includes(text) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return e.output();
}

/** Runs `hamal export ARGS` expected to fail at start; a hang fails the test instead of blocking it. */
async function failingExport(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  const p = spawnExport(args, env);
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 15_000);
  const { code } = await p.exited;
  clearTimeout(timer);
  return { code, stderr: p.stderr() };
}

function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    live.add(child);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => {
      live.delete(child);
      resolve({ code, out });
    });
  });
}

/** sha256 of every file under `root` (path and bytes), to show a repository was not written. */
async function treeHash(root: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string) => {
    for (const e of (await fsp.readdir(d, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else h.update(`${relative(root, p)}\0`).update(await fsp.readFile(p));
    }
  };
  await walk(root);
  return h.digest('hex');
}

const manifestOf = async (r: string, version: string) => JSON.parse(await fsp.readFile(join(r, 'vms/vm1/disks/d0/versions', `${version}.json`), 'utf8'));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const sync = async () => {
  const r = await hamal(['sync', '--vm', 'vm1', '--disk', `d0=${img}`, '--target', repo, '--block-size', String(MiB), '--json']);
  assert.is(r.code, 0, r.stderr);
};

test.before(async () => {
  dir = await tempDir('hamal-export-');
  repo = join(dir, 'repo');
  img = join(dir, 'disk.img');
  // 16 MiB in 1 MiB blocks: data in blocks 0-3, 10 and 15, zero blocks between.
  await makeImage(img, 16 * MiB, [
    [0, pattern(3 * MiB + 12345, 1)],
    [10 * MiB, pattern(MiB, 2)],
    [15 * MiB + 5, Buffer.from('the last block')],
  ]);
  await sync();
  await writeAt(img, 2 * MiB + 5, pattern(10, 3));
  await writeAt(img, 12 * MiB, pattern(MiB, 4));
  await sync();
  const list = await hamal(['versions', '--target', repo, '--json']);
  versions = JSON.parse(list.stdout).map((v: { version: string }) => v.version);
  assert.is(versions.length, 2);
  for (const v of versions) {
    const out = join(dir, `restored-${v}.img`);
    const r = await hamal(['restore', '--target', repo, '--vm', 'vm1', '--disk', 'd0', '--version', v, '--out', out]);
    assert.is(r.code, 0, r.stderr);
    restoredFile[v] = out;
    restoredSha[v] = await sha256File(out);
  }
  assert.is.not(restoredSha[versions[0]!], restoredSha[versions[1]!]);
});

test.after(async () => {
  for (const c of live) c.kill('SIGKILL');
  await fsp.rm(dir, { recursive: true, force: true });
});

test('nbdinfo: size, read-only, multi-conn, base:allocation; --map shows the zero blocks as holes; --list names the export; socket 0600', async () => {
  const path = sock();
  const e = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${path}`]);
  try {
    assert.is(e.url, `nbd+unix:///?socket=${path}`);
    assert.is((await fsp.stat(path)).mode & 0o777, 0o600);
    const info = await run('nbdinfo', ['--json', e.url]);
    assert.is(info.code, 0, info.out);
    const x = JSON.parse(info.out).exports[0];
    assert.is(x['export-size'], 16 * MiB);
    assert.is(x.is_read_only, true);
    assert.is(x.can_multi_conn, true);
    assert.is(x.can_flush, false);
    assert.equal(x.contexts, ['base:allocation']);

    const map = await run('nbdinfo', ['--map', '--json', e.url]);
    assert.is(map.code, 0, map.out);
    const blocks: Array<string | null> = (await manifestOf(repo, versions[1]!)).blocks;
    const expected: Array<{ offset: number; length: number; type: number }> = [];
    blocks.forEach((b, i) => {
      const type = b === null ? 3 : 0;
      const last = expected[expected.length - 1];
      if (last && last.type === type) last.length += MiB;
      else expected.push({ offset: i * MiB, length: MiB, type });
    });
    assert.equal(JSON.parse(map.out).map((m: { offset: number; length: number; type: number }) => ({ offset: m.offset, length: m.length, type: m.type })), expected);
    assert.ok(expected.some((m) => m.type === 3) && expected.some((m) => m.type === 0), 'both holes and data');

    const list = await run('nbdinfo', ['--list', e.url]);
    assert.match(list.out, 'export="vm1/d0"');
    assert.match(list.out, `version ${versions[1]}`);
    // The export by its name, as --list gives it, is the same export.
    const named = await run('nbdinfo', ['--size', `nbd+unix:///vm1/d0?socket=${path}`]);
    assert.is(named.out.trim(), String(16 * MiB));
    const unknown = await run('nbdinfo', ['--size', `nbd+unix:///nope?socket=${path}`]);
    assert.is.not(unknown.code, 0);
  } finally {
    await e.stop();
  }
});

test('nbdcopy and qemu-img convert of the latest and of an older version equal hamal restore; qemu-img compare', async () => {
  const [old, latest] = [versions[0]!, versions[1]!];
  const a = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`]);
  const b = await startExport(['--target', `file://${repo}`, '--vm', 'vm1', '--disk', 'd0', '--version', old, '--listen', `unix:${sock()}`]);
  try {
    for (const [e, v] of [[a, latest], [b, old]] as const) {
      const copy = join(dir, `nbdcopy-${v}.img`);
      const c = await run('nbdcopy', [e.url, copy]);
      assert.is(c.code, 0, c.out);
      assert.is(await sha256File(copy), restoredSha[v]);
      const conv = join(dir, `convert-${v}.img`);
      const q = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', e.url, conv]);
      assert.is(q.code, 0, q.out);
      assert.is(await sha256File(conv), restoredSha[v]);
      const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', e.url, restoredFile[v]!]);
      assert.is(same.code, 0, same.out);
    }
    // Not vacuous: the older export is not the latest version.
    const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', b.url, restoredFile[latest]!]);
    assert.is(differ.code, 1, differ.out);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test('several clients at once: nbdcopy with 4 connections each, qemu-img compare and nbdinfo --map together', async () => {
  const e = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`, '--cache-mib', '8']);
  try {
    const copies = [1, 2, 3].map((k) => join(dir, `multi-${k}.img`));
    const runs = await Promise.all([
      ...copies.map((c) => run('nbdcopy', ['--threads=4', '--connections=4', '--requests=8', e.url, c])),
      run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', e.url, restoredFile[versions[1]!]!]),
      run('nbdinfo', ['--map', e.url]),
    ]);
    for (const r of runs) assert.is(r.code, 0, r.out);
    for (const c of copies) assert.is(await sha256File(c), restoredSha[versions[1]!]);
    const opened = e.output().match(/connection \d+ from unix socket opened/g) ?? [];
    assert.ok(opened.length >= 12, `${opened.length} connections`);
  } finally {
    await e.stop();
  }
});

test('--writable: a qemu-io write lands in the overlay, reads back through the export, survives a restart; the repository is untouched', async () => {
  const latest = versions[1]!;
  const overlay = join(dir, 'overlay.img');
  const before = await treeHash(repo);
  const args = ['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--writable', '--overlay', overlay];
  let e = await startExport([...args, '--listen', `unix:${sock()}`]);
  const expected = await fsp.readFile(restoredFile[latest]!);
  expected.fill(0xab, 12345, 12345 + 70000);
  try {
    const info = JSON.parse((await run('nbdinfo', ['--json', e.url])).out).exports[0];
    assert.is(info.is_read_only, false);
    assert.is(info.can_flush, true);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 12345 70000', e.url]);
    assert.is(w.code, 0, w.out);
    assert.match(w.out, 'wrote 70000/70000 bytes at offset 12345');
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xab 12345 70000', '-c', 'read -P 0 5000000 4096', e.url]);
    assert.is(r.code, 0, r.out);
    assert.not.match(r.out, 'verification failed');
    const copy = join(dir, 'written.img');
    assert.is((await run('nbdcopy', [e.url, copy])).code, 0);
    assert.is(await sha256File(copy), sha(expected));
  } finally {
    assert.is(await e.stop(), 143);
  }
  assert.is(await treeHash(repo), before, 'the repository is as it was');
  const map = JSON.parse(await fsp.readFile(`${overlay}.map`, 'utf8'));
  assert.is(map.version, latest);
  assert.is(map.held, 1, 'one block copied in, not the disk');
  assert.is((await fsp.stat(overlay)).mode & 0o777, 0o600);
  assert.ok(!existsSync(`${overlay}.lock`));

  // Reopened with the same version: the write is there. A mode lost in a copy is set back to 0600.
  await fsp.chmod(overlay, 0o644);
  const again = sock();
  e = await startExport([...args, '--listen', `unix:${again}`]);
  try {
    assert.is((await fsp.stat(overlay)).mode & 0o777, 0o600);
    assert.match(e.output(), `${overlay} was mode 644, readable by others: set to 600`);
    const copy = join(dir, 'written-again.img');
    assert.is((await run('nbdcopy', [e.url, copy])).code, 0);
    assert.is(await sha256File(copy), sha(expected));
    // A zero-length write is answered, not a reason to disconnect (proto.md, NBD_CMD_WRITE); it once was.
    const raw = await RawNbd.connect(again);
    await raw.greet();
    assert.ok((await raw.go())! & 1);
    raw.request(1, 4096n, 0, 5);
    assert.equal(await raw.simpleReply(), { error: 0, cookie: 5 });
    raw.request(0, 12345n, 16, 6);
    assert.equal(await raw.simpleReply(), { error: 0, cookie: 6 });
    assert.ok((await raw.read(16))!.equals(Buffer.alloc(16, 0xab)));
    raw.close();
    // A second export of the same overlay is refused while this one serves it.
    const twice = await failingExport([...args, '--listen', `unix:${sock()}`]);
    assert.is(twice.code, 1);
    assert.match(twice.stderr, `overlay ${overlay} is served by process ${e.child.pid}`);
  } finally {
    await e.stop();
  }
  // With another version: refused, naming the version the overlay belongs to.
  const other = await failingExport([...args, '--version', versions[0]!, '--listen', `unix:${sock()}`]);
  assert.is(other.code, 2);
  assert.match(other.stderr, `holds writes over vm vm1 disk d0 version ${latest}`);
  assert.is(await treeHash(repo), before);
});

test('a read-only export refuses writes: qemu-io cannot open it for writing', async () => {
  const e = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`]);
  try {
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4096', e.url]);
    assert.is.not(w.code, 0);
    assert.match(w.out, /Permission denied|read-only/i);
  } finally {
    await e.stop();
  }
  const bad = await failingExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--writable', '--listen', `unix:${sock()}`]);
  assert.is(bad.code, 2);
  assert.match(bad.stderr, '--writable needs --overlay FILE');
});

test('an encrypted, compressed repository is served byte-exact (and not without its passphrase)', async () => {
  const enc = join(dir, 'enc');
  const env = { HAMAL_PASSPHRASE: PASS };
  assert.is((await hamal(['init', '--target', enc, '--encryption', 'aes-256-gcm', '--compression', 'zstd', '--block-size-mb', '1'], env)).code, 0);
  const s = await hamal(['sync', '--vm', 'vm1', '--disk', `d0=${img}`, '--target', enc], env);
  assert.is(s.code, 0, s.stderr);
  const e = await startExport(['--target', enc, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`], env);
  try {
    const copy = join(dir, 'enc-copy.img');
    const c = await run('nbdcopy', [e.url, copy]);
    assert.is(c.code, 0, c.out);
    assert.is(await sha256File(copy), await sha256File(img));
    assert.not.match(e.output(), PASS);
  } finally {
    await e.stop();
  }
  const locked = await failingExport(['--target', enc, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`], { HAMAL_PASSPHRASE: '' });
  assert.is(locked.code, 2);
  assert.match(locked.stderr, 'is encrypted: set HAMAL_PASSPHRASE');
});

test('a corrupted chunk: the client gets EIO for its block (never other bytes), other blocks still read, the server names the chunk', async () => {
  const bad = join(dir, 'repo-bad');
  await fsp.cp(repo, bad, { recursive: true });
  const id: string = (await manifestOf(bad, versions[1]!)).blocks[10];
  const key = `chunks/${id.slice(0, 2)}/${id}`;
  const file = join(bad, key);
  const bytes = await fsp.readFile(file);
  bytes[777] = bytes[777]! ^ 1;
  await fsp.writeFile(file, bytes);
  const e = await startExport(['--target', bad, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`]);
  try {
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read ${10 * MiB + 4096} 4096`, e.url]);
    assert.match(r.out, 'Input/output error');
    assert.not.match(r.out, 'read 4096/4096');
    const ok = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read 0 4096', e.url]);
    assert.match(ok.out, 'read 4096/4096 bytes at offset 0');
    const copy = await run('nbdcopy', [e.url, join(dir, 'bad-copy.img')]);
    assert.is.not(copy.code, 0, 'nbdcopy fails rather than copy wrong bytes');
    assert.match(e.output(), `chunk ${key} cannot be read: chunk ${key} does not match its hash`);
    assert.match(e.output(), `block 10 (offset ${10 * MiB}) of vm vm1 disk d0 version ${versions[1]}`);
    // Logged once, however often clients asked.
    assert.is(e.output().split(`ERROR   [export] block 10`).length - 1, 1);
  } finally {
    assert.is(await e.stop(), 143);
  }
  // Zeroing the whole block needs nothing of its chunk (it once copied the block in first: EIO).
  const w = await startExport(['--target', bad, '--vm', 'vm1', '--disk', 'd0', '--writable', '--overlay', join(dir, 'bad-overlay.img'), '--listen', `unix:${sock()}`]);
  try {
    const z = await run('qemu-io', ['-f', 'raw', '-c', `write -z ${10 * MiB} ${MiB}`, '-c', `read -P 0 ${10 * MiB} ${MiB}`, w.url]);
    assert.is(z.code, 0, z.out);
    assert.not.match(z.out, /error|failed/i);
    assert.match(z.out, `read ${MiB}/${MiB} bytes at offset ${10 * MiB}`);
  } finally {
    assert.is(await w.stop(), 143);
  }
});

test('a failed fsync fails the overlay: the flush and every later write and flush get EIO, the map marks nothing it may have lost', async () => {
  const overlay = join(dir, 'fsync-overlay.img');
  const path = sock();
  const e = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--writable', '--overlay', overlay, '--listen', `unix:${path}`], { HAMAL_FAILPOINTS: 'overlay.fsync=eio@1' });
  try {
    const c = await RawNbd.connect(path);
    await c.greet();
    assert.ok((await c.go()) !== null);
    c.request(1, 0n, 4096, 1, 0, pattern(4096, 7));
    assert.equal(await c.simpleReply(), { error: 0, cookie: 1 }, 'the write');
    c.request(3, 0n, 0, 2);
    assert.equal(await c.simpleReply(), { error: 5, cookie: 2 }, 'the flush: EIO');
    c.request(1, BigInt(MiB), 4096, 3, 0, pattern(4096, 8));
    assert.equal(await c.simpleReply(), { error: 5, cookie: 3 }, 'a later write: EIO');
    c.request(3, 0n, 0, 4);
    assert.equal(await c.simpleReply(), { error: 5, cookie: 4 }, 'a later flush: EIO, though fsync would now succeed');
    c.request(0, 0n, 4096, 5);
    assert.equal(await c.simpleReply(), { error: 0, cookie: 5 }, 'reads go on');
    await c.read(4096);
    c.close();
  } finally {
    assert.is(await e.stop(), 1, 'the export ends failed: its overlay could not be flushed');
  }
  assert.match(e.output(), `overlay ${overlay}: fsync failed (EIO: i/o error (failpoint overlay.fsync))`);
  const map = JSON.parse(await fsp.readFile(`${overlay}.map`, 'utf8'));
  assert.is(map.held, 0, 'the map marks no block written after the last good flush');
});

test('SIGTERM and SIGINT: exit 143/130, socket removed, lock released; prune is refused while it serves and runs after', async () => {
  const copy = join(dir, 'repo-prune');
  await fsp.cp(repo, copy, { recursive: true });
  const path = sock();
  const e = await startExport(['--target', copy, '--vm', 'vm1', '--disk', 'd0', '--version', versions[0]!, '--listen', `unix:${path}`]);
  // An idle client in transmission must not hold the shutdown up.
  const idle = await RawNbd.connect(path);
  await idle.greet();
  assert.ok((await idle.go()) !== null);
  const refused = await hamal(['prune', '--target', copy, '--keep-last', '1']);
  assert.is(refused.code, 1);
  assert.match(refused.stderr, 'in use: export vm1/d0');
  const started = Date.now();
  assert.is(await e.stop('SIGTERM'), 143);
  assert.ok(Date.now() - started < 5000, 'stopped promptly');
  assert.ok(await idle.closedByServer());
  assert.ok(!existsSync(path), 'socket removed');
  assert.equal((await fsp.readdir(join(copy, 'locks'))).filter((n) => n.startsWith('shared-')), []);
  const pruned = await hamal(['prune', '--target', copy, '--keep-last', '1']);
  assert.is(pruned.code, 0, pruned.stderr);
  assert.match(pruned.stdout, `deleted version vm1/d0@${versions[0]}`);

  const again = await startExport(['--target', copy, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${path}`]);
  assert.is(await again.stop('SIGINT'), 130);
  assert.ok(!existsSync(path));
});

test('hostile clients (bad flags, garbage magic, an oversized option, bad requests) are answered or dropped; the server keeps serving', async () => {
  const path = sock();
  const e = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${path}`]);
  try {
    const flags = await RawNbd.connect(path);
    await flags.greet(0xff);
    assert.ok(await flags.closedByServer(), 'unknown client flags');

    const garbage = await RawNbd.connect(path);
    await garbage.greet();
    garbage.send(Buffer.from('GARBAGE!GARBAGE!GARBAGE!'));
    assert.ok(await garbage.closedByServer(), 'bad option magic');

    const huge = await RawNbd.connect(path);
    await huge.greet();
    huge.option(7, Buffer.alloc(0), 0xffffffff);
    assert.ok(await huge.closedByServer(), 'oversized option');

    const c = await RawNbd.connect(path);
    await c.greet();
    c.option(99, Buffer.from('whatever'));
    assert.is((await c.optionReply())!.type, 2 ** 31 + 1, 'NBD_REP_ERR_UNSUP, and the connection goes on');
    c.option(3);
    const listed = (await c.optionReply())!;
    assert.is(listed.type, 2);
    assert.match(listed.data.toString('utf8', 4), 'vm1/d0');
    assert.is((await c.optionReply())!.type, 1);
    c.option(8, Buffer.from('x'));
    assert.is((await c.optionReply())!.type, 2 ** 31 + 3, 'NBD_REP_ERR_INVALID for data where none belongs');
    const tflags = (await c.go())!;
    assert.ok(tflags & 2, 'NBD_FLAG_READ_ONLY');
    assert.ok(tflags & 256, 'NBD_FLAG_CAN_MULTI_CONN');
    const expectError = async (type: number, offset: bigint, length: number, errno: number, payload?: Buffer) => {
      c.request(type, offset, length, 7, 0, payload);
      const reply = await c.simpleReply();
      assert.equal(reply, { error: errno, cookie: 7 }, `command ${type} at ${offset} +${length}`);
    };
    await expectError(0, BigInt(16 * MiB), 4096, 22); // read past the end
    await expectError(0, 2n ** 63n, 1, 22);
    await expectError(0, 0n, 64 * MiB, 22); // longer than the max payload
    await expectError(42, 0n, 0, 22); // unknown command
    await expectError(7, 0n, 4096, 22); // block status without a meta context
    await expectError(1, 0n, 4096, 1, pattern(4096, 9)); // write: EPERM, its payload skipped
    await expectError(3, 0n, 0, 1); // flush
    c.request(0, 0n, 4096, 8);
    assert.equal(await c.simpleReply(), { error: 0, cookie: 8 });
    const first = (await fsp.readFile(restoredFile[versions[1]!]!)).subarray(0, 4096);
    assert.ok((await c.read(4096))!.equals(first), 'still in step after the refused write');
    c.send(Buffer.alloc(28, 0x5a));
    assert.ok(await c.closedByServer(), 'bad request magic');

    // A failed NBD_OPT_SET_META_CONTEXT drops the context set before (proto.md): block status is refused.
    const m = await RawNbd.connect(path);
    await m.greet();
    const metaQuery = (name: string) => Buffer.concat([u32(name.length), Buffer.from(name), u32(1), u32(15), Buffer.from('base:allocation')]);
    m.option(8);
    assert.is((await m.optionReply())!.type, 1);
    m.option(10, metaQuery(''));
    assert.is((await m.optionReply())!.type, 4, 'NBD_REP_META_CONTEXT');
    assert.is((await m.optionReply())!.type, 1);
    m.option(10, metaQuery('no such export'));
    assert.is((await m.optionReply())!.type, 2 ** 31 + 6, 'NBD_REP_ERR_UNKNOWN');
    assert.ok((await m.go()) !== null);
    m.request(7, 0n, 4096, 9);
    const chunk = (await m.read(20))!;
    assert.is(chunk.readUInt32BE(0), 0x668e33ef, 'a structured reply');
    assert.is(chunk.readUInt16BE(6), 2 ** 15 + 1, 'NBD_REPLY_TYPE_ERROR');
    assert.is((await m.read(chunk.readUInt32BE(16)))!.readUInt32BE(0), 22, 'EINVAL');
    m.close();

    // Options sent without reading a reply: the server stops reading them instead of queueing
    // replies (before: 660 MiB of memory within 3 s of 20 MiB of options).
    const rssMiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${e.child.pid}/status`, 'utf8'))![1]) / 1024;
    const rssBefore = rssMiB();
    const flood = await RawNbd.connect(path);
    await flood.greet();
    flood.socket.pause(); // reads no reply
    const one = Buffer.concat([Buffer.from('IHAVEOPT'), u32(99), u32(0)]);
    const burst = Buffer.concat(Array.from({ length: 64 * 1024 }, () => one));
    for (let k = 0; k < 20; k++) flood.send(burst);
    await new Promise((r) => setTimeout(r, 2000));
    const grown = rssMiB() - rssBefore;
    flood.close();
    assert.ok(grown < 24, `the server grew by ${grown.toFixed(1)} MiB`);

    // 16 connections (the most served at once) that never choose an export lock nobody out:
    // the oldest still negotiating gives way to each new client.
    const idle = await Promise.all(Array.from({ length: 16 }, () => RawNbd.connect(path)));
    await Promise.all(idle.map((i) => i.greet()));
    const served = await run('nbdinfo', ['--size', e.url]);
    assert.is(served.out.trim(), String(16 * MiB), served.out);
    assert.match(await logged(e, 'still negotiating'), /connection \d+ from unix socket dropped: still negotiating while 16 clients are connected/);
    assert.ok(await idle[0]!.closedByServer(), 'the oldest was dropped');
    idle.forEach((i) => i.close());

    // A STARTTLS on a server without TLS is refused, and the option phase goes on.
    const t = await RawNbd.connect(path);
    await t.greet();
    t.option(5);
    assert.is((await t.optionReply())!.type, 2 ** 31 + 2, 'NBD_REP_ERR_POLICY');
    t.option(2);
    assert.is((await t.optionReply())!.type, 1, 'NBD_OPT_ABORT acknowledged');
    assert.ok(await t.closedByServer());

    const info = await run('nbdinfo', ['--size', e.url]);
    assert.is(info.out.trim(), String(16 * MiB), 'the server still serves');
    assert.match(e.output(), 'bad request magic; disconnected');
    assert.match(e.output(), 'option 7 of 4294967295 bytes');
  } finally {
    assert.is(await e.stop(), 143, 'still running until told to stop');
  }
});

test('tcp: refused without TLS unless --no-tls; with TLS (and a client CA) nbdinfo and nbdcopy read over nbds://, plain clients are refused', async () => {
  const pki = join(dir, 'pki');
  await fsp.mkdir(pki);
  const { ca, leaf } = caSigned(pki);
  const base = ['--target', repo, '--vm', 'vm1', '--disk', 'd0'];
  const plain = await failingExport([...base, '--listen', 'tcp:127.0.0.1:0']);
  assert.is(plain.code, 2);
  assert.match(plain.stderr, 'give --tls-cert and --tls-key, or --no-tls');

  // libnbd reads its CA (and client identity) from a folder of fixed names.
  const clientDir = join(pki, 'client');
  await fsp.mkdir(clientDir);
  await fsp.copyFile(ca.certFile, join(clientDir, 'ca-cert.pem'));
  const e = await startExport([...base, '--listen', 'tcp:127.0.0.1:0', '--tls-cert', leaf.certFile, '--tls-key', leaf.keyFile]);
  try {
    assert.match(e.url, /^nbds:\/\/127\.0\.0\.1:\d+\/$/);
    const withCa = `${e.url}?tls-certificates=${clientDir}`;
    const info = await run('nbdinfo', [withCa]);
    assert.is(info.code, 0, info.out);
    assert.match(info.out, 'with TLS');
    const copy = join(dir, 'tls-copy.img');
    assert.is((await run('nbdcopy', [withCa, copy])).code, 0);
    assert.is(await sha256File(copy), restoredSha[versions[1]!]);
    const clear = await run('nbdinfo', [e.url.replace('nbds://', 'nbd://')]);
    assert.is.not(clear.code, 0, clear.out);
  } finally {
    await e.stop();
  }

  // --tls-client-ca: a client without a certificate that CA signed is cut off at the TLS handshake.
  const ssl = (args: string[]) => run('openssl', args).then((r) => assert.is(r.code, 0, r.out));
  const withCert = join(pki, 'with-cert');
  await fsp.mkdir(withCert);
  await fsp.copyFile(ca.certFile, join(withCert, 'ca-cert.pem'));
  await ssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=client', '-keyout', join(withCert, 'client-key.pem'), '-out', join(pki, 'client.csr')]);
  await ssl(['x509', '-req', '-in', join(pki, 'client.csr'), '-CA', ca.certFile, '-CAkey', ca.keyFile, '-CAcreateserial', '-days', '2', '-out', join(withCert, 'client-cert.pem')]);
  // A self-signed client certificate: a bare server-side TLSSocket once let it read the disk.
  const rogue = join(pki, 'rogue');
  await fsp.mkdir(rogue);
  await fsp.copyFile(ca.certFile, join(rogue, 'ca-cert.pem'));
  await ssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=client', '-keyout', join(rogue, 'client-key.pem'), '-out', join(rogue, 'client-cert.pem')]);
  const mutual = await startExport([...base, '--listen', 'tcp:127.0.0.1:0', '--tls-cert', leaf.certFile, '--tls-key', leaf.keyFile, '--tls-client-ca', ca.certFile]);
  try {
    const anonymous = await run('nbdinfo', ['--size', `${mutual.url}?tls-certificates=${clientDir}`]);
    assert.is.not(anonymous.code, 0, anonymous.out);
    assert.match(await logged(mutual, 'client certificate refused: none presented'), 'client certificate refused: none presented');
    // libnbd offers no certificate the server's CA list does not name; this client does.
    const raw = await RawNbd.connectTcp('127.0.0.1', Number(new URL(mutual.url).port));
    await raw.greet(3);
    const secure = await raw.startTls({ ca: ca.cert, cert: await fsp.readFile(join(rogue, 'client-cert.pem')), key: await fsp.readFile(join(rogue, 'client-key.pem')), servername: '127.0.0.1', checkServerIdentity: () => undefined });
    assert.is(secure ? await secure.go() : null, null, 'a self-signed client certificate was let in');
    assert.ok(!secure || (await secure.closedByServer()));
    raw.close();
    assert.match(await logged(mutual, 'DEPTH_ZERO_SELF_SIGNED_CERT'), 'client certificate refused: DEPTH_ZERO_SELF_SIGNED_CERT');
    const known = await run('nbdinfo', ['--size', `${mutual.url}?tls-certificates=${withCert}`]);
    assert.is(known.out.trim(), String(16 * MiB), known.out);
  } finally {
    await mutual.stop();
  }

  const open = await startExport([...base, '--listen', 'tcp:127.0.0.1:0', '--no-tls']);
  try {
    assert.match(open.url, /^nbd:\/\/127\.0\.0\.1:\d+\/$/);
    assert.match(open.output(), 'serving over plain TCP (--no-tls)');
    assert.is((await run('nbdinfo', ['--size', open.url])).out.trim(), String(16 * MiB));
  } finally {
    await open.stop();
  }
});

test('--listen: a path holding a regular file is refused and left alone; a dead socket left by a killed export is replaced', async () => {
  const file = join(dir, 'not-a-socket');
  await fsp.writeFile(file, 'keep me');
  const r = await failingExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${file}`]);
  assert.is(r.code, 2);
  assert.match(r.stderr, `${file} exists and is a regular file, not a socket: refusing to replace it`);
  assert.is(await fsp.readFile(file, 'utf8'), 'keep me');

  const path = sock();
  const killed = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${path}`]);
  killed.child.kill('SIGKILL');
  await killed.exited;
  assert.ok(existsSync(path), 'a SIGKILL leaves the socket');
  const e = await startExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${path}`]);
  try {
    assert.is((await run('nbdinfo', ['--size', e.url])).out.trim(), String(16 * MiB));
    const busy = await failingExport(['--target', repo, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${path}`]);
    assert.is(busy.code, 1);
    assert.match(busy.stderr, `socket ${path} is in use: another server listens on it`);
  } finally {
    await e.stop();
  }
});

/**
 * A 512-byte boot sector, hand-assembled (16-bit real mode, loaded by the BIOS at 0x7c00):
 * reads one sector at LBA `lba` to 0x7e00 with the BIOS's extended read (int 13h, AH=42h),
 * writes its NUL-terminated text to COM1 (port 0x3f8), halts. The text lives in another
 * block than the boot sector, so the BIOS's own reads and the loader's both go through the export.
 */
function bootSector(lba: number): Buffer {
  const code = [
    0x31, 0xc0, //             xor ax, ax
    0x8e, 0xd8, //             mov ds, ax
    0x8e, 0xc0, //             mov es, ax
    0xbe, 0x1e, 0x7c, //       mov si, 0x7c1e (the packet below)
    0xb4, 0x42, //             mov ah, 0x42 (dl: the boot drive, as the BIOS left it)
    0xcd, 0x13, //             int 0x13
    0xbe, 0x00, 0x7e, //       mov si, 0x7e00
    0xba, 0xf8, 0x03, //       mov dx, 0x3f8
    0xac, //                   next: lodsb
    0x84, 0xc0, //             test al, al
    0x74, 0x03, //             jz done
    0xee, //                   out dx, al
    0xeb, 0xf8, //             jmp next
    0xf4, //                   done: hlt
    0xeb, 0xfd, //             jmp done
  ];
  const b = Buffer.alloc(512);
  Buffer.from(code).copy(b, 0);
  // Disk address packet at 0x7c1e: size 16, 1 sector, to 0000:7e00, from `lba`.
  b.writeUInt8(16, 30);
  b.writeUInt16LE(1, 32);
  b.writeUInt16LE(0x7e00, 34);
  b.writeUInt16LE(0, 36);
  b.writeBigUInt64LE(BigInt(lba), 38);
  b.writeUInt16LE(0xaa55, 510);
  return b;
}

test('qemu boots from a writable export: the BIOS loads the boot sector, which reads another block and prints it on the serial port', async () => {
  const bdir = join(dir, 'boot');
  await fsp.mkdir(bdir);
  const disk = join(bdir, 'boot.img');
  const LBA = 2048 + 7; // 1 MiB + 7 sectors: block 16 of 64 KiB blocks
  const text = `hamal export booted ${process.pid}\r\n`;
  await makeImage(disk, 4 * MiB, [[0, bootSector(LBA)], [LBA * 512, Buffer.from(text + '\0')]]);
  const brepo = join(bdir, 'repo');
  const r = await hamal(['sync', '--vm', 'bootvm', '--disk', `vda=${disk}`, '--target', brepo, '--block-size', String(64 * 1024)]);
  assert.is(r.code, 0, r.stderr);
  await fsp.rm(disk); // only the repository holds the disk now
  // Writable, as a failover boots it: an IDE disk cannot be read-only in QEMU.
  const e = await startExport(['--target', brepo, '--vm', 'bootvm', '--disk', 'vda', '--listen', `unix:${sock()}`, '--writable', '--overlay', join(bdir, 'vda.overlay')]);
  const serial = join(bdir, 'serial.txt');
  const accel = existsSync('/dev/kvm') ? 'kvm:tcg' : 'tcg';
  const qemu = spawn('qemu-system-x86_64', ['-machine', `pc,accel=${accel}`, '-m', '32', '-display', 'none', '-vga', 'none', '-nodefaults', '-no-reboot', '-serial', `file:${serial}`, '-drive', `file=${e.url},format=raw,if=ide`], { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(qemu);
  let qerr = '';
  qemu.stderr!.on('data', (d) => (qerr += d));
  try {
    let out = '';
    for (let i = 0; i < 300 && !out.includes(text); i++) {
      if (qemu.exitCode !== null) break;
      await new Promise((res) => setTimeout(res, 100));
      out = await fsp.readFile(serial, 'utf8').catch(() => '');
    }
    assert.ok(out.includes(text), `serial console: ${JSON.stringify(out)}; qemu: ${qerr}`);
    const reads = e.output().match(/connection \d+ from unix socket opened/g) ?? [];
    assert.ok(reads.length >= 1, 'qemu connected to the export');
  } finally {
    qemu.kill('SIGKILL');
    await new Promise((res) => (qemu.exitCode !== null || qemu.signalCode !== null ? res(null) : qemu.once('close', res)));
    live.delete(qemu);
    await e.stop();
  }
});

test('an S3 (radosgw) repository is served byte-exact', async () => {
  const endpoint = process.env.HAMAL_TEST_S3_ENDPOINT;
  const creds = { AWS_ACCESS_KEY_ID: process.env.HAMAL_TEST_S3_ACCESS_KEY ?? '', AWS_SECRET_ACCESS_KEY: process.env.HAMAL_TEST_S3_SECRET_KEY ?? '' };
  // scripts/test starts radosgw; a run without it says so instead of passing.
  assert.ok(endpoint && creds.AWS_ACCESS_KEY_ID, 'radosgw is not running: scripts/test starts it (tests/ceph/ceph-up.sh)');
  const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
  const client = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: { accessKeyId: creds.AWS_ACCESS_KEY_ID, secretAccessKey: creds.AWS_SECRET_ACCESS_KEY } });
  await client.send(new CreateBucketCommand({ Bucket: 'hamal-tests' })).catch((err: { name?: string }) => {
    if (err.name !== 'BucketAlreadyOwnedByYou' && err.name !== 'BucketAlreadyExists') throw err;
  });
  client.destroy();
  const s3 = `s3://hamal-tests/export-${process.pid}-${Date.now()}/?endpoint=${endpoint}`;
  // img holds the latest local version's bytes: synced to S3 it is the same disk.
  const r = await hamal(['sync', '--vm', 'vm1', '--disk', `d0=${img}`, '--target', s3, '--block-size', String(MiB)], creds);
  assert.is(r.code, 0, r.stderr);
  const e = await startExport(['--target', s3, '--vm', 'vm1', '--disk', 'd0', '--listen', `unix:${sock()}`, '--cache-mib', '8'], creds);
  try {
    const copy = join(dir, 's3-copy.img');
    const c = await run('nbdcopy', [e.url, copy]);
    assert.is(c.code, 0, c.out);
    assert.is(await sha256File(copy), restoredSha[versions[1]!]);
  } finally {
    await e.stop();
  }
});

test.run();
