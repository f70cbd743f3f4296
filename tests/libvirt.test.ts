// The libvirt source against the real thing: Debian's libvirtd and QEMU (TCG: /dev/kvm is
// root's alone here), a domain with two qcow2 disks and no operating system. The "guest"
// writes through QEMU itself (HMP qemu-io on the disk's device), so QEMU's dirty bitmaps
// see every write; the reference content is `qemu-img convert -U` of the images
// (cache=writethrough: every write is in the file when qemu-io returns).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { promises as fsp, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LibvirtSource } from '../src/sources/libvirt/LibvirtSource.ts';
import { jobKey } from '../src/sources/libvirt/BackupJob.ts';
import { FsStore, Repository, restoreDisk, runVmSync, type SyncEvent } from '../mod.ts';
import { hamal, HAMAL_ARGV } from './helpers/cli.ts';
import { MiB, sha256File, tempDir } from './helpers/disks.ts';

const run = promisify(execFile);
const URI = 'qemu:///system';
const virsh = (...args: string[]) => run('virsh', ['-q', '-c', URI, ...args]).then((r) => r.stdout);
let dir: string;
let started: string[] = [];
const domain = `hamal-test-${randomBytes(3).toString('hex')}`;

/** libvirtd and virtlogd, unless already running; their pid files, to stop what we started. */
async function startLibvirt(): Promise<string[]> {
  if (await virsh('version').then(() => true, () => false)) return [];
  const pids: string[] = [];
  for (const daemon of ['virtlogd', 'libvirtd']) {
    const pid = join(dir, `${daemon}.pid`);
    await run(daemon, ['-d', '-p', pid]);
    pids.push(pid);
  }
  for (let i = 0; i < 100 && !(await virsh('version').then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 100));
  return pids;
}

/** The guest writes `pattern` (a byte) over [offset, offset + length) of disk `n` (0: vda). */
async function guestWrite(n: number, offset: number, length: number, pattern: number): Promise<void> {
  const out = await virsh('qemu-monitor-command', '--hmp', domain, `qemu-io -d virtio-disk${n}/virtio-backend "write -P ${pattern} ${offset} ${length}"`);
  assert.not.match(out, /error|failed/i, out);
}

/** sha256 of what disk `name` holds now, read from its image as QEMU wrote it. */
async function imageSha(name: string): Promise<string> {
  const raw = join(dir, `${name}.out`);
  const image = name === 'vdc' ? ['raw', join(dir, 'vdc.raw')] : ['qcow2', join(dir, `${name}.qcow2`)];
  await run('qemu-img', ['convert', '-U', '-f', image[0]!, '-O', 'raw', image[1]!, raw]);
  const sha = await sha256File(raw);
  await fsp.rm(raw);
  return sha;
}

/** Blocks the journal checkpoint file `name` somewhere under `root` records; 0 while there is none. */
async function journalRecords(root: string, name: string): Promise<number> {
  const files = (await fsp.readdir(root, { recursive: true }).catch(() => [] as string[])).filter((f) => f.endsWith(`/${name}`));
  const texts = await Promise.all(files.map((f) => fsp.readFile(join(root, f), 'utf8').catch(() => '{}')));
  return Math.max(0, ...texts.map((t) => (JSON.parse(t) as { records?: number }).records ?? 0));
}

const ourCheckpoints = async () => (await virsh('checkpoint-list', domain, '--name')).split('\n').map((l) => l.trim()).filter((l) => l.startsWith('hamal-'));
const backupJob = async () => /Operation:\s+Backup/.test(await virsh('domjobinfo', domain));

test.before(async () => {
  dir = await tempDir('hamal-libvirt-');
  // QEMU runs as libvirt-qemu: it must be able to reach the images and hamal's lib dir.
  await fsp.chmod(dir, 0o755);
  started = await startLibvirt();
  for (const [name, size] of [['vda', '64M'], ['vdb', '32M']]) await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, `${name}.qcow2`), size!]);
  await run('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'vdc.raw'), '16M']);
  const disk = (name: string, format = 'qcow2') =>
    `<disk type='file' device='disk'><driver name='qemu' type='${format}' cache='writethrough'/><source file='${join(dir, `${name}.${format}`)}'/><target dev='${name}' bus='virtio'/></disk>`;
  const xml = `<domain type='qemu'><name>${domain}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>${disk('vda')}${disk('vdb')}${disk('vdc', 'raw')}<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk><console type='pty'/></devices></domain>`;
  await fsp.writeFile(join(dir, 'domain.xml'), xml);
  await virsh('define', join(dir, 'domain.xml'));
  await virsh('start', domain);
});

