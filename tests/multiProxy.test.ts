// Several proxies, one control plane (the STAND-IN of tests/helpers) and one repository:
// a task runs under a lease; a proxy SIGKILLed mid-task loses it and another proxy resumes
// the version from the partial index in the repository; a stalled holder whose lease was
// taken over is fenced off by the repository. Real `hamal serve` child processes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { ControlPlaneStandIn, AUTH_KEY } from './helpers/ControlPlaneStandIn.ts';
import { serveProcess, until as untilMs, type ServeProcess } from './helpers/serveProcess.ts';
import { hamal } from './helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { FsStore } from '../src/sinks/fs/FsStore.ts';
import { Repository } from '../src/repo/Repository.ts';
import { LocalSource } from '../src/sources/local/LocalSource.ts';
import { runVmSync } from '../src/streams/runVmSync.ts';
import { releasing } from '../src/streams/usingResource.ts';
import { pruneRepository } from '../src/repo/pruneRepository.ts';
import type { Manifest } from '../src/repo/Manifest.ts';

const cp = new ControlPlaneStandIn();
/** Proxies here sync slowly on purpose: a minute per wait. */
const until = <T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>) => untilMs(what, fn, 60_000);

/** Fails unless `p` rejects with an error whose message (or code) matches. */
async function rejects(p: Promise<unknown>, expected: RegExp | ((e: Error & { code?: string }) => boolean), msg?: string): Promise<void> {
  const err = await p.then(() => undefined, (e: Error) => e);
  assert.ok(err, msg ?? 'expected a rejection');
  if (expected instanceof RegExp) assert.match(err!.message, expected, msg);
  else assert.ok(expected(err!), `${msg ?? 'unexpected error'}: ${err!.message}`);
}
let dir: string;

/** `idFromEnv`: the conf names another id and HAMAL_PROXY_ID gives the real one, as replicas do. */
async function proxyConf(name: string, idFromEnv = false): Promise<string> {
  const conf = join(dir, `${name}.conf`);
  await fsp.writeFile(
    conf,
    `[DEFAULT]
hamal_lib_dir = ${dir}/${name}/lib
hamal_info_path = ${dir}/${name}/lib/hamal_info
[period]
interval = 1
task_update_wait_time = 1
[mass]
mass_endpoint = ${cp.url}
auth_key = ${AUTH_KEY}
hyper_exporter_id = ${idFromEnv ? 'overridden-by-env' : name}
public_key_path = ${dir}/public_key.pem
default_request_timeout = 5
enable_get_public_ips = False
[data_sync_v2]
fsync_period_frequency = 1
[hamal]
log_dir = ${dir}/${name}/log
heartbeat_interval = 1
health_listen =
partial_index_interval = 1
local_release_cpu_time = 300
`,
  );
  return conf;
}


const task = (vm: string, disk: string) => ({ version: 1, source: { platform: 'local', vm, disks: [{ id: 'root', path: disk }] }, target: join(dir, 'repo') });
const partialKey = (vm: string) => join(dir, 'repo', 'vms', vm, 'disks', 'root', 'partial');
/** Records in a stored partial index (header line, then 36 bytes per block). */
async function partialRecords(vm: string): Promise<number> {
  const bytes = await fsp.readFile(partialKey(vm)).catch(() => null);
  return bytes ? (bytes.length - bytes.indexOf(10) - 1) / 36 : 0;
}

test.before(async () => {
  await cp.start();
  dir = await tempDir('hamal-multi-');
  await fsp.writeFile(join(dir, 'public_key.pem'), cp.publicKeyPem);
});

test.after(async () => {
  await cp.stop();
  await fsp.rm(dir, { recursive: true, force: true });
});

