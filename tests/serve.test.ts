// `hamal serve` as a real child process against the control-plane STAND-IN
// (tests/helpers/ControlPlaneStandIn.ts): signed tasks fetched and run on the local source,
// progress and results reported, forged tasks refused, SIGTERM mid-sync and resume.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateKeyPairSync } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { ControlPlaneStandIn, AUTH_KEY } from './helpers/ControlPlaneStandIn.ts';
import { freePort, serveProcess, until } from './helpers/serveProcess.ts';
import { hamal } from './helpers/cli.ts';
import { MiB, pattern, sha256File, tempDir, writeAt } from './helpers/disks.ts';

const cp = new ControlPlaneStandIn();
let dir: string;
let ipServer: http.Server;
let healthPort: number;

const serve = () => serveProcess(join(dir, 'hamal.conf'));

const localTask = (vm: string, disk: string) => ({ version: 1, source: { platform: 'local', vm, disks: [{ id: 'root', path: disk }] }, target: join(dir, 'repo') });

test.before(async () => {
  await cp.start();
  dir = await tempDir('hamal-serve-');
  ipServer = http.createServer((_q, s) => s.end('203.0.113.7\n'));
  await new Promise<void>((r) => ipServer.listen(0, '127.0.0.1', r));
  healthPort = await freePort();
  await fsp.writeFile(join(dir, 'public_key.pem'), cp.publicKeyPem);
  await fsp.writeFile(
    join(dir, 'hamal.conf'),
    `[DEFAULT]
hamal_lib_dir = ${dir}/lib
hamal_info_path = ${dir}/lib/hamal_info
[period]
interval = 1
task_update_wait_time = 1
[mass]
mass_endpoint = ${cp.url}
auth_key = ${AUTH_KEY}
hyper_exporter_id = proxy-a
public_key_path = ${dir}/public_key.pem
default_request_timeout = 5
enable_get_public_ips = True
get_public_ip_timeout = 2
[data_sync_v2]
fsync_period_frequency = 1
[hamal]
log_dir = ${dir}/log
heartbeat_interval = 1
health_listen = 127.0.0.1:${healthPort}
public_ip_endpoints = http://127.0.0.1:${(ipServer.address() as net.AddressInfo).port}/
`,
  );
});
test.after(async () => {
  await cp.stop();
  ipServer.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

test('a signed task is fetched, run, its progress and result reported; a forged one is refused and reported; the secret stays out of every log', async () => {
  const disk = join(dir, 'web.img');
  await fsp.writeFile(disk, pattern(6 * MiB, 7));
  cp.enqueue('proxy-a', cp.signed('t-1', 'proxy-a', localTask('web', disk)));
  const forger = generateKeyPairSync('ed25519').privateKey;
  cp.enqueue('proxy-a', cp.signed('t-forged', 'proxy-a', localTask('web', disk), { key: forger }));
  cp.enqueue('proxy-a', cp.signed('t-expired', 'proxy-a', localTask('web', disk), { expiresInMs: -3600_000 }));
  cp.enqueue('proxy-a', cp.signed('t-other', 'proxy-b', localTask('web', disk)));
  const s = serve();
  try {
    const result = await until('result of t-1', () => cp.results.find((r) => r.taskId === 't-1'));
    assert.is(result.state, 'succeeded', JSON.stringify(result));
    const [v] = result.versions as Array<{ disk: string; version: string }>;
    const out = join(dir, 'restored.img');
    const r = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'web', '--disk', 'root', '--version', v!.version, '--out', out]);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(out), await sha256File(disk));

    const rejected = await until('3 rejections', () => (cp.results.filter((x) => x.state === 'rejected').length === 3 ? cp.results.filter((x) => x.state === 'rejected') : undefined));
    const why = Object.fromEntries(rejected.map((x) => [x.taskId, x.error]));
    assert.match(String(why['t-forged']), 'bad signature');
    assert.match(String(why['t-expired']), 'expired');
    assert.match(String(why['t-other']), 'addressed to proxy proxy-b');

    const beat = await until('a heartbeat with the public IP', () => cp.heartbeats.find((h) => (h.publicIps as string[])?.includes('203.0.113.7')));
    assert.is(beat.proxyId, 'proxy-a');
    assert.ok(Array.isArray(beat.hostIps));
    const health = (await (await fetch(`http://127.0.0.1:${healthPort}/healthz`)).json()) as { status: string };
    assert.is(health.status, 'healthy');
    const h = await hamal(['health', '--config', join(dir, 'hamal.conf')]);
    assert.equal([h.code, h.stdout], [0, 'healthy\n']);
    const metrics = await (await fetch(`http://127.0.0.1:${healthPort}/metrics`)).text();
    assert.match(metrics, 'hamal_tasks_total{outcome="succeeded"} 1');
    assert.match(metrics, 'hamal_tasks_total{outcome="rejected"} 3');
    assert.equal(cp.unauthorized, []);
  } finally {
    s.child.kill('SIGTERM');
  }
  assert.is(await s.exited, 0);
  const logs = await fsp.readdir(join(dir, 'log'));
  assert.ok(logs.includes('hamal-period.log'));
  assert.ok(logs.some((f) => /^vm-web_Agent-web\.log$/.test(f)), logs.join());
  const vmLog = await fsp.readFile(join(dir, 'log', 'vm-web_Agent-web.log'), 'utf8');
  assert.match(vmLog, /task t-1: VM web succeeded/);
  assert.not.match(vmLog, 'rejected');
  for (const f of logs) assert.not.match(await fsp.readFile(join(dir, 'log', f), 'utf8'), AUTH_KEY, f);
  assert.not.match(s.output(), AUTH_KEY);
  const info = JSON.parse(await fsp.readFile(join(dir, 'lib', 'hamal_info'), 'utf8'));
  assert.equal([info.id, info.mode, info.state], ['proxy-a', 'control-plane', 'stopped']);
});

