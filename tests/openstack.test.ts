// The OpenStack + Ceph source against the test Ceph cluster (real RBD images, snapshots,
// `rbd diff`, qemu-nbd) and an OpenStack STAND-IN (tests/helpers/OpenStackStandIn.ts),
// through the CLI as an operator runs it: every restored version equals
// `rbd export pool/image@snapshot` of its snapshot.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { OpenStackStandIn } from './helpers/OpenStackStandIn.ts';
import { HAMAL_ARGV, allOutput, hamal } from './helpers/cli.ts';
import { MiB, sha256File, tempDir } from './helpers/disks.ts';
import { REPO_ROOT } from './helpers/repoRoot.ts';

const run = promisify(execFile);
const PASSWORD = 's3cr3t-Pa55word-for-tests';
const WRITER = join(REPO_ROOT, 'tests/ceph/rbd-write.py');
const CONF = process.env.CEPH_CONF!;
const KEYRING = process.env.HAMAL_TEST_CEPH_KEYRING!;
const os = new OpenStackStandIn({ hamal: PASSWORD });
const serverId = randomUUID();
const volumeId = randomUUID();
const volume = `volumes/volume-${volumeId}`;
const root = `vms/${serverId}_disk`;
let dir: string;
let conf: string;

const rbd = async (...args: string[]) => (await run('rbd', ['--conf', CONF, '--name', 'client.hamal', '--keyring', KEYRING, ...args])).stdout;
const write = (image: string, ops: unknown[]) => run('/usr/bin/python3', [WRITER, CONF, 'client.hamal', KEYRING, image.split('/')[0]!, image.split('/')[1]!, JSON.stringify(ops)]);
const ourSnaps = async (image: string) => (JSON.parse(await rbd('snap', 'ls', '--format', 'json', image)) as Array<{ name: string }>).map((s) => s.name).filter((n) => n.startsWith('hamal-'));

function task(over: Record<string, unknown> = {}) {
  return {
    version: 1,
    source: {
      platform: 'openstack_ceph',
      vm: 'web-1',
      connection: { authUrl: `${os.url}/identity/v3`, username: 'hamal', projectName: 'p1', password: PASSWORD, cephConf: CONF, cephUser: 'client.hamal', keyringFile: KEYRING, ...over },
    },
    target: join(dir, 'repo'),
  };
}

async function sync(t = task(), extra: string[] = []) {
  const file = join(dir, `task-${randomUUID()}.json`);
  await fsp.writeFile(file, JSON.stringify(t), { mode: 0o600 });
  return hamal(['sync', '--task', file, '--json', '--config', conf, ...extra]);
}

/** Restores each version the sync made and compares it with `rbd export image@snapshot`. */
async function checkRestores(out: string) {
  const summary = JSON.parse(out) as { snapshotId: string; disks: Array<{ disk: string; version: string; readBytes: number; resumedBytes?: number }> };
  for (const d of summary.disks) {
    const image = d.disk === 'root' ? root : volume;
    const expected = join(dir, `${d.version}.expected`);
    await rbd('export', '--no-progress', `${image}@${summary.snapshotId}`, expected);
    const got = join(dir, `${d.version}.restored`);
    const r = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'web-1', '--disk', d.disk, '--version', d.version, '--out', got, '--config', conf]);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(got), await sha256File(expected), `${d.disk} ${d.version}`);
    await fsp.rm(expected);
    await fsp.rm(got);
  }
  return summary;
}

