// Data safety [11] item 9: once a repository has keys, its config is authenticated with
// the master key. Switching encryption off (or the block size, or the format) by editing
// `config` makes every command refuse the repository, naming `config`, and writes nothing;
// a plain repository is refused when hamal.conf asks for encryption.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { TEST_CONFIG, hamal } from '../helpers/cli.ts';
import { makeImage, pattern, tempDir } from '../helpers/disks.ts';

const PASS = 'correct horse battery staple 42';
const env = { HAMAL_PASSPHRASE: PASS };

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) out.push(join(e.parentPath, e.name));
  return out.sort();
}

async function encryptedRepository() {
  const dir = await tempDir();
  const image = join(dir, 'd.img');
  await makeImage(image, 512 * 1024, [[0, pattern(512 * 1024, 7)]]);
  const repo = join(dir, 'repo');
  assert.is((await hamal(['init', '--target', repo, '--encryption', 'aes-256-gcm'], env)).code, 0);
  const first = await hamal(['sync', '--vm', 'v', '--disk', `d=${image}`, '--target', repo, '--block-size', '65536'], env);
  assert.is(first.code, 0, first.stderr);
  // The disk changes: a sync that went ahead would store new chunks.
  await fsp.writeFile(image, pattern(512 * 1024, 8));
  return { dir, image, repo };
}

const edits: Array<[string, (c: Record<string, unknown>) => void]> = [
  ['encryption switched off', (c) => Object.assign(c, { encryption: 'none', chunkNames: 'sha256', documents: undefined })],
  ['made a format 1 repository', (c) => {
    for (const k of ['chunkNames', 'encryption', 'compression', 'documents', 'mac']) delete c[k];
    c.format = 1;
  }],
  ['compression switched on', (c) => Object.assign(c, { compression: 'zstd' })],
  ['MAC removed', (c) => delete c.mac],
];

for (const [what, edit] of edits) {
  test(`an encrypted repository whose config was edited (${what}) is refused naming config; nothing is written`, async () => {
    const { dir, image, repo } = await encryptedRepository();
    const config = JSON.parse(await fsp.readFile(join(repo, 'config'), 'utf8'));
    edit(config);
    await fsp.writeFile(join(repo, 'config'), JSON.stringify(config));
    const before = await filesUnder(repo);
    for (const args of [
      ['sync', '--vm', 'v', '--disk', `d=${image}`, '--target', repo],
      ['verify', '--target', repo],
      ['restore', '--target', repo, '--vm', 'v', '--disk', 'd', '--out', join(dir, 'out.img')],
    ]) {
      const r = await hamal(args, env);
      assert.is(r.code, 1, `${args[0]}: ${r.stderr}`);
      assert.ok(r.stderr.includes(`repository config at file://${repo} does not match its MAC`) || r.stderr.includes(`repository config at file://${repo} has no MAC`), r.stderr);
    }
    assert.equal(await filesUnder(repo), before, 'nothing written');
    await fsp.rm(dir, { recursive: true });
  });
}

test('a config without a MAC (an encrypted repository created before config MACs) opens again after hamal key seal-config', async () => {
  const { dir, image, repo } = await encryptedRepository();
  const config = JSON.parse(await fsp.readFile(join(repo, 'config'), 'utf8'));
  delete config.mac;
  await fsp.writeFile(join(repo, 'config'), JSON.stringify(config));
  const refused = await hamal(['sync', '--vm', 'v', '--disk', `d=${image}`, '--target', repo], env);
  assert.is(refused.code, 1);
  assert.match(refused.stderr, `run hamal key seal-config --target file://${repo}`);
  const sealed = await hamal(['key', 'seal-config', '--target', repo], env);
  assert.is(sealed.code, 0, sealed.stderr);
  assert.is((await hamal(['key', 'seal-config', '--target', repo], env)).code, 2, 'a second seal is refused');
  const again = await hamal(['sync', '--vm', 'v', '--disk', `d=${image}`, '--target', repo], env);
  assert.is(again.code, 0, again.stderr);
  // Sealed now: switching encryption off is refused again.
  const c = JSON.parse(await fsp.readFile(join(repo, 'config'), 'utf8'));
  await fsp.writeFile(join(repo, 'config'), JSON.stringify({ ...c, encryption: 'none', chunkNames: 'sha256', documents: undefined }));
  assert.is((await hamal(['verify', '--target', repo], env)).code, 1);
  await fsp.rm(dir, { recursive: true });
});

