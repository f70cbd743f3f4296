// The S3 target against a real radosgw (tests/ceph/ceph-up.sh, started once by scripts/test).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { LocalSource, Repository, openStore, runVmSync, type Snapshot, type Source } from '../mod.ts';
import { allOutput, hamal, TEST_LIB_DIR } from './helpers/cli.ts';
import { killAndResume } from './helpers/killAndResume.ts';
import { FaultProxy } from './helpers/FaultProxy.ts';
import { MiB, makeImage, pattern, sha256File, tempDir, writeAt } from './helpers/disks.ts';

const endpoint = process.env.HAMAL_TEST_S3_ENDPOINT ?? '';
const key = process.env.HAMAL_TEST_S3_ACCESS_KEY ?? '';
const secret = process.env.HAMAL_TEST_S3_SECRET_KEY ?? '';
const BUCKET = 'hamal-tests';
const creds = { AWS_ACCESS_KEY_ID: key, AWS_SECRET_ACCESS_KEY: secret };
// Every run writes under its own prefix: the bucket outlives a run when the cluster does.
const RUN = randomBytes(4).toString('hex');
const url = (prefix: string, bucket = BUCKET) => `s3://${bucket}/${RUN}/${prefix}?endpoint=${endpoint}`;
let client: S3Client;
let dir: string;

test.before(async () => {
  assert.ok(endpoint && key && secret, 'radosgw is not running: scripts/test starts it (tests/ceph/ceph-up.sh)');
  client = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: { accessKeyId: key, secretAccessKey: secret } });
  await client.send(new CreateBucketCommand({ Bucket: BUCKET })).catch((e) => {
    if (e.name !== 'BucketAlreadyOwnedByYou' && e.name !== 'BucketAlreadyExists') throw e;
  });
  Object.assign(process.env, creds); // the SDK's default chain, for in-process stores and children
  dir = await tempDir();
});
test.after(async () => {
  client.destroy();
  await fsp.rm(dir, { recursive: true, force: true });
});

test('full and incremental syncs to radosgw restore exactly; verify --deep passes', async () => {
  const img = join(dir, 'a.img');
  await makeImage(img, 24 * MiB + 512, [[MiB + 3, pattern(9 * MiB, 1)]]);
  const shas: string[] = [];
  for (const change of [null, [5 * MiB - 7, pattern(20, 2)], [20 * MiB, pattern(MiB, 3)]] as const) {
    if (change) await writeAt(img, change[0], change[1]);
    const r = await hamal(['sync', '--vm', 'vm', '--disk', `a=${img}`, '--target', url('full/'), '--json'], creds);
    assert.is(r.code, 0, r.stderr);
    shas.push(await sha256File(img));
  }
  const versions = JSON.parse((await hamal(['versions', '--target', url('full/'), '--json'], creds)).stdout);
  assert.is(versions.length, 3);
  assert.is(versions[1].storedBytes, 4 * MiB, 'one changed block');
  for (const [i, v] of versions.entries()) {
    const out = join(dir, `a-${i}.img`);
    const r = await hamal(['restore', '--target', url('full/'), '--vm', 'vm', '--disk', 'a', '--version', v.version, '--out', out, '--force'], creds);
    assert.is(r.code, 0, r.stderr);
    assert.is(await sha256File(out), shas[i]);
  }
  const v = await hamal(['verify', '--target', url('full/'), '--deep'], creds);
  assert.is(v.code, 0, v.stdout + v.stderr);
});

