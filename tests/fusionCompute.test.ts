// The FusionCompute source against the FusionCompute STAND-IN (tests/helpers/
// FusionComputeStandIn.ts), written from Huawei's own client code (eSDK FC Java,
// nova-fusioncompute, the Go SDK) by a helper who did not see hamal's client: agreement
// shows hamal calls the VRM as Huawei's clients do, not that a VRM behaves so.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { FusionComputeStandIn } from './helpers/FusionComputeStandIn.ts';
import { hamal } from './helpers/cli.ts';
import { MiB, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { FusionComputeSource } from '../src/sources/fusion_compute/FusionComputeSource.ts';
import { DataChannel } from '../src/sources/fusion_compute/DataChannel.ts';
import { FsStore } from '../src/sinks/fs/FsStore.ts';
import { Repository } from '../src/repo/Repository.ts';
import { runVmSync } from '../src/streams/runVmSync.ts';
import { releasing } from '../src/streams/usingResource.ts';

const PASSWORD = 's3cr3t-Pa55word-for-tests';
const run = promisify(execFile);
let dir: string;
let fc: FusionComputeStandIn;
let conf: string;

function task(over: Record<string, unknown> = {}, vm = 'fc-vm-1') {
  return { version: 1, source: { platform: 'fusion_compute', vm, connection: { url: fc.url, username: 'fcadmin', password: PASSWORD, transfer: 'lan', ...over } }, target: join(dir, 'repo') };
}

async function sync(t: object = task(), config = conf) {
  const file = join(dir, `task-${randomUUID()}.json`);
  await fsp.writeFile(file, JSON.stringify(t), { mode: 0o600 });
  return hamal(['sync', '--task', file, '--json', '--config', config]);
}

/** Snapshots of ours still on the VRM, anywhere in the tree. */
const ours = () => fc.snaps.filter((s) => s.name.startsWith('hamal-'));

/** Syncs, then restores every version made and compares it with the volume as it was. */
async function syncAndCheck() {
  const expected = new Map<string, string>();
  for (const v of fc.volumes) expected.set(`volume-${v.uuid}`, await sha256File(v.file));
  const r = await sync();
  assert.is(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as { disks: Array<{ disk: string; version: string; readBytes: number }> };
  assert.is(s.disks.length, 2);
  for (const d of s.disks) {
    const out = join(dir, 'restored.img');
    const rr = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'fc-vm-1', '--disk', d.disk, '--version', d.version, '--out', out, '--config', conf]);
    assert.is(rr.code, 0, rr.stderr);
    assert.is(await sha256File(out), expected.get(d.disk), d.disk);
    await fsp.rm(out);
  }
  assert.equal(ours(), [], 'the snapshot was deleted');
  assert.equal(fc.openBackupResources(), [], 'every backup resource released');
  return s;
}