test('two first syncs at once into a new encrypted target: one repository, one key, both versions restorable', async () => {
  const dir = await tempDir();
  const conf = join(dir, 'enc.conf');
  await fsp.writeFile(conf, (await fsp.readFile(TEST_CONFIG, 'utf8')) + '[hamal]\nencryption = aes-256-gcm\n');
  const repo = join(dir, 'repo');
  const images = ['a', 'b'].map((n) => join(dir, `${n}.img`));
  await Promise.all(images.map((p, i) => makeImage(p, 256 * 1024, [[0, pattern(256 * 1024, 20 + i)]])));
  const runs = await Promise.all(['a', 'b'].map((vm, i) => hamal(['sync', '--config', conf, '--vm', vm, '--disk', `d=${images[i]}`, '--target', repo], env)));
  for (const r of runs) assert.is(r.code, 0, r.stderr);
  assert.is((await fsp.readdir(join(repo, 'keys'))).length, 1, 'the loser removed its key');
  for (const [i, vm] of ['a', 'b'].entries()) {
    const out = join(dir, `${vm}.out`);
    const r = await hamal(['restore', '--target', repo, '--vm', vm, '--disk', 'd', '--out', out], env);
    assert.is(r.code, 0, r.stderr);
    assert.ok((await fsp.readFile(out)).equals(await fsp.readFile(images[i]!)));
  }
  await fsp.rm(dir, { recursive: true });
});

test('keys deleted and the config rewritten as plain: refused when hamal.conf asks for encryption', async () => {
  const { dir, image, repo } = await encryptedRepository();
  await fsp.rm(join(repo, 'keys'), { recursive: true });
  const config = JSON.parse(await fsp.readFile(join(repo, 'config'), 'utf8'));
  await fsp.writeFile(join(repo, 'config'), JSON.stringify({ format: 1, kind: config.kind, id: config.id, blockSize: config.blockSize, hash: 'sha256', createdAt: config.createdAt }));
  const conf = join(dir, 'enc.conf');
  await fsp.writeFile(conf, (await fsp.readFile(TEST_CONFIG, 'utf8')) + '[hamal]\nencryption = aes-256-gcm\n');
  const before = await filesUnder(repo);
  const r = await hamal(['sync', '--config', conf, '--vm', 'v', '--disk', `d=${image}`, '--target', repo], env);
  assert.is(r.code, 2, r.stderr);
  assert.match(r.stderr, `the repository at file://${repo} is not encrypted, but [hamal] encryption asks for encryption`);
  assert.equal(await filesUnder(repo), before, 'nothing written');
  await fsp.rm(dir, { recursive: true });
});

test('a first sync creating an encrypted repository refuses a passphrase below the minimum', async () => {
  const dir = await tempDir();
  const image = join(dir, 'd.img');
  await makeImage(image, 65536, [[0, pattern(65536, 1)]]);
  const conf = join(dir, 'enc.conf');
  await fsp.writeFile(conf, (await fsp.readFile(TEST_CONFIG, 'utf8')) + '[hamal]\nencryption = aes-256-gcm\n');
  const r = await hamal(['sync', '--config', conf, '--vm', 'v', '--disk', `d=${image}`, '--target', join(dir, 'repo')], { HAMAL_PASSPHRASE: 'short-pass' });
  assert.is(r.code, 2, r.stderr);
  assert.match(r.stderr, /HAMAL_PASSPHRASE/);
  assert.match(r.stderr, /12/);
  await fsp.rm(dir, { recursive: true });
});

test.run();