test('credentials from [s3] of hamal.conf work and never reach the output', async () => {
  const conf = join(dir, 's3.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${TEST_LIB_DIR}\n[s3]\nendpoint = ${endpoint}\naccess_key_id = ${key}\nsecret_access_key = ${secret}\n`);
  const img = join(dir, 'c.img');
  await makeImage(img, 4 * MiB, [[0, pattern(MiB, 4)]]);
  const r = await hamal(['--config', conf, '--debug', 'sync', '--vm', 'vm', '--disk', img, '--target', `s3://${BUCKET}/${RUN}/conf/`], { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' });
  assert.is(r.code, 0, r.stderr);
  const check = await hamal(['config', 'check', '--config', conf]);
  assert.match(check.stdout, 'secret_access_key = ********');
  for (const out of allOutput) assert.not.ok(out.includes(secret), 'secret key in the output');
});

test('one flipped byte in a chunk on radosgw: verify --deep names it, exit 1', async () => {
  const img = join(dir, 'f.img');
  await makeImage(img, 2 * MiB, [[0, pattern(2 * MiB, 5)]]);
  assert.is((await hamal(['sync', '--vm', 'vm', '--disk', `f=${img}`, '--target', url('flip/')], creds)).code, 0);
  const m = JSON.parse((await hamal(['versions', '--target', url('flip/'), '--json'], creds)).stdout)[0];
  const store = await openStore(url('flip/'));
  const repo = await Repository.open(store);
  const chunk = (await repo.readManifest('vm', 'f', m.version)).blocks.find((b) => b !== null)!;
  const k = `${RUN}/flip/chunks/${chunk.slice(0, 2)}/${chunk}`;
  const body = Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: k }))).Body!.transformToByteArray());
  body[77] = body[77]! ^ 4;
  await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: k, Body: body }));
  await store.close();
  const v = await hamal(['verify', '--target', url('flip/'), '--deep'], creds);
  assert.is(v.code, 1);
  assert.match(v.stdout, `corrupt: chunks/${chunk.slice(0, 2)}/${chunk}: content does not match its hash`);
});

test('a sync to radosgw killed with SIGKILL resumes without rereading checkpointed blocks', async () => {
  await killAndResume(url('kill/'), async () => Repository.open(await openStore(url('kill/')), {}));
});

test('a wrong secret exits 1 explaining SignatureDoesNotMatch, without the secret', async () => {
  const img = join(dir, 'w.img');
  await makeImage(img, MiB);
  const wrong = 'Wr0ngSecretKeyForHamalTests';
  const r = await hamal(['sync', '--vm', 'vm', '--disk', img, '--target', url('wrong/')], { AWS_ACCESS_KEY_ID: key, AWS_SECRET_ACCESS_KEY: wrong });
  assert.is(r.code, 1, r.stderr);
  assert.match(r.stderr, /S3 refused open bucket hamal-tests .*SignatureDoesNotMatch.*check the access key and secret key/);
  assert.not.ok(r.stderr.includes(wrong) || r.stdout.includes(wrong));
  assert.not.match(r.stderr, /\n\s+at /);
});

test('a missing bucket is a clear error (hamal does not create buckets)', async () => {
  const r = await hamal(['sync', '--vm', 'vm', '--disk', join(dir, 'w.img'), '--target', url('x/', 'no-such-bucket-here')], creds);
  assert.is(r.code, 1);
  assert.match(r.stderr, 'bucket no-such-bucket-here does not exist at http://127.0.0.1');
  assert.match(r.stderr, 'create it first');
});

test('a prefix holding something that is not a repository is refused, not overwritten', async () => {
  await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${RUN}/foreign/data.csv`, Body: 'a,b\n' }));
  const r = await hamal(['sync', '--vm', 'vm', '--disk', join(dir, 'w.img'), '--target', url('foreign/')], creds);
  assert.is(r.code, 1);
  assert.match(r.stderr, /holds objects \(data\.csv, \.\.\.\) but no hamal repository: refusing to write there/);
  const still = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${RUN}/foreign/data.csv` }));
  assert.is(await still.Body!.transformToString(), 'a,b\n');
});