test('a proxy SIGKILLed mid-task loses its lease; another proxy resumes the version from the partial index without re-reading its blocks', async () => {
  const disk = join(dir, 'disk1.img');
  await fsp.writeFile(disk, pattern(48 * MiB, 21));
  const [confA, confB] = [await proxyConf('proxy-a'), await proxyConf('proxy-b', true)];
  cp.leased('t1', task('vm1', disk), ['proxy-a', 'proxy-b'], 3);
  const a = serveProcess(confA);
  const b = serveProcess(confB, { HAMAL_PROXY_ID: 'proxy-b' });
  try {
    await until('a partial index of 3 blocks from proxy-a', async () => (await partialRecords('vm1')) >= 3);
    a.child.kill('SIGKILL');
    await a.exited;
    const result = await until('the result of proxy-b', () => cp.results.find((r) => r.taskId === 't1'));
    assert.is(result.proxyId, 'proxy-b', JSON.stringify(result));
    assert.is(result.state, 'succeeded', JSON.stringify(result));
    assert.is(result.epoch, 2);
    const [v] = result.versions as Array<{ version: string; readBytes: number; resumedBytes: number }>;
    assert.ok(v!.resumedBytes >= 3 * 4 * MiB, `resumed ${v!.resumedBytes} bytes`);
    assert.is(v!.readBytes + v!.resumedBytes, 48 * MiB, 'no finished block read again');
    assert.match(b.output(), /resuming from the partial index in the repository/);
    await rejects(fsp.access(partialKey('vm1')), /ENOENT/, 'the partial index goes once the version is committed');

    const out = join(dir, 'restored1.img');
    const r = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'vm1', '--disk', 'root', '--out', out]);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(out), await sha256File(disk));
    const verify = await hamal(['verify', '--target', join(dir, 'repo'), '--deep']);
    assert.is(verify.code, 0, verify.stdout + verify.stderr);
  } finally {
    a.child.kill('SIGKILL');
    b.child.kill('SIGTERM');
    await b.exited;
  }
});

test('a stalled holder whose lease was taken over is fenced off: one version, written by the new holder', async () => {
  const disk = join(dir, 'disk2.img');
  await fsp.writeFile(disk, pattern(48 * MiB, 22));
  const [confA, confB] = [await proxyConf('proxy-a'), await proxyConf('proxy-b')];
  cp.leased('t2', task('vm2', disk), ['proxy-a', 'proxy-b'], 3);
  const a = serveProcess(confA);
  let b: ServeProcess | undefined;
  try {
    await until('a partial index from proxy-a', async () => (await partialRecords('vm2')) >= 2);
    a.child.kill('SIGSTOP'); // alive, but silent: a long GC pause, a frozen VM, a partition
    b = serveProcess(confB);
    const result = await until('the result of proxy-b', () => cp.results.find((r) => r.taskId === 't2'));
    assert.is(result.state, 'succeeded', JSON.stringify(result));
    assert.is(result.proxyId, 'proxy-b');
    a.child.kill('SIGCONT');
    const stale = await until('the stale result of proxy-a', () => cp.staleResults.find((r) => r.taskId === 't2')).catch((e: Error) => {
      throw new Error(`${e.message}; proxy-a printed:\n${a.output()}`);
    });
    assert.is(stale.proxyId, 'proxy-a');
    assert.is(stale.epoch, 1);
    assert.is.not(stale.state, 'succeeded', JSON.stringify(stale));
    assert.match(String(stale.error), /lease/i);
    const versions = await fsp.readdir(join(dir, 'repo', 'vms', 'vm2', 'disks', 'root', 'versions'));
    assert.is(versions.length, 1, `versions: ${versions.join(', ')}`);
    const out = join(dir, 'restored2.img');
    const r = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'vm2', '--disk', 'root', '--out', out]);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(out), await sha256File(disk));
  } finally {
    a.child.kill('SIGCONT');
    a.child.kill('SIGTERM');
    b?.child.kill('SIGTERM');
    await Promise.all([a.exited, b?.exited]);
  }
});