test.after(async () => {
  await virsh('destroy', domain).catch(() => {});
  await virsh('undefine', domain, '--checkpoints-metadata').catch(() => {});
  for (const pid of started) {
    const n = Number(await fsp.readFile(pid, 'utf8').catch(() => '0'));
    if (n) process.kill(n, 'SIGTERM');
  }
  await fsp.rm(dir, { recursive: true, force: true });
});

const source = () => new LibvirtSource({ connection: { uri: URI }, workDir: join(dir, 'lib') });

async function syncOnce(repo: Repository) {
  const shas = { vda: await imageSha('vda'), vdb: await imageSha('vdb'), vdc: await imageSha('vdc') };
  const starts: Array<Extract<SyncEvent, { type: 'disk-start' }>> = [];
  const r = await runVmSync(source(), domain, repo, {}, (e) => {
    if (e.type === 'disk-start') starts.push(e);
  });
  assert.equal(r.failed, []);
  assert.is(await backupJob(), false, 'the backup job ended');
  assert.equal(await fsp.readdir(join(dir, 'lib', 'libvirt')), [], 'no socket, scratch or XML file left');
  const by = (d: string) => ({ m: r.versions.find((v) => v.disk === d)!, start: starts.find((s) => s.disk === d)!, sha: shas[d as 'vda' | 'vdb' | 'vdc'] });
  return { vda: by('vda'), vdb: by('vdb'), vdc: by('vdc') };
}

async function assertRestores(repo: Repository, v: { m: Parameters<typeof restoreDisk>[1]; sha: string }, what: string) {
  const out = join(dir, 'restored.img');
  await restoreDisk(repo, v.m, out);
  assert.is(await sha256File(out), v.sha, what);
  await fsp.rm(out);
}

test('full, then incrementals after unaligned writes: each restore equals the disk at its backup; only dirty clusters read; a raw disk read in full each time; one checkpoint left', async () => {
  await guestWrite(0, 5 * MiB, 4 * MiB, 0x41);
  await guestWrite(1, 20 * MiB + 512, 4096, 0x42);
  await guestWrite(2, 3 * MiB + 7, 5000, 0x47);
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  const v1 = await syncOnce(repo);
  assert.is(v1.vda.start.incremental, false);
  // Allocated 64 KiB clusters only: 5..9 MiB (the other writes fall inside it), the rest of blocks 1 and 2 left zero.
  assert.is(v1.vda.m.stats.readBytes, 4 * MiB, 'allocated clusters only: the parts of blocks 1 and 2 of vda written');
  assert.equal(await ourCheckpoints(), [v1.vda.m.source.changeId]);
  await guestWrite(0, 9 * MiB - 100, 200, 0x43); // inside block 2, across two 64 KiB clusters
  await guestWrite(1, 31 * MiB, 1000, 0x44);
  const v2 = await syncOnce(repo);
  assert.is(v2.vda.start.incremental, true);
  // Only the dirty 64 KiB clusters are read, patched onto the parent's chunk of their block.
  assert.is(v2.vda.m.stats.readBytes, 128 * 1024, 'vda: the two dirty clusters');
  assert.is(v2.vda.m.stats.parentReadBytes, 4 * MiB, 'vda: the chunk of the one block with dirty clusters');
  assert.is(v2.vdb.m.stats.readBytes, 64 * 1024, 'vdb: the one dirty cluster');
  assert.is(v2.vdb.m.stats.parentReadBytes, 0, 'vdb: its block was a hole, patched onto zeros');
  assert.is(v2.vdc.start.incremental, false, 'the raw disk keeps no bitmap');
  assert.is(v2.vdc.m.source.changeId, null);
  const v3 = await syncOnce(repo);
  assert.is(v3.vda.m.stats.readBytes + v3.vdb.m.stats.readBytes, 0, 'nothing written: nothing read');
  for (const [i, v] of [v1, v2, v3].entries()) {
    for (const d of ['vda', 'vdb', 'vdc'] as const) await assertRestores(repo, v[d], `${d} version ${i + 1}`);
  }
  assert.equal(await ourCheckpoints(), [v3.vda.m.source.changeId], 'older checkpoints of ours deleted');
  assert.equal(v3.vda.m.source.changeId, v3.vdb.m.source.changeId);
});