/** Two images sharing their first 2 MiB; VM a's v1 alone holds that chunk once a has v2. */
async function sharedSetup(prefix: string) {
  const shared = pattern(2 * MiB, 6);
  const a = join(dir, `${RUN}-${prefix.length}-a.img`);
  await makeImage(a, 4 * MiB, [[0, shared]]);
  const b = join(dir, `${RUN}-${prefix.length}-b.img`);
  await makeImage(b, 4 * MiB, [[0, shared], [2 * MiB, pattern(2 * MiB, 8)]]);
  assert.is((await hamal(['sync', '--vm', 'a', '--disk', `d=${a}`, '--target', prefix, '--block-size', String(2 * MiB)], creds)).code, 0);
  await writeAt(a, 0, pattern(2 * MiB, 7));
  assert.is((await hamal(['sync', '--vm', 'a', '--disk', `d=${a}`, '--target', prefix], creds)).code, 0);
  // VM b syncs in this process, held before its second block until released.
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const local = new LocalSource({ vms: { b: [{ id: 'd', path: b }] } });
  const gated: Source = {
    platform: 'local',
    async snapshot(vm) {
      const snap = await local.snapshot(vm);
      return Object.assign(Object.create(snap), {
        read: async (disk: Parameters<Snapshot['read']>[0], offset: number, length: number, into?: Buffer) => {
          if (offset > 0) await gate;
          return snap.read(disk, offset, length, into);
        },
      }) as Snapshot;
    },
  };
  return { b, gated, release };
}

async function verifiedAndRestorable(prefix: string, b: string) {
  const v = await hamal(['verify', '--target', prefix, '--deep'], creds);
  assert.is(v.code, 0, v.stdout);
  const out = join(dir, `${RUN}-restored-b.img`);
  assert.is((await hamal(['restore', '--target', prefix, '--vm', 'b', '--disk', 'd', '--out', out, '--force'], creds)).code, 0);
  assert.is(await sha256File(out), await sha256File(b));
}

test('two proxies, one bucket: a prune started while a sync runs is refused by the lock; after it, no referenced chunk is lost', async () => {
  const prefix = url('lock/');
  const { b, gated, release } = await sharedSetup(prefix);
  const repo = await Repository.open(await openStore(prefix));
  const running = runVmSync(gated, 'b', repo, { readers: 1, writers: 1 });
  await new Promise((r) => setTimeout(r, 300)); // b holds its shared lock and has deduplicated block 0
  // A second proxy syncs VM c meanwhile: shared locks coexist.
  const c = join(dir, `${RUN}-c.img`);
  await makeImage(c, 4 * MiB, [[0, pattern(3 * MiB, 9)]]);
  const other = await hamal(['sync', '--vm', 'c', '--disk', `d=${c}`, '--target', prefix], creds);
  assert.is(other.code, 0, other.stderr);
  const p = await hamal(['prune', '--target', prefix, '--keep-last', '1'], creds);
  assert.is(p.code, 1, p.stderr);
  assert.match(p.stderr, /repository s3:\/\/hamal-tests\/.* is in use: sync of VM b by .* until .*; try again later/);
  release();
  assert.equal((await running).failed, []);
  const after = await hamal(['prune', '--target', prefix, '--keep-last', '1', '--json'], creds);
  assert.is(after.code, 0, after.stderr);
  assert.is(JSON.parse(after.stdout).deletedChunks, 0, 'the shared chunk is b\'s now');
  const sync = await hamal(['sync', '--vm', 'b', '--disk', `d=${b}`, '--target', prefix, '--json'], creds);
  assert.is(sync.code, 0, sync.stderr);
  await verifiedAndRestorable(prefix, b);
});

test('without locks, the prune generation still stops a sync from committing a version whose chunks a prune took', async () => {
  const prefix = url('generation/');
  const { b, gated, release } = await sharedSetup(prefix);
  const repo = await Repository.open(await openStore(prefix));
  const running = runVmSync(gated, 'b', repo, { readers: 1, writers: 1, lock: false });
  await new Promise((r) => setTimeout(r, 300));
  const p = await hamal(['prune', '--target', prefix, '--keep-last', '1', '--json'], creds);
  assert.is(p.code, 0, p.stderr);
  assert.is(JSON.parse(p.stdout).deletedChunks, 1, p.stdout);
  release();
  const result = await running;
  assert.is(result.failed.length, 1);
  assert.match(result.failed[0]!.error.message, /a prune deleted 1 chunks that version .* of b\/d needs .*run the sync again/);
  const again = await hamal(['sync', '--vm', 'b', '--disk', `d=${b}`, '--target', prefix], creds);
  assert.is(again.code, 0, again.stderr);
  await verifiedAndRestorable(prefix, b);
});