test.before(async () => {
  dir = await tempDir('hamal-fc-');
  fc = new FusionComputeStandIn(dir, 'fcadmin', PASSWORD);
  // 150 VMs listed before the tests' one whose names contain its name (the VRM's name
  // filter matches loosely): it is found on the second page of 100.
  for (const [i, v] of fc.fillerVms(150).entries()) v.name = `fc-vm-1-clone-${i}`;
  await fc.start();
  conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[data_sync_v2]\npre_disk_readers_count = 4\n[fusion_compute]\nmax_socket_connections_per_host = 2\nlocal_host_ip = 127.0.0.1\n[hamal]\nblock_size_mb = 1\n`);
  const [a, b] = [await fc.addVolume('sys', 1), await fc.addVolume('data', 1)];
  await fc.write(a!, 0, pattern(6 * MiB, 1));
  await fc.write(b!, 300 * MiB + 12345, pattern(5 * MiB, 2));
});
test.after(async () => {
  await fc.stop();
  await fsp.rm(dir, { recursive: true, force: true });
});

test('full sync and two incrementals of a VM past the first page, with two volumes: every restore equals the volume at its snapshot; volumes read one at a time, every channel released', async () => {
  const s1 = await syncAndCheck();
  assert.ok(s1.disks.every((d) => d.readBytes <= 8 * MiB), 'a full sync reads only the blocks the full bitmap marks');
  const [a, b] = fc.volumes;
  await fc.write(a!, 3 * MiB - 100, pattern(300, 3)); // unaligned, across a 1 MiB block boundary
  await fc.write(b!, 900 * MiB + 1, pattern(70_000, 4)); // where nothing was written before
  const s2 = await syncAndCheck();
  assert.ok(s2.disks.every((d) => d.readBytes <= 2 * MiB), JSON.stringify(s2.disks));
  await fc.write(b!, 300 * MiB + 12345, pattern(4096, 5));
  const s3 = await syncAndCheck();
  assert.is(s3.disks.find((d) => d.disk === `volume-${a!.uuid}`)!.readBytes, 0, 'an unchanged volume reads nothing');
  // One volume at a time ([fusion_compute] parallel_volumes = 1), 4 readers held to 2 connections.
  assert.is(fc.maxOpenDataConnections, 2);
  const login = fc.requests.find((r) => r.path === '/service/session' && r.method === 'POST')!;
  assert.is(login.headers['x-auth-key'], createHash('sha256').update(PASSWORD).digest('hex'), 'the password is sent as its SHA-256, never as it is');
  assert.is(login.headers['x-auth-usertype'], '2');
  assert.ok(fc.requests.some((r) => /\/vms\?.*offset=100/.test(r.path)), 'the VM list was paged');
});

test('change tracking restarted (chgID went back) or recreated (new volCBTCreateTime): that volume is a full sync with a note, the other stays incremental', async () => {
  const [a, b] = fc.volumes;
  for (const [what, act, note] of [
    ['restarted', () => fc.restartCbt(a!), /change tracking of volume sys restarted \(chgID \d+ -> \d+ under volCBTCreateTime/],
    ['recreated', () => fc.resetCbt(a!), /change tracking of volume sys was recreated \(volCBTCreateTime/],
  ] as const) {
    act();
    await fc.write(a!, 2 * MiB, pattern(1000, what.length));
    await fc.write(b!, 400 * MiB, pattern(1000, what.length));
    const s = await syncAndCheck();
    const [da, db] = [s.disks.find((d) => d.disk === `volume-${a!.uuid}`)!, s.disks.find((d) => d.disk === `volume-${b!.uuid}`)!];
    assert.ok(da.readBytes >= 6 * MiB, `${what}: volume sys read in full (${da.readBytes})`);
    assert.ok(db.readBytes <= MiB, `${what}: volume data stays incremental (${db.readBytes})`);
    const listed = JSON.parse((await hamal(['versions', '--target', join(dir, 'repo'), '--vm', 'fc-vm-1', '--json', '--config', conf])).stdout) as Array<{ version: string; fullReason?: string }>;
    assert.match(listed.find((v) => v.version === da.version)!.fullReason ?? '', note);
  }
});

test('a stored chgID the VRM no longer knows (getcbt refuses it) makes that volume a full sync, named', async () => {
  const src = new FusionComputeSource({ client: { url: fc.url, username: 'fcadmin', password: PASSWORD }, localHostIp: '127.0.0.1', transfer: 'lan' });
  const snap = await src.snapshot('fc-vm-1');
  try {
    const disk = snap.disks[0]!;
    const epoch = disk.changeId!.slice(0, disk.changeId!.lastIndexOf('/'));
    assert.is(await snap.checkSince!(disk, disk.changeId!.replace(/\/\d+$/, `/${Number(disk.changeId!.split('/').pop()) - 1}`)), null, 'the previous chgID is known');
    assert.match(String(await snap.checkSince!(disk, `${epoch}/0`)), /^getcbt refused chgID 0 of volume sys \(HTTP 400/);
  } finally {
    await snap.release();
  }
  assert.equal(ours(), []);
  assert.equal(fc.openBackupResources(), []);
});

test("leftover snapshots of ours anywhere in the tree are swept, the user's kept", async () => {
  const user = await fc.createUserSnapshot('before-upgrade');
  await fc.createUserSnapshot('hamal-20260101T000000000Z', user.urn);
  const child = await fc.createUserSnapshot('nightly-user');
  await fc.createUserSnapshot('hamal-20260102T000000000Z', child.urn);
  await syncAndCheck();
  assert.equal(fc.snaps.map((x) => x.name).sort(), ['before-upgrade', 'nightly-user']);
});

test('a snapshot task that never finishes: the sync fails at create_snap_task_timeout, the snapshot is deleted, nothing committed', async () => {
  const slow = join(dir, 'slow.conf');
  await fsp.writeFile(slow, (await fsp.readFile(conf, 'utf8')).replace('[fusion_compute]\n', '[fusion_compute]\ncreate_snap_task_timeout = 2\n'));
  const before = await fsp.readdir(join(dir, 'repo', 'vms')).catch(() => []);
  const versions = async () => (await hamal(['versions', '--target', join(dir, 'repo'), '--json', '--config', conf])).stdout;
  const v0 = await versions();
  fc.hangSnapshots = true;
  try {
    const r = await sync(task(), slow);
    assert.is(r.code, 1);
    assert.match(r.stderr, /snapshot hamal-\S+ of VM fc-vm-1 did not finish within 2 s/);
  } finally {
    fc.hangSnapshots = false;
  }
  assert.equal(ours(), []);
  assert.is(await versions(), v0);
  assert.equal(await fsp.readdir(join(dir, 'repo', 'vms')).catch(() => []), before);
});

test('bad credentials, unknown VM, a bitmap of the wrong length: clear errors, exit 1, nothing committed, no password shown', async () => {
  const versions = async () => (await hamal(['versions', '--target', join(dir, 'repo'), '--json', '--config', conf])).stdout;
  const v0 = await versions();
  const bad = await sync(task({ password: 'Wr0ng-vc-pass-for-tests' }));
  assert.is(bad.code, 1);
  assert.match(bad.stderr, /login to FusionCompute http:\/\/127\.0\.0\.1:\d+ as fcadmin failed: wrong user name or password/);
  const none = await sync(task({}, 'no-such-vm'));
  assert.is(none.code, 1);
  assert.match(none.stderr, /no VM no-such-vm on FusionCompute/);
  fc.shortBitmap = true;
  try {
    const short = await sync();
    assert.is(short.code, 1);
    assert.match(short.stderr, /changed-block bitmap of volume (sys|data): (16384|32768) blocks want (4096|8192) hex or \d+ base64 characters, got (4094|8190)/);
  } finally {
    fc.shortBitmap = false;
  }
  assert.equal(ours(), []);
  assert.equal(fc.openBackupResources(), []);
  assert.is(await versions(), v0);
  for (const r of [bad, none]) assert.not.match(r.stderr + r.stdout, PASSWORD);
});

test("lanssl: the data channel is TLS, verified with the backup resource's caCert (beside a task's caFile); a CA that does not sign it is refused", async () => {
  const tdir = await tempDir('hamal-fc-tls-');
  const cert = async (name: string) => {
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(tdir, `${name}.key`), '-out', join(tdir, `${name}.pem`), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    return { key: await fsp.readFile(join(tdir, `${name}.key`), 'utf8'), cert: await fsp.readFile(join(tdir, `${name}.pem`), 'utf8'), file: join(tdir, `${name}.pem`) };
  };
  const [host, other] = [await cert('host'), await cert('other')];
  const tls = new FusionComputeStandIn(tdir, 'fcadmin', PASSWORD, host);
  await tls.start();
  try {
    const v = await tls.addVolume('sys', 1);
    await tls.write(v, 5 * MiB + 3, pattern(MiB, 9));
    const t = (over: Record<string, unknown>) => ({ ...task(over), source: { ...task(over).source, connection: { url: tls.url, username: 'fcadmin', password: PASSWORD, ...over } }, target: join(tdir, 'repo') });
    // The channel is verified: a CA that does not sign the host is refused before any byte.
    const foreign = new DataChannel({ host: '127.0.0.1', port: tls.dataPort, token: 'none', url: '/', volume: 'sys' }, 'lanssl', 1, other.cert, 5000);
    await foreign.read(0, 512, Buffer.alloc(512)).then(
      () => assert.unreachable('an unverified channel was read'),
      (e: Error) => assert.match(e.message, /data channel 127\.0\.0\.1:\d+ of volume sys: self-signed certificate/),
    );
    // A task's caFile (here one that signs nothing of the stand-in's) adds to the resource's caCert.
    const ok = await sync(t({ caFile: other.file }));
    assert.is(ok.code, 0, ok.stderr);
    const [d] = JSON.parse(ok.stdout).disks;
    const out = join(tdir, 'out.img');
    const r = await hamal(['restore', '--target', join(tdir, 'repo'), '--vm', 'fc-vm-1', '--disk', d.disk, '--out', out, '--config', conf]);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(out), await sha256File(v.file));
    assert.equal(tls.openBackupResources(), []);
  } finally {
    await tls.stop();
    await fsp.rm(tdir, { recursive: true, force: true });
  }
});

test('[fusion_compute] data_channel_command: an operator\'s program serves each volume over NBD from the channel\'s parameters; the token reaches it in a file only', async () => {
  // What an operator would write around a vendor reader; here nbdkit's eval plugin and curl
  // read the stand-in's channel. The token is in {token_file}, never on a command line.
  const script = join(dir, 'fc-channel-nbd');
  await fsp.writeFile(
    script,
    [
      '#!/bin/sh',
      '# fc-channel-nbd SOCKET SIZE URL TOKEN_FILE',
      'h="$(dirname "$4")/header"',
      "printf 'X-Auth-Token: %s\\n' \"$(cat \"$4\")\" > \"$h\"",
      'exec nbdkit --foreground --readonly --unix "$1" eval get_size="echo $2" pread="curl -sfS -H @$h -r \\$4-\\$((\\$4+\\$3-1)) $3"',
      '',
    ].join('\n'),
    { mode: 0o700 },
  );
  const cmdConf = join(dir, 'cmd.conf');
  await fsp.writeFile(cmdConf, (await fsp.readFile(conf, 'utf8')).replace('[fusion_compute]\n', `[fusion_compute]\ndata_channel_command = ${script} {socket} {size} http://{host}:{port}{resource_url} {token_file}\n`));
  const [a, b] = fc.volumes;
  await fc.write(a!, 7 * MiB + 1, pattern(3 * MiB, 21));
  await fc.write(b!, 100 * MiB, pattern(MiB, 22));
  const expected = new Map([[`volume-${a!.uuid}`, await sha256File(a!.file)], [`volume-${b!.uuid}`, await sha256File(b!.file)]]);
  const r = await sync(task(), cmdConf);
  assert.is(r.code, 0, r.stderr);
  for (const d of JSON.parse(r.stdout).disks as Array<{ disk: string; version: string }>) {
    const out = join(dir, 'cmd.img');
    assert.is((await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'fc-vm-1', '--disk', d.disk, '--version', d.version, '--out', out, '--config', conf])).code, 0);
    assert.is(await sha256File(out), expected.get(d.disk), d.disk);
    await fsp.rm(out);
  }
  assert.equal(fc.openBackupResources(), []);
  const left = await run('pgrep', ['-f', `nbdkit .*${dir}`]).then((x) => x.stdout, () => '');
  assert.is(left, '', 'no NBD server left running');
});