test('SIGTERM mid-sync: exits within 30 s, the task is reported interrupted, the journal checkpointed at the stop; the next start resumes from it', async () => {
  const disk = join(dir, 'db.img');
  await fsp.writeFile(disk, pattern(48 * MiB, 11));
  // Slow the read down so the sync is still running when the signal comes.
  const conf = join(dir, 'hamal.conf');
  const base = await fsp.readFile(conf, 'utf8');
  // No timer checkpoint during this run: only the last checkpoint at the stop can make the
  // blocks stored so far resumable.
  await fsp.writeFile(conf, base.replace('fsync_period_frequency = 1', 'fsync_period_frequency = 3600') + 'local_release_cpu_time = 400\n');
  cp.enqueue('proxy-a', cp.signed('t-2', 'proxy-a', localTask('db', disk)));
  const s = serve();
  await until('progress of t-2 past 8 MiB', () => cp.progress.find((p) => p.taskId === 't-2' && (p.doneBytes as number) >= 8 * MiB));
  const t0 = Date.now();
  s.child.kill('SIGTERM');
  assert.is(await s.exited, 0);
  assert.ok(Date.now() - t0 < 30_000, `stopped in ${Date.now() - t0} ms`);
  const r2 = cp.results.find((r) => r.taskId === 't-2');
  assert.is(r2?.state, 'interrupted', JSON.stringify(r2));

  await fsp.writeFile(conf, base);
  await writeAt(disk, 0, Buffer.alloc(0)); // untouched: the journal's snapshot id still matches
  cp.enqueue('proxy-a', cp.signed('t-3', 'proxy-a', localTask('db', disk)));
  const again = serve();
  try {
    const r3 = await until('result of t-3', () => cp.results.find((r) => r.taskId === 't-3'));
    assert.is(r3.state, 'succeeded', JSON.stringify(r3));
    const [v] = r3.versions as Array<{ version: string; readBytes: number; resumedBytes: number }>;
    assert.ok(v!.resumedBytes >= 8 * MiB, `resumed ${v!.resumedBytes} bytes`);
    assert.is(v!.readBytes + v!.resumedBytes, 48 * MiB);
    const out = join(dir, 'db.restored');
    const r = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'db', '--disk', 'root', '--version', v!.version, '--out', out]);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(out), await sha256File(disk));
    assert.match(again.output(), /resuming an interrupted sync/);
  } finally {
    again.child.kill('SIGTERM');
  }
  assert.is(await again.exited, 0);
});

test('a result the control plane could not take (down at SIGTERM) is delivered once by the next start, with no task listed', async () => {
  const disk = join(dir, 'outbox.img');
  await fsp.writeFile(disk, pattern(24 * MiB, 12));
  const conf = join(dir, 'hamal.conf');
  const base = await fsp.readFile(conf, 'utf8');
  await fsp.writeFile(conf, base + 'local_release_cpu_time = 400\n');
  cp.enqueue('proxy-a', cp.signed('t-4', 'proxy-a', localTask('outbox', disk)));
  const s = serve();
  await until('progress of t-4', () => cp.progress.find((p) => p.taskId === 't-4' && (p.doneBytes as number) >= 2 * MiB));
  const port = Number(new URL(cp.url).port);
  await cp.stop();
  s.child.kill('SIGTERM');
  assert.is(await s.exited, 0);
  assert.is(cp.results.filter((r) => r.taskId === 't-4').length, 0, 'the control plane was down');
  await fsp.writeFile(conf, base);
  cp.queue.clear();
  await cp.start(port);
  const again = serve();
  try {
    const r = await until('the saved result of t-4', () => cp.results.find((x) => x.taskId === 't-4'));
    assert.is(r.state, 'interrupted', JSON.stringify(r));
    await new Promise((res) => setTimeout(res, 2500));
    assert.is(cp.results.filter((x) => x.taskId === 't-4').length, 1, 'delivered once');
  } finally {
    again.child.kill('SIGTERM');
  }
  assert.is(await again.exited, 0);
  assert.equal(await fsp.readdir(join(dir, 'lib', 'service', 'outbox')).catch(() => []), [], 'the outbox is empty');
});