test('faults between hamal and radosgw: drops mid-PUT, 503 SlowDown bursts and a stall are retried through', async () => {
  const rgw = new URL(endpoint);
  const proxy = new FaultProxy({ host: rgw.hostname, port: Number(rgw.port) });
  const via = await proxy.start();
  const conf = join(dir, 'faults.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${TEST_LIB_DIR}\n[mass]\ndefault_request_timeout = 3\n`);
  const target = `s3://${BUCKET}/${RUN}/faults/?endpoint=${via}`;
  const img = join(dir, 'faults.img');
  await makeImage(img, 24 * MiB, [[0, pattern(24 * MiB, 21)]]);
  try {
    proxy.faults.dropPuts = 3;
    let r = await hamal(['--config', conf, 'sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', target, '--debug'], creds);
    assert.is(r.code, 0, r.stderr);
    assert.is(proxy.injected.drops, 3);
    assert.match(r.stderr, /DEBUG   \[s3\] retry 2 of 5/);

    await writeAt(img, 0, pattern(8 * MiB, 22));
    proxy.faults.slowDowns = 4;
    r = await hamal(['--config', conf, 'sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', target], creds);
    assert.is(r.code, 0, r.stderr);
    assert.is(proxy.injected.slowDowns, 4);

    await writeAt(img, 12 * MiB, pattern(MiB, 23));
    proxy.faults.stallMs = 10_000;
    r = await hamal(['--config', conf, 'sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', target], creds);
    assert.is(r.code, 0, r.stderr);
    assert.is(proxy.injected.stalls, 1);

    const v = await hamal(['verify', '--target', url('faults/'), '--deep'], creds);
    assert.is(v.code, 0, v.stdout);
    const out = join(dir, 'faults-out.img');
    assert.is((await hamal(['restore', '--target', url('faults/'), '--vm', 'vm', '--disk', 'd', '--out', out, '--force'], creds)).code, 0);
    assert.is(await sha256File(out), await sha256File(img));
  } finally {
    await proxy.stop();
  }
});

test('past its retry budget a sync fails with a clear error; no manifest names a missing chunk; a rerun completes', async () => {
  const rgw = new URL(endpoint);
  const proxy = new FaultProxy({ host: rgw.hostname, port: Number(rgw.port) });
  const via = await proxy.start();
  const target = `s3://${BUCKET}/${RUN}/budget/?endpoint=${via}`;
  const img = join(dir, 'budget.img');
  await makeImage(img, 12 * MiB, [[0, pattern(12 * MiB, 31)]]);
  try {
    // The first sync creates the repository; then every chunk PUT loses its connection.
    assert.is((await hamal(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', target], creds)).code, 0);
    await writeAt(img, 0, pattern(12 * MiB, 32));
    proxy.faults.dropPuts = 10_000;
    const r = await hamal(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', target], creds);
    assert.is(r.code, 1);
    assert.match(r.stderr, /disk d failed: put chunks\/[0-9a-f]{2}\/[0-9a-f]{64} in s3:\/\/hamal-tests\/.* failed/);
    assert.ok(proxy.injected.drops >= 5, 'retried before giving up');
    proxy.faults.dropPuts = 0;
    const versions = JSON.parse((await hamal(['versions', '--target', url('budget/'), '--json'], creds)).stdout);
    assert.is(versions.length, 1, 'the failed sync left no version');
    assert.is((await hamal(['verify', '--target', url('budget/'), '--deep'], creds)).code, 0);
    const again = await hamal(['sync', '--vm', 'vm', '--disk', `d=${img}`, '--target', target], creds);
    assert.is(again.code, 0, again.stderr);
    const out = join(dir, 'budget-out.img');
    assert.is((await hamal(['restore', '--target', url('budget/'), '--vm', 'vm', '--disk', 'd', '--out', out, '--force'], creds)).code, 0);
    assert.is(await sha256File(out), await sha256File(img));
  } finally {
    await proxy.stop();
  }
});

test('large objects go up as multipart uploads and read back whole', async () => {
  const store = await openStore(url('multipart/'), { create: true });
  const big = pattern(20 * MiB + 3, 41);
  await store.put('meta/big.json', big);
  assert.equal(await store.head('meta/big.json'), { size: big.length });
  assert.ok((await store.get('meta/big.json')).equals(big));
  await store.close();
});

test.run();