test('the fence: a newer epoch claims a disk; the older holder can neither claim it again nor commit', async () => {
  const root = await tempDir('hamal-fence-');
  const repo = await Repository.open(await FsStore.open(join(root, 'repo'), { create: true }), { create: true, blockSize: 64 * 1024 });
  const a = repo.fence('vm', 'd', { taskId: 't', epoch: 1, holder: 'proxy-a' });
  const b = repo.fence('vm', 'd', { taskId: 't', epoch: 2, holder: 'proxy-b' });
  await a.claim();
  await a.check();
  await b.claim();
  await rejects(a.check(), /lease epoch 1 of proxy proxy-a was taken over by epoch 2 of proxy proxy-b/);
  await rejects(a.claim(), (e: Error & { code?: string }) => e.code === 'LEASE_FENCED');
  await rejects(repo.fence('vm', 'd', { taskId: 't', epoch: 2, holder: 'proxy-c' }).claim(), /taken over/, 'one epoch, one holder');
  const manifest: Manifest = {
    format: 1, vm: 'vm', disk: 'd', version: '20260101T000000000Z-00000000', parent: null, createdAt: new Date().toISOString(),
    capacity: 0, blockSize: 64 * 1024, source: { platform: 'local', snapshotId: 's', changeId: null },
    stats: { readBytes: 0, changedBytes: 0, storedBytes: 0, dedupBytes: 0, zeroBytes: 0, durationMs: 0 }, blocks: [],
  };
  await rejects(repo.commitVersion(manifest, a), /taken over/);
  assert.equal(await repo.listVersions('vm', 'd'), [], 'the fenced holder committed nothing');
  await repo.commitVersion(manifest, b);
  assert.equal(await repo.listVersions('vm', 'd'), [manifest.version]);
  await fsp.rm(root, { recursive: true, force: true });
});

test('prune keeps the chunks of a version in flight; a partial index that can no longer resume goes', async () => {
  const root = await tempDir('hamal-partial-');
  const image = join(root, 'd.img');
  const BS = 64 * 1024;
  await makeImage(image, 64 * BS, [[0, pattern(64 * BS, 9)]]);
  const open = async () => Repository.open(await FsStore.open(join(root, 'repo'), { create: true }), { create: true, blockSize: BS });
  const source = new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } });
  // A sync stopped half way after writing its partial index, as a killed proxy leaves it.
  const abort = new AbortController();
  let stored = 0;
  const stopped = runVmSync(source, 'vm', await open(), { journalDir: join(root, 'lib-a'), checkpointSeconds: 0.05, partialIndexSeconds: 0.05, releaseCpuMsPerMb: 1000, readers: 1, writers: 1 }, (e) => {
    if (e.type === 'block' && ++stored === 40) setTimeout(() => abort.abort(), 300);
  }, abort.signal);
  await rejects(stopped, /interrupted/);
  await Promise.all([...releasing]); // the stop's last checkpoint and partial index
  const repo = await open();
  const partial = await repo.getPartial('vm', 'd');
  assert.ok(partial, 'a partial index is in the repository');
  const report = await pruneRepository(repo, { keepLast: 1, lock: false });
  assert.is(report.deletedChunks, 0, 'chunks of the version in flight are live');
  assert.equal(report.deletedPartials, []);

  // Another proxy (another lib dir) resumes it.
  const reads: number[] = [];
  const resumed = await runVmSync(source, 'vm', await open(), { journalDir: join(root, 'lib-b') }, (e) => e.type === 'block' && reads.push(e.index));
  const stats = resumed.versions[0]!.stats;
  assert.ok(stats.resumedBytes! >= 30 * BS, `resumed ${stats.resumedBytes}`);
  assert.is(stats.readBytes + stats.resumedBytes!, 64 * BS);
  assert.is(await repo.getPartial('vm', 'd'), null, 'committed: the partial index is gone');

  // A partial index whose parent is no longer the latest version cannot resume: prune drops it.
  await repo.putPartial('vm', 'd', partial!);
  const second = await pruneRepository(await open(), { keepLast: 1, lock: false });
  assert.equal(second.deletedPartials, ['vm/d']);
  assert.is(await repo.getPartial('vm', 'd'), null);
  await fsp.rm(root, { recursive: true, force: true });
});

test.run();