test.before(async () => {
  assert.ok(CONF && KEYRING, 'CEPH_CONF and HAMAL_TEST_CEPH_KEYRING come from tests/ceph/ceph-up.sh (scripts/test)');
  await os.start();
  dir = await tempDir('hamal-openstack-');
  conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[data_sync_v2]\nfsync_period_frequency = 1\n[sync]\nsave_local_snapshot_metadata = True\n[hamal]\nblock_size_mb = 1\n`);
  await rbd('create', '--size', '256M', volume);
  await rbd('create', '--size', '64M', root);
  os.servers.push({
    id: serverId,
    name: 'web-1',
    image: { id: randomUUID() },
    volumes: [{ id: volumeId, name: 'data', sizeGb: 1, device: '/dev/vdb' }],
    addresses: { private: [{ addr: '10.0.0.5', 'OS-EXT-IPS-MAC:mac_addr': 'fa:16:3e:00:00:01', version: 4 }] },
  });
  await write(volume, [
    ['w', 12345, 'a', 3 * MiB],
    ['w', 100 * MiB + 7, 'b', 2 * MiB],
    ['w', 250 * MiB, 'c', 6 * MiB - 1],
  ]);
  await write(root, [['w', 0, 'boot', 8 * MiB]]);
});

test.after(async () => {
  await os.stop();
  for (const image of [volume, root]) {
    for (const s of await ourSnaps(image).catch(() => [])) await rbd('snap', 'rm', '--no-progress', `${image}@${s}`).catch(() => {});
    await rbd('rm', '--no-progress', image).catch(() => {});
  }
  await fsp.rm(dir, { recursive: true, force: true });
});

test('full sync, then incrementals with unaligned writes across objects, into new objects and a discard: each restore equals rbd export of its snapshot', async () => {
  const r1 = await sync();
  assert.is(r1.code, 0, r1.stderr);
  const s1 = await checkRestores(r1.stdout);
  assert.equal(s1.disks.map((d) => d.disk).sort(), ['root', `volume-${volumeId}`]);
  // Only allocated areas are read on the first sync (about 11 MiB of the volume's 256).
  assert.ok(s1.disks.find((d) => d.disk !== 'root')!.readBytes <= 24 * MiB);
  assert.equal(await ourSnaps(volume), [s1.snapshotId], 'the snapshot stays as the base of the next diff');

  await write(volume, [
    ['w', 4 * MiB - 100, 'd', 300], // across an object boundary, unaligned
    ['w', 180 * MiB + 1, 'e', 5000], // into an object that did not exist
    ['d', 100 * MiB, 4 * MiB], // a discard over written data
  ]);
  const r2 = await sync();
  assert.is(r2.code, 0, r2.stderr);
  const s2 = await checkRestores(r2.stdout);
  const v2 = s2.disks.find((d) => d.disk !== 'root')!;
  assert.ok(v2.readBytes <= 16 * MiB, `incremental read ${v2.readBytes} bytes`);
  assert.equal(s2.disks.find((d) => d.disk === 'root')!.readBytes, 0, 'an unchanged disk reads nothing');
  assert.equal(await ourSnaps(volume), [s2.snapshotId], 'the older base was removed');

  await write(volume, [['w', 255 * MiB + 3, 'f', MiB - 3]]);
  await write(root, [['w', 3 * MiB + 17, 'g', 1000]]);
  const r3 = await sync();
  assert.is(r3.code, 0, r3.stderr);
  await checkRestores(r3.stdout);
  // The server's NICs reach the VM metadata (and the service's ip_mapping.backup).
  const metaDir = join(dir, 'lib', 'metadata', 'web-1');
  const [latest] = (await fsp.readdir(metaDir)).sort().reverse();
  const meta = JSON.parse(await fsp.readFile(join(metaDir, latest!), 'utf8'));
  assert.equal(meta.platformInfo.nics, [{ mac: 'fa:16:3e:00:00:01', network: 'private', ips: ['10.0.0.5'] }]);
});

test('a snapshot deleted outside hamal: that disk is synced in full, with a warning naming the snapshot', async () => {
  const [base] = await ourSnaps(root);
  await rbd('snap', 'rm', '--no-progress', `${root}@${base}`);
  const r = await sync();
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`snapshot ${base} of the last sync is gone from ${root.replace('/', '\\/')}`));
  const s = await checkRestores(r.stdout);
  assert.is(s.disks.find((d) => d.disk === 'root')!.readBytes, 8 * MiB, 'the root disk was read in full (its allocated 8 MiB)');
});

for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
test(`a sync stopped with ${signal} mid-stream keeps its snapshot and resumes from it on the next run; afterwards only the base snapshot of ours is left`, async () => {
  await write(volume, [['w', 20 * MiB, signal === 'SIGKILL' ? 'h' : 't', 24 * MiB]]);
  const slow = join(dir, 'slow.conf');
  await fsp.writeFile(slow, (await fsp.readFile(conf, 'utf8')) + '[period]\nopenstack_release_cpu_time = 150\n');
  const file = join(dir, 'kill-task.json');
  await fsp.writeFile(file, JSON.stringify(task()), { mode: 0o600 });
  const child = spawn(HAMAL_ARGV[0]!, [...HAMAL_ARGV.slice(1), 'sync', '--task', file, '--config', slow, '--debug'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  for await (const line of createInterface({ input: child.stderr! })) {
    log += line + '\n';
    const m = /disk volume-\S+: checkpoint blocks=(\d+)/.exec(line);
    if (m && Number(m[1]) >= 6) {
      child.kill(signal);
      break;
    }
  }
  await new Promise((r) => child.once('close', r));
  allOutput.push(log);
  if (signal === 'SIGKILL') assert.is(child.signalCode, 'SIGKILL', log.slice(-2000));
  else assert.is(child.exitCode, 143, log.slice(-2000));
  // Its qemu-nbd servers end with it, also after SIGKILL (parent-death signal).
  let servers: string[] = [];
  for (let i = 0; i < 50; i++) {
    servers = execFileSync('ps', ['-eo', 'stat=,args='], { encoding: 'utf8' }).split('\n').filter((l) => l.includes('qemu-nbd') && l.includes(dir) && !/^\s*Z/.test(l));
    if (!servers.length) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(servers, [], 'qemu-nbd outlived the stopped sync');
  assert.is((await ourSnaps(volume)).length, 2, 'the stopped sync left its snapshot (and the base)');
  const r = await sync();
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stderr, /resuming with snapshot hamal-/);
  const s = await checkRestores(r.stdout);
  const v = s.disks.find((d) => d.disk !== 'root')!;
  assert.ok((v.resumedBytes ?? 0) >= 6 * MiB, `resumed ${v.resumedBytes}`);
  assert.equal(await ourSnaps(volume), [s.snapshotId]);
  assert.equal(await ourSnaps(root), [s.snapshotId]);
});
}

test('an application credential authenticates too; a volume resized between syncs gets a full version of its new size', async () => {
  os.appCredentials['ac-1'] = PASSWORD;
  await rbd('resize', '--no-progress', '--size', '320M', volume);
  await write(volume, [['w', 300 * MiB + 5, 'i', 4096]]);
  const appTask = task({ username: undefined, projectName: undefined, applicationCredentialId: 'ac-1' });
  const r = await sync(appTask);
  assert.is(r.code, 0, r.stderr);
  const s = await checkRestores(r.stdout);
  const v = JSON.parse(r.stdout).disks.find((d: { disk: string }) => d.disk !== 'root');
  assert.is(v.capacity, 320 * MiB);
  // Full: every allocated area is read again, not just the one block written since.
  assert.ok(v.readBytes >= 10 * MiB, `read ${v.readBytes} bytes`);
  assert.ok(s.disks.length === 2);
});

test('wrong keyring, unknown pool, unknown server, refused token, wrong password: exit 1, a message naming the fault, no secret', async () => {
  const badKeyring = join(dir, 'bad.keyring');
  await fsp.writeFile(badKeyring, '[client.hamal]\n\tkey = AQBNBM5lAAAAABAAX5D7BXkqMz1ZhZeMn9XNmA==\n');
  const cases: Array<[string, () => Promise<Awaited<ReturnType<typeof hamal>>>, RegExp]> = [
    ['keyring', () => sync(task({ keyringFile: badKeyring })), /the cluster refused client\.hamal with keyring .*bad\.keyring \(wrong keyring or user\)/],
    ['server', () => sync({ ...task(), source: { ...task().source, vm: 'no-such-server' } }), /no server no-such-server in this project/],
    ['password', () => sync(task({ password: 'Wr0ng-vc-pass-for-tests' })), /Keystone at .* refused user hamal \(project p1\): wrong name, password or secret/],
  ];
  for (const [what, go, expected] of cases) {
    const r = await go();
    assert.is(r.code, 1, `${what}: ${r.stderr}`);
    assert.match(r.stderr, expected, what);
    assert.not.match(r.stderr + r.stdout, PASSWORD, what);
  }
  const pool = join(dir, 'pool.conf');
  await fsp.writeFile(pool, (await fsp.readFile(conf, 'utf8')) + '[openstack_ceph]\nvolumes_pool = nopool\n');
  const file = join(dir, 'pool-task.json');
  await fsp.writeFile(file, JSON.stringify(task()), { mode: 0o600 });
  const p = await hamal(['sync', '--task', file, '--config', pool]);
  assert.is(p.code, 1);
  assert.match(p.stderr, /pool nopool does not exist/);
  os.tokenTtlMs = -60_000;
  try {
    const t = await sync();
    assert.is(t.code, 1);
    assert.match(t.stderr, /compute at .* refused a fresh token \(expired or revoked at once/);
  } finally {
    os.tokenTtlMs = 3600_000;
  }
});

test.run();