test('one task, one result: a task still listed after a restart gets its saved result (not "rejected: replayed"), an ended one listed again gets the same result again, neither runs twice', async () => {
  const disk = join(dir, 'relisted.img');
  await fsp.writeFile(disk, pattern(24 * MiB, 14));
  const conf = join(dir, 'hamal.conf');
  const base = await fsp.readFile(conf, 'utf8');
  await fsp.writeFile(conf, base + 'local_release_cpu_time = 400\n');
  cp.enqueue('proxy-a', cp.signed('t-7', 'proxy-a', localTask('relisted', disk)));
  const s = serve();
  await until('progress of t-7', () => cp.progress.find((p) => p.taskId === 't-7' && (p.doneBytes as number) >= 2 * MiB));
  const port = Number(new URL(cp.url).port);
  await cp.stop();
  s.child.kill('SIGTERM');
  assert.is(await s.exited, 0);
  await fsp.writeFile(conf, base);
  // Back with t-7 still listed, as docs/control-plane.md tells a control plane to do, and
  // results refused for a while: polls see t-7 before its saved result gets through.
  cp.refuseResults = true;
  await cp.start(port);
  const again = serve();
  try {
    await until('t-7 polled again', () => again.output().includes('delivered now'));
    await new Promise((res) => setTimeout(res, 2500));
    cp.refuseResults = false;
    const r = await until('the saved result of t-7', () => cp.results.find((x) => x.taskId === 't-7'));
    assert.is(r.state, 'interrupted', JSON.stringify(r));
    await new Promise((res) => setTimeout(res, 2500));
    assert.equal(cp.results.filter((x) => x.taskId === 't-7').map((x) => x.state), ['interrupted'], 'one result, the real one');
    assert.not.match(again.output(), /task t-7: sync of/, 'not run again');

    // An ended task listed again (a control plane that lost the answer): the same result again.
    const fast = join(dir, 'fast.img');
    await fsp.writeFile(fast, pattern(2 * MiB, 15));
    const signed = cp.signed('t-8', 'proxy-a', localTask('fast', fast));
    cp.enqueue('proxy-a', signed);
    const first = await until('result of t-8', () => cp.results.find((x) => x.taskId === 't-8'));
    assert.is(first.state, 'succeeded', JSON.stringify(first));
    cp.enqueue('proxy-a', signed);
    const both = await until('t-8 answered again', () => (cp.results.filter((x) => x.taskId === 't-8').length >= 2 ? cp.results.filter((x) => x.taskId === 't-8') : undefined));
    assert.equal(both[1], first, 'identical');
    assert.is(again.output().match(/task t-8: sync of/g)?.length, 1, 'run once');
    assert.ok(cp.results.every((x) => x.state !== 'rejected' || !['t-7', 't-8'].includes(x.taskId as string)));
  } finally {
    again.child.kill('SIGTERM');
  }
  assert.is(await again.exited, 0);
  assert.equal(await fsp.readdir(join(dir, 'lib', 'service', 'outbox')), [], 'the outbox is empty');
});

