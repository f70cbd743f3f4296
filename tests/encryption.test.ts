// Encryption and compression at rest ([10]): repositories made by `hamal init`, to a
// directory and to radosgw (tests/ceph, started once by scripts/test).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join, relative } from 'node:path';
import { spawn } from 'node:child_process';
import { CreateBucketCommand, ListObjectsV2Command, GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { hamal } from './helpers/cli.ts';
import { MiB, sha256File, tempDir, writeAt } from './helpers/disks.ts';
import { FsStore } from '../src/sinks/fs/FsStore.ts';
import { Repository } from '../src/repo/Repository.ts';
import { keyDerivations } from '../src/repo/MasterKey.ts';
import { REPO_ROOT } from './helpers/repoRoot.ts';

const endpoint = process.env.HAMAL_TEST_S3_ENDPOINT ?? '';
const s3creds = { AWS_ACCESS_KEY_ID: process.env.HAMAL_TEST_S3_ACCESS_KEY ?? '', AWS_SECRET_ACCESS_KEY: process.env.HAMAL_TEST_S3_SECRET_KEY ?? '' };
const BUCKET = 'hamal-tests';
const RUN = randomBytes(4).toString('hex');
const REPO = REPO_ROOT;
const MARKER = 'HAMAL-PLAINTEXT-MARKER-7f3a';
const PASS = 'correct horse battery staple 42';
let dir: string;
let client: S3Client;

/** 12 MiB: random, then text carrying MARKER (compressible), then a hole, then random. */
async function makeDisk(path: string): Promise<void> {
  const text = Buffer.alloc(4 * MiB);
  for (let at = 0; at < text.length; ) at += text.write(`${MARKER} block of a document, line ${at}\n`, at);
  await fsp.writeFile(path, Buffer.concat([randomBytes(4 * MiB), text, Buffer.alloc(2 * MiB), randomBytes(2 * MiB)]));
}

/** Every object of a repository as [name, body]: a directory walk, or a bucket listing. */
async function objects(target: string): Promise<Array<[string, Buffer]>> {
  if (!target.startsWith('s3://')) {
    const out: Array<[string, Buffer]> = [];
    const walk = async (d: string) => {
      for (const e of await fsp.readdir(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else out.push([relative(target, p), await fsp.readFile(p)]);
      }
    };
    await walk(target);
    return out;
  }
  const prefix = new URL(target.replace(/^s3:/, 'http:')).pathname.slice(1).replace(/\/?$/, '/');
  const out: Array<[string, Buffer]> = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) {
      const body = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: o.Key! }));
      out.push([`${o.Key}#${o.ETag}`, Buffer.from(await body.Body!.transformToByteArray())]);
    }
    token = page.NextContinuationToken;
  } while (token);
  return out;
}

/** SHA-256 of each 4 MiB block of a file: what plain chunk names would be. */
async function blockHashes(path: string): Promise<string[]> {
  const data = await fsp.readFile(path);
  const out: string[] = [];
  for (let at = 0; at < data.length; at += 4 * MiB) out.push(createHash('sha256').update(data.subarray(at, at + 4 * MiB)).digest('hex'));
  return out;
}

test.before(async () => {
  dir = await tempDir('hamal-enc-');
  if (!endpoint) return;
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  client = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true, credentials: { accessKeyId: s3creds.AWS_ACCESS_KEY_ID, secretAccessKey: s3creds.AWS_SECRET_ACCESS_KEY } });
  await client.send(new CreateBucketCommand({ Bucket: BUCKET })).catch((e) => {
    if (e.name !== 'BucketAlreadyOwnedByYou' && e.name !== 'BucketAlreadyExists') throw e;
  });
});
test.after(async () => {
  client?.destroy();
  await fsp.rm(dir, { recursive: true, force: true });
});

const targets = () => [
  ['directory', (name: string) => join(dir, name)],
  ['radosgw', (name: string) => `s3://${BUCKET}/${RUN}/${name}?endpoint=${endpoint}`],
] as const;