test('a checkpoint deleted behind hamal\'s back: those disks are a full sync with a note', async () => {
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo')));
  const [ck] = await ourCheckpoints();
  await virsh('checkpoint-delete', domain, ck!);
  await guestWrite(0, 40 * MiB, 100, 0x45);
  const v = await syncOnce(repo);
  assert.is(v.vda.start.incremental, false);
  assert.match(v.vda.start.notes.join(), new RegExp(`checkpoint ${ck} of domain ${domain} no longer exists`));
  assert.match(v.vda.m.stats.fullReason ?? '', /no longer exists/);
  await assertRestores(repo, v.vda, 'vda after the full sync');
  await assertRestores(repo, v.vdb, 'vdb after the full sync');
});

test('hamal sync --task with a libvirt task; SIGKILL mid-read: the rerun reads the same backup job again and resumes block for block; writes after the kill land in the next version', async () => {
  const conf = join(dir, 'hamal.conf');
  const lib = join(dir, 'lib');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[data_sync_v2]\npre_disk_readers_count = 1\nfsync_period_frequency = 1\n`);
  const task = join(dir, 't.json');
  const repoDir = join(dir, 'repo-cli');
  await fsp.writeFile(task, JSON.stringify({ version: 1, source: { platform: 'libvirt', vm: domain, connection: { uri: URI } }, target: repoDir }));
  // Ten blocks of distinct bytes: none is deduplicated, so each is a chunk stored.
  for (let b = 0; b < 10; b++) await guestWrite(0, b * 4 * MiB, 4 * MiB, 0x50 + b);
  const atBackup = await imageSha('vda');
  // Reads of a second each; killed once the journal of vda has two blocks checkpointed.
  const child = spawn(HAMAL_ARGV[0]!, [...HAMAL_ARGV.slice(1), '--config', conf, 'sync', '--task', task], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, HAMAL_FAILPOINTS: 'block.read=delay1000' } });
  let killedErr = '';
  child.stderr!.on('data', (d: Buffer) => (killedErr += d.toString()));
  const closed = new Promise<string | null>((r) => child.on('close', (_c, signal) => r(signal)));
  for (let t = 0; t < 600 && child.exitCode === null; t++) {
    if ((await journalRecords(join(lib, 'journals'), 'vda.checkpoint')) >= 2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  const code = await closed;
  assert.is(code, 'SIGKILL', killedErr);
  assert.is(await backupJob(), true, 'the killed run left its backup job');
  // A stale directory of an earlier crash: swept. Another domain's: left alone.
  const ours = join(lib, 'libvirt');
  const key = jobKey((await virsh('domuuid', domain)).trim());
  await fsp.mkdir(join(ours, `${key}.hamal-20200101T000000000Z`));
  await fsp.mkdir(join(ours, 'other-domain.hamal-20200101T000000000Z'));
  // The guest goes on writing: the backup job still serves the disk as it was at the kill.
  await guestWrite(0, 50 * MiB, 4096, 0x48);
  const afterKill = await imageSha('vda');
  const again = await hamal(['--config', conf, '--verbose', 'sync', '--task', task, '--json']);
  assert.is(again.code, 0, again.stderr);
  assert.match(again.stderr, /reading the backup job an interrupted sync left \(checkpoint hamal-\w+\) again/, again.stderr);
  assert.is(await backupJob(), false);
  const vda = (JSON.parse(again.stdout).disks as Array<{ disk: string; version: string; resumedBytes: number; readBytes: number }>).find((d) => d.disk === 'vda')!;
  assert.ok(vda.resumedBytes >= 4 * MiB, `resumed ${vda.resumedBytes} bytes: ${again.stderr}`);
  // Allocated: blocks 0-9 (just written), one 64 KiB cluster of block 10 (the previous test's write at 40 MiB).
  assert.is(vda.readBytes + vda.resumedBytes, 40 * MiB + 64 * 1024, 'what the killed run stored is not read again');
  const out = join(dir, 'cli.img');
  const restore = async (version: string) => {
    assert.is((await hamal(['restore', '--target', repoDir, '--vm', domain, '--disk', 'vda', '--version', version, '--out', out, '--force'])).code, 0);
    return sha256File(out);
  };
  assert.is(await restore(vda.version), atBackup, 'the version is the disk at the start of the killed run');
  assert.equal(await fsp.readdir(ours), ['other-domain.hamal-20200101T000000000Z'], 'leftovers of this domain removed, no job directory left');
  await fsp.rm(join(ours, 'other-domain.hamal-20200101T000000000Z'), { recursive: true });
  const next = await hamal(['--config', conf, 'sync', '--task', task, '--json']);
  assert.is(next.code, 0, next.stderr);
  const vda2 = (JSON.parse(next.stdout).disks as Array<{ disk: string; version: string; readBytes: number }>).find((d) => d.disk === 'vda')!;
  assert.is(vda2.readBytes, 64 * 1024, 'the cluster of the write after the kill, from the checkpoint of the resumed version');
  assert.is(await restore(vda2.version), afterKill);
  await fsp.rm(out);
  assert.is((await ourCheckpoints()).length, 1, 'one checkpoint of ours left');
  assert.ok(!existsSync(join(lib, 'libvirt-auth')) || (await fsp.readdir(join(lib, 'libvirt-auth'))).length === 0);
});

test('refused clearly: a remote URI, a wrong URI, an unknown domain, a lib dir too long for a socket path, a shut-off domain', async () => {
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo')));
  const remote = new LibvirtSource({ connection: { uri: 'qemu+tcp://127.0.0.1:1/system' }, workDir: join(dir, 'lib') });
  await remote.snapshot(domain).then(
    () => assert.unreachable(),
    (e: Error) => assert.match(e.message, /^libvirt URI qemu\+tcp:\/\/127\.0\.0\.1:1\/system names another host: hamal reads a domain's backup on the host it runs on/),
  );
  const wrong = new LibvirtSource({ connection: { uri: 'qemu:///nowhere' }, workDir: join(dir, 'lib') });
  await wrong.snapshot(domain).then(
    () => assert.unreachable(),
    (e: Error) => assert.match(e.message, /^domain hamal-test-\w+ on qemu:\/\/\/nowhere: .*(connect|URI|path)/i),
  );
  await source().snapshot('no-such-domain').then(
    () => assert.unreachable(),
    (e: Error) => assert.match(e.message, /domain no-such-domain on qemu:\/\/\/system: failed to get domain 'no-such-domain'/),
  );
  const deep = new LibvirtSource({ connection: { uri: URI }, workDir: join(dir, 'l'.repeat(70)) });
  await deep.snapshot(domain).then(
    () => assert.unreachable(),
    (e: Error) => assert.match(e.message, /is longer than a unix socket path may be \(107 bytes\): choose a shorter hamal_lib_dir/),
  );
  assert.is(await backupJob(), false);
  const off = `${domain}-off`;
  await fsp.writeFile(join(dir, 'off.xml'), (await fsp.readFile(join(dir, 'domain.xml'), 'utf8')).replace(`<name>${domain}</name>`, `<name>${off}</name>`));
  await virsh('define', join(dir, 'off.xml'));
  try {
    const r = await runVmSync(source(), off, repo, {});
    assert.unreachable(JSON.stringify(r));
  } catch (e) {
    assert.match((e as Error).message, new RegExp(`domain ${off} is shut off: hamal backs up running domains only`));
  } finally {
    await virsh('undefine', off);
  }
});

test.run();