test('SIGKILL mid-task: the task, still listed, runs again at the next start and resumes; one result', async () => {
  const disk = join(dir, 'killed.img');
  await fsp.writeFile(disk, pattern(32 * MiB, 16));
  const conf = join(dir, 'hamal.conf');
  const base = await fsp.readFile(conf, 'utf8');
  await fsp.writeFile(conf, base + 'local_release_cpu_time = 400\n');
  cp.enqueue('proxy-a', cp.signed('t-9', 'proxy-a', localTask('killed', disk)));
  const s = serve();
  await until('progress of t-9 past 8 MiB', () => cp.progress.find((p) => p.taskId === 't-9' && (p.doneBytes as number) >= 8 * MiB));
  await new Promise((r) => setTimeout(r, 1500)); // a checkpoint (fsync_period_frequency = 1)
  s.child.kill('SIGKILL');
  await s.exited;
  await fsp.writeFile(conf, base);
  const again = serve();
  try {
    const r = await until('result of t-9', () => cp.results.find((x) => x.taskId === 't-9'));
    assert.is(r.state, 'succeeded', JSON.stringify(r));
    const [v] = r.versions as Array<{ version: string; resumedBytes: number }>;
    assert.ok(v!.resumedBytes > 0, `resumed ${v!.resumedBytes} bytes`);
    assert.match(again.output(), /task t-9 was accepted before this start and never ended here/);
    const out = join(dir, 'killed.restored');
    const rr = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'killed', '--disk', 'root', '--version', v!.version, '--out', out]);
    assert.is(rr.code, 0, rr.stderr);
    assert.is(await sha256File(out), await sha256File(disk));
    await new Promise((res) => setTimeout(res, 2000));
    assert.is(cp.results.filter((x) => x.taskId === 't-9').length, 1);
  } finally {
    again.child.kill('SIGTERM');
  }
  assert.is(await again.exited, 0);
});

test('SIGTERM ends serve within 30 s whatever the peers do: a control plane that never answers, a CPU-release pause of 10 s per MB', async () => {
  const conf = join(dir, 'hamal.conf');
  const base = await fsp.readFile(conf, 'utf8');
  // A control plane that takes every connection and never says a word.
  const sockets = new Set<net.Socket>();
  const mute = net.createServer((sock) => void sockets.add(sock));
  await new Promise<void>((r) => mute.listen(0, '127.0.0.1', r));
  const silent = join(dir, 'silent.conf');
  await fsp.writeFile(silent, base.replace(`mass_endpoint = ${cp.url}`, `mass_endpoint = http://127.0.0.1:${(mute.address() as net.AddressInfo).port}`).replace('default_request_timeout = 5', 'default_request_timeout = 120'));
  try {
    const s = serveProcess(silent);
    await until('a poll and a heartbeat waiting', () => sockets.size >= 2);
    const t0 = Date.now();
    s.child.kill('SIGTERM');
    assert.is(await s.exited, 0, s.output().slice(-2000));
    assert.ok(Date.now() - t0 < 30_000, `stopped in ${Date.now() - t0} ms`);
  } finally {
    for (const sock of sockets) sock.destroy();
    mute.close();
  }
  // A sync pausing 10 s per MB read (local_release_cpu_time at its maximum): 40 s per block.
  const disk = join(dir, 'paused.img');
  await fsp.writeFile(disk, pattern(16 * MiB, 13));
  await fsp.writeFile(conf, base + 'local_release_cpu_time = 10000\n');
  cp.enqueue('proxy-a', cp.signed('t-5', 'proxy-a', localTask('paused', disk)));
  const s = serve();
  try {
    await until('t-5 running', () => cp.progress.find((p) => p.taskId === 't-5'));
    await new Promise((r) => setTimeout(r, 1000)); // inside the first pauses
    const t0 = Date.now();
    s.child.kill('SIGTERM');
    assert.is(await s.exited, 0, s.output().slice(-2000));
    assert.ok(Date.now() - t0 < 30_000, `stopped in ${Date.now() - t0} ms`);
    assert.is((await until('result of t-5', () => cp.results.find((r) => r.taskId === 't-5'))).state, 'interrupted');
  } finally {
    await fsp.writeFile(conf, base);
  }
});

test('doctor: the control plane answers with the right auth_key and refuses a wrong one; the key is never printed', async () => {
  const conf = join(dir, 'hamal.conf');
  const good = await hamal(['doctor', '--json', '--config', conf]);
  const checks = JSON.parse(good.stdout) as Array<{ status: string; what: string; detail: string; fix?: string }>;
  const by = Object.fromEntries(checks.map((c) => [c.what, c]));
  assert.is(by['control plane']!.status, 'ok', JSON.stringify(by['control plane']));
  assert.is(by['public_key_path']!.status, 'ok');
  assert.is(by['hamal_lib_dir']!.status, 'ok');
  assert.ok(['ok', 'warn'].includes(by['cpu']!.status));
  assert.is(good.code, checks.some((c) => c.status === 'fail') ? 1 : 0);
  const wrong = join(dir, 'wrong.conf');
  await fsp.writeFile(wrong, (await fsp.readFile(conf, 'utf8')).replace(AUTH_KEY, 'not-the-key'));
  const bad = await hamal(['doctor', '--config', wrong]);
  assert.is(bad.code, 1);
  assert.match(bad.stdout, /fail\s+control plane\s+.*HTTP 401\s+check \[mass\] auth_key/);
  assert.not.match(good.stdout + good.stderr + bad.stdout + bad.stderr, AUTH_KEY);
});

test.run();