for (const [where, targetOf] of targets()) {
  for (const [encryption, compression] of [['aes-256-gcm', 'none'], ['none', 'zstd'], ['aes-256-gcm', 'zstd']] as const) {
    test(`${where}, encryption ${encryption}, compression ${compression}: full and incremental restore byte-exact; no plaintext hash or content in the stored objects`, async () => {
      assert.ok(where === 'directory' || endpoint, 'radosgw is not running: scripts/test starts it');
      const name = `${encryption}-${compression}`;
      const target = targetOf(name);
      const disk = join(dir, `${name}.img`);
      await makeDisk(disk);
      const env = { HAMAL_PASSPHRASE: PASS, ...s3creds };
      const init = await hamal(['init', '--target', target, '--encryption', encryption, '--compression', compression, '--json'], env);
      assert.is(init.code, 0, init.stderr);
      assert.is(JSON.parse(init.stdout).format, 2);
      const conf = join(dir, `${name}.conf`);
      await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${join(dir, `${name}-lib`)}\n[sync]\nupload_metadata_to_oss = True\n`);
      const shas: string[] = [];
      const plainHashes = new Set(await blockHashes(disk));
      for (const change of [null, 5 * MiB + 77, 10 * MiB]) {
        if (change !== null) await writeAt(disk, change, Buffer.from(`${MARKER} changed at ${change} ${randomBytes(8).toString('hex')}`));
        for (const h of await blockHashes(disk)) plainHashes.add(h);
        const r = await hamal(['--config', conf, 'sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target, '--json'], env);
        assert.is(r.code, 0, r.stderr);
        shas.push(await sha256File(disk));
      }
      const versions = JSON.parse((await hamal(['versions', '--target', target, '--json'], env)).stdout) as Array<{ version: string }>;
      assert.is(versions.length, 3);
      for (const [i, v] of versions.entries()) {
        const out = join(dir, `${name}-${i}.out`);
        const r = await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--version', v.version, '--out', out, '--force'], env);
        assert.is(r.code, 0, r.stderr);
        assert.is(await sha256File(out), shas[i], `version ${i}`);
      }
      const verify = await hamal(['verify', '--target', target, '--deep'], env);
      assert.is(verify.code, 0, verify.stdout + verify.stderr);
      const stored = await objects(target);
      const blob = Buffer.concat(stored.map(([n, b]) => Buffer.concat([Buffer.from(n), b])));
      if (encryption !== 'none') {
        assert.not.ok(blob.includes(MARKER), 'the marker written into the disk is nowhere in the stored objects');
        for (const h of plainHashes) assert.not.ok(blob.includes(h), `plaintext block hash ${h} appears in the repository`);
        // Manifests, VM metadata (and partial indexes) are sealed too: only the key holders read them.
        const documents = stored.filter(([n]) => n.includes('vms/'));
        assert.ok(documents.length >= 6, `${documents.length} documents`);
        for (const [n, b] of documents) assert.equal([...b.subarray(0, 4)], [0x48, 0x4d, 0x43, 0x01], `${n} is sealed`);
        const meta = await hamal(['versions', '--target', target, '--vm', 'vm', '--metadata'], env);
        assert.is(meta.code, 0, meta.stderr);
        const docs = JSON.parse(meta.stdout) as Array<{ document: { vm: { name: string }; disks: Array<{ version: string }> } }>;
        assert.equal(docs.map((d) => d.document.disks[0]!.version), versions.map((v) => v.version));
        assert.is(docs[0]!.document.vm.name, 'vm');
      } else {
        // Compression only: names are plain SHA-256 and the text block shrank.
        const textHash = (await blockHashes(disk))[1]!;
        const textChunk = stored.find(([n]) => n.includes(textHash));
        assert.ok(textChunk && textChunk[1].length < MiB, 'the text block is stored compressed');
      }
    });
  }
}

test('a wrong passphrase: a clear error, exit 1, nothing written; without one: exit 2 naming the keys to set', async () => {
  const target = join(dir, 'wrong');
  const disk = join(dir, 'wrong.img');
  await makeDisk(disk);
  assert.is((await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm'], { HAMAL_PASSPHRASE: PASS })).code, 0);
  const before = (await objects(target)).map(([n]) => n).sort();
  const bad = await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], { HAMAL_PASSPHRASE: 'not the passphrase' });
  assert.is(bad.code, 1, bad.stderr);
  assert.match(bad.stderr, /none of the 1 key\(s\) of the repository at \S+ opens with the passphrase given/);
  assert.not.ok(bad.stderr.includes('not the passphrase'));
  assert.equal((await objects(target)).map(([n]) => n).sort(), before, 'nothing written');
  const none = await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', join(dir, 'x')], { HAMAL_PASSPHRASE: '' });
  assert.is(none.code, 2, none.stderr);
  assert.match(none.stderr, /encrypted: set HAMAL_PASSPHRASE, or \[hamal\] passphrase_file or key_file/);
});

test('one process derives a key once: reopening with the same passphrase runs no scrypt; a wrong one fails every time', async () => {
  const target = join(dir, 'derive-once');
  const open = async (passphrase: string) => {
    const store = await FsStore.open(target, { create: true });
    try {
      await Repository.open(store, { create: true, encryption: 'aes-256-gcm', secret: async () => ({ passphrase }) });
    } finally {
      await store.close();
    }
  };
  const start = keyDerivations();
  await open(PASS); // created: the master key wrapped under PASS
  assert.is(keyDerivations() - start, 1);
  await open(PASS);
  assert.is(keyDerivations() - start, 1, 'reopened without deriving again');
  const wrong = () =>
    open('not the passphrase').then(
      () => assert.unreachable('a wrong passphrase opened the repository'),
      (err) => assert.is(err.code, 'WRONG_PASSPHRASE'),
    );
  await Promise.all([wrong(), wrong()]);
  await wrong();
  assert.is(keyDerivations() - start, 2, 'the wrong passphrase derived once, also by two opens at once');
  // A key record whose scrypt cost is no power of two: named as corrupt, not scrypt's own error.
  const [name] = await fsp.readdir(join(target, 'keys'));
  const path = join(target, 'keys', name!);
  const record = JSON.parse(await fsp.readFile(path, 'utf8'));
  await fsp.writeFile(path, JSON.stringify({ ...record, kdf: { ...record.kdf, N: 3 } }));
  await open(PASS).then(
    () => assert.unreachable('a record with N=3 was used'),
    (err) => {
      assert.is(err.code, 'KEY_CORRUPT');
      assert.match(err.message, `key ${record.id}`);
    },
  );
});

test('a key file named in hamal.conf opens the repository; a short one is refused naming [hamal] key_file', async () => {
  const target = join(dir, 'keyfile');
  const disk = join(dir, 'keyfile.img');
  await makeDisk(disk);
  const keyFile = join(dir, 'repo.key');
  await fsp.writeFile(keyFile, randomBytes(32), { mode: 0o600 });
  const conf = join(dir, 'keyfile.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[hamal]\nkey_file = ${keyFile}\n`, { mode: 0o600 });
  const env = { HAMAL_PASSPHRASE: '' };
  assert.is((await hamal(['--config', conf, 'init', '--target', target, '--encryption', 'aes-256-gcm'], env)).code, 0);
  assert.is((await hamal(['--config', conf, 'sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], env)).code, 0);
  const out = join(dir, 'keyfile.out');
  assert.is((await hamal(['--config', conf, 'restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', out], env)).code, 0);
  assert.is(await sha256File(out), await sha256File(disk));
  await fsp.writeFile(keyFile, 'short');
  const short = await hamal(['--config', conf, 'versions', '--target', target], env);
  assert.is(short.code, 2);
  assert.match(short.stderr, /repo\.key \(\[hamal\] key_file\) holds 5 bytes; a key file needs at least 16/);
});

test('a flipped byte in an encrypted chunk: verify --deep and restore name the chunk, exit 1', async () => {
  const target = join(dir, 'flip');
  const disk = join(dir, 'flip.img');
  await makeDisk(disk);
  const env = { HAMAL_PASSPHRASE: PASS };
  assert.is((await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm', '--compression', 'zstd'], env)).code, 0);
  assert.is((await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], env)).code, 0);
  const chunk = (await objects(target)).map(([n]) => n).find((n) => n.startsWith('chunks/'))!;
  const bytes = await fsp.readFile(join(target, chunk));
  bytes[bytes.length >> 1]! ^= 0x01;
  await fsp.writeFile(join(target, chunk), bytes);
  const verify = await hamal(['verify', '--target', target, '--deep'], env);
  assert.is(verify.code, 1);
  assert.ok((verify.stdout + verify.stderr).includes(chunk), verify.stdout + verify.stderr);
  assert.match(verify.stdout + verify.stderr, /authentication tag does not match/);
  const restore = await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', join(dir, 'flip.out')], env);
  assert.is(restore.code, 1);
  assert.ok(restore.stderr.includes(chunk), restore.stderr);
});

test('sealed manifests: one altered, moved under another version or put back in the clear is refused, naming it', async () => {
  const target = join(dir, 'sealed');
  const disk = join(dir, 'sealed.img');
  await makeDisk(disk);
  const env = { HAMAL_PASSPHRASE: PASS };
  assert.is((await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm'], env)).code, 0);
  for (const at of [0, 5 * MiB]) {
    await writeAt(disk, at, randomBytes(64));
    assert.is((await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], env)).code, 0);
  }
  const manifests = (await objects(target)).map(([n]) => n).filter((n) => n.includes('/versions/')).sort();
  assert.is(manifests.length, 2);
  const [first, second] = manifests.map((n) => join(target, n)) as [string, string];
  const restoreSecond = () => hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', join(dir, 'sealed.out')], env);
  const original = await fsp.readFile(second);
  // The newest manifest replaced by the older one (a rollback by whoever holds the bucket).
  await fsp.writeFile(second, await fsp.readFile(first));
  let r = await restoreSecond();
  assert.is(r.code, 1);
  assert.ok(r.stderr.includes(manifests[1]!), r.stderr);
  assert.match(r.stderr, /authentication tag does not match/);
  // One flipped byte.
  const flipped = Buffer.from(original);
  flipped[flipped.length - 20]! ^= 0x80;
  await fsp.writeFile(second, flipped);
  r = await restoreSecond();
  assert.is(r.code, 1);
  assert.ok(r.stderr.includes(manifests[1]!), r.stderr);
  // A plain JSON manifest forged by someone without the key.
  await fsp.writeFile(second, JSON.stringify({ format: 1, vm: 'vm', disk: 'd', blocks: [] }));
  r = await restoreSecond();
  assert.is(r.code, 1);
  assert.match(r.stderr, /stored in the clear in an encrypted repository/);
  await fsp.writeFile(second, original);
  r = await restoreSecond();
  assert.is(r.code, 0, r.stderr);
  assert.is(await sha256File(join(dir, 'sealed.out')), await sha256File(disk));
  // A partial index (journal bytes another proxy resumes from) is sealed the same way.
  const repo = await Repository.open(await FsStore.open(target), { secret: async () => ({ passphrase: PASS }) });
  const journal = Buffer.from(`{"vm":"vm","disk":"d","snapshotId":"${MARKER}"}\n`);
  await repo.putPartial('vm', 'd', journal);
  const raw = await fsp.readFile(join(target, 'vms/vm/disks/d/partial'));
  assert.not.ok(raw.includes(MARKER));
  assert.equal(await repo.getPartial('vm', 'd'), journal);
  assert.equal(await repo.partialSnapshotIds('vm'), [MARKER]);
});

test('rotating the passphrase rewrites no chunk (same objects, same ETags on radosgw); only the new passphrase opens the repository', async () => {
  assert.ok(endpoint, 'radosgw is not running: scripts/test starts it');
  const target = `s3://${BUCKET}/${RUN}/rotate?endpoint=${endpoint}`;
  const disk = join(dir, 'rotate.img');
  await makeDisk(disk);
  const old = { HAMAL_PASSPHRASE: PASS, ...s3creds };
  assert.is((await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm'], old)).code, 0);
  assert.is((await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], old)).code, 0);
  const chunksOf = async () => (await objects(target)).map(([n]) => n).filter((n) => n.includes('/chunks/')).sort();
  const before = await chunksOf();
  assert.ok(before.length >= 3);
  const [oldKey] = JSON.parse((await hamal(['key', 'list', '--target', target, '--json'], old)).stdout) as Array<{ id: string }>;
  const newPass = join(dir, 'new-pass');
  await fsp.writeFile(newPass, 'a brand new passphrase\n', { mode: 0o600 });
  const add = await hamal(['key', 'add', '--target', target, '--passphrase-file', newPass], old);
  assert.is(add.code, 0, add.stderr);
  const fresh = { HAMAL_PASSPHRASE: 'a brand new passphrase', ...s3creds };
  const rm = await hamal(['key', 'remove', '--target', target, oldKey!.id], fresh);
  assert.is(rm.code, 0, rm.stderr);
  assert.equal(await chunksOf(), before, 'every chunk untouched (names and ETags)');
  const withOld = await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', join(dir, 'rot-old.out')], old);
  assert.is(withOld.code, 1);
  assert.match(withOld.stderr, /opens with the passphrase given/);
  const withNew = await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', join(dir, 'rot-new.out')], fresh);
  assert.is(withNew.code, 0, withNew.stderr);
  assert.is(await sha256File(join(dir, 'rot-new.out')), await sha256File(disk));
  const last = await hamal(['key', 'remove', '--target', target, (await hamal(['key', 'list', '--target', target, '--json'], fresh)).stdout.match(/"id": "(\w+)"/)![1]!], fresh);
  assert.is(last.code, 2, 'the last key cannot go');
});

test('under Deno too: an encrypted, compressed repository made by Node restores byte-exact, and Deno syncs into it', async () => {
  const target = join(dir, 'deno');
  const disk = join(dir, 'deno.img');
  await makeDisk(disk);
  const env = { ...process.env, HAMAL_PASSPHRASE: PASS, HAMAL_CONFIG: '' };
  assert.is((await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm', '--compression', 'zstd'], env)).code, 0);
  assert.is((await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], env)).code, 0);
  const deno = (args: string[]) =>
    new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(join(REPO, 'node_modules/.bin/deno'), ['run', '--allow-all', join(REPO, 'src/cli/hamal.ts'), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      child.on('close', (code) => resolve({ code, out }));
    });
  const out = join(dir, 'deno.out');
  const r = await deno(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', out]);
  assert.is(r.code, 0, r.out);
  assert.is(await sha256File(out), await sha256File(disk));
  await writeAt(disk, 3 * MiB, Buffer.from(`${MARKER} written for Deno`));
  const s = await deno(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target]);
  assert.is(s.code, 0, s.out);
  const back = join(dir, 'deno2.out');
  assert.is((await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', back], env)).code, 0);
  assert.is(await sha256File(back), await sha256File(disk));
});

test.run();