test('a sync stopped mid-read deletes its snapshot; the next keeps the journaled blocks the CBT bitmap says did not change since and rereads the rest', async () => {
  const a = fc.volumes[0]!;
  await fc.write(a, 0, pattern(8 * MiB, 6)); // 8 blocks of 1 MiB changed since the last version
  const source = () => new FusionComputeSource({ client: { url: fc.url, username: 'fcadmin', password: PASSWORD }, localHostIp: '127.0.0.1', transfer: 'lan', maxConnectionsPerHost: 2 });
  const open = async () => Repository.open(await FsStore.open(join(dir, 'repo')));
  const lib = join(dir, 'lib-resume');
  const abort = new AbortController();
  let seen = 0;
  const stopped = runVmSync(source(), 'fc-vm-1', await open(), { journalDir: lib, checkpointSeconds: 0.05, readers: 1, releaseCpuMsPerMb: 150 }, (e) => {
    if (e.type === 'block' && e.disk === `volume-${a.uuid}` && ++seen === 3) abort.abort();
  }, abort.signal);
  assert.match(String(await stopped.then(() => 'finished', (e: Error) => e.message)), /interrupted/);
  await Promise.all([...releasing]); // the last checkpoint, the snapshot's deletion
  assert.equal(ours(), [], 'the stopped sync deleted its snapshot');
  assert.equal(fc.openBackupResources(), [], 'and released its channel');
  await fc.write(a, MiB + 10, pattern(100, 7)); // block 1, journaled before the stop, changes
  const notes: string[] = [];
  const r = await runVmSync(source(), 'fc-vm-1', await open(), { journalDir: lib }, (e) => {
    if (e.type === 'disk-start' && e.disk === `volume-${a.uuid}`) notes.push(...e.notes);
  });
  assert.equal(r.failed, []);
  const m = /: (\d+) of its (\d+) blocks did not change since and are kept/.exec(notes.join('\n'));
  assert.ok(m, notes.join('\n'));
  const [kept, had] = [Number(m![1]), Number(m![2])];
  assert.ok(had >= 3 && had < 8, `${had} blocks journaled`);
  assert.is(kept, had - 1);
  const v = r.versions.find((x) => x.disk === `volume-${a.uuid}`)!;
  assert.is(v.stats.resumedBytes, kept * MiB);
  assert.is(v.stats.readBytes, (8 - kept) * MiB, 'the other changed blocks are read, no more');
  const out = join(dir, 'resumed.img');
  const rr = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'fc-vm-1', '--disk', v.disk, '--version', v.version, '--out', out, '--config', conf]);
  assert.is(rr.code, 0, rr.stderr);
  assert.is(await sha256File(out), await sha256File(a.file));
  assert.equal(ours(), []);
});

test.run();
