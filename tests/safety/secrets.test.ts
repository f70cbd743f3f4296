// Secrets stay where they belong: child processes get an allow-listed environment, a
// hamal.conf syntax error never shows the line, secret files others can read are named,
// and a new key needs a passphrase of MIN_PASSPHRASE_CHARS. Secrets from
// tests/fixtures/secrets.txt, so the suite's grep of all output would catch a leak too.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from '../helpers/disks.ts';
import { NbdServerProcess } from '../../src/sources/nbd/NbdServerProcess.ts';
import { Rbd } from '../../src/ceph/Rbd.ts';
import { FsStore } from '../../src/sinks/fs/FsStore.ts';
import { Repository } from '../../src/repo/Repository.ts';
import { MIN_PASSPHRASE_CHARS } from '../../src/config/repositorySecret.ts';

const PASS = 'correct horse battery staple 42';
const NEW_PASS = 'a brand new passphrase';
const AWS_SECRET = 's3cr3t-Pa55word-for-tests';
const AWS_TOKEN = '315d65ca-ef28-4e63-ad72-1260a91adf23';
const AUTH_KEY = 'ab#cd-auth-key-for-tests';
/** What a proxy's environment holds besides what programs need. */
const SECRET_ENV = {
  HAMAL_PASSPHRASE: PASS,
  HAMAL_NEW_PASSPHRASE: NEW_PASS,
  AWS_SECRET_ACCESS_KEY: AWS_SECRET,
  AWS_SESSION_TOKEN: AWS_TOKEN,
  AWS_ACCESS_KEY_ID: 'AKIAHAMALTESTKEYID',
  CEPH_ARGS: '--id admin',
  LISTEN_FDS: '3',
};

/** A fake program that writes its environment to `<itself>.env` and fails (callers fall back or report). */
async function fakeProgram(bin: string, name: string, output = ''): Promise<string> {
  const path = join(bin, name);
  await fsp.mkdir(bin, { recursive: true });
  await fsp.writeFile(path, `#!/bin/sh\nenv > "$0.env"\n${output ? `echo '${output}'\nexit 0` : 'exit 1'}\n`, { mode: 0o755 });
  return path;
}

/** The environment a fake program saw, as a map; checks that no secret value (anywhere) and none of SECRET_ENV's names is in it. */
async function seenEnv(program: string): Promise<Map<string, string>> {
  const text = await fsp.readFile(`${program}.env`, 'utf8');
  // Messages name the variable, never the value (the suite greps all output).
  for (const [name, value] of Object.entries(SECRET_ENV)) if (value.length >= 12) assert.ok(!text.includes(value), `${name}'s value reached ${program}`);
  const env = new Map(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as [string, string]));
  for (const name of Object.keys(SECRET_ENV)) assert.not.ok(env.has(name), `${name} reached ${program}`);
  return env;
}

/** Whether `text` shows any 8 characters of `secret` in a row, in any case (a cut or lower-cased secret is still a leak). */
function showsPart(text: string, secret: string): boolean {
  const t = text.toLowerCase();
  const s = secret.toLowerCase();
  for (let i = 0; i + 8 <= s.length; i++) if (t.includes(s.slice(i, i + 8))) return true;
  return false;
}

/** Runs `fn` with extra variables in this process's environment (what NbdServerProcess and Rbd read). */
async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

test('qemu-img, run by a real sync into an encrypted repository, sees PATH and the locale, never the passphrase or AWS secrets', async () => {
  const dir = await tempDir();
  try {
    const qemuImg = await fakeProgram(join(dir, 'bin'), 'qemu-img');
    const disk = join(dir, 'disk.img');
    await makeImage(disk, 4 * MiB, [[MiB, pattern(64 * 1024, 1)]]);
    const target = join(dir, 'repo');
    const env = { ...SECRET_ENV, PATH: `${join(dir, 'bin')}:${process.env.PATH}`, LANG: 'C.UTF-8', HAMAL_TEST_UNLISTED: 'not for children' };
    const init = await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm'], env);
    assert.is(init.code, 0, init.stderr);
    const sync = await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', target], env);
    assert.is(sync.code, 0, sync.stderr);
    const seen = await seenEnv(qemuImg);
    assert.is(seen.get('PATH'), env.PATH);
    assert.is(seen.get('LANG'), 'C.UTF-8');
    assert.not.ok(seen.has('HAMAL_TEST_UNLISTED'), 'a variable off the allow-list reached qemu-img');
    // qemu-img failed: the sync read the whole image instead, and it restores.
    const out = join(dir, 'out.img');
    assert.is((await hamal(['restore', '--target', target, '--vm', 'vm', '--disk', 'd', '--out', out], env)).code, 0);
    assert.is(await sha256File(out), await sha256File(disk));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('NbdServerProcess.start: nbdkit and qemu-nbd get the allow-list; nbdkit also LD_LIBRARY_PATH (VDDK), qemu-nbd not', async () => {
  const dir = await tempDir();
  try {
    const vddk = '/opt/vmware-vix-disklib-distrib/lib64';
    await withEnv({ ...SECRET_ENV, LD_LIBRARY_PATH: vddk }, async () => {
      for (const name of ['nbdkit', 'qemu-nbd']) {
        const program = await fakeProgram(join(dir, 'bin'), name);
        const work = await NbdServerProcess.privateDir(dir, name);
        const started = await NbdServerProcess.start([program, '--readonly'], work, join(work, 'nbd.sock'), `disk of ${name}`, MiB).then(
          () => assert.unreachable('the fake server serves nothing'),
          (err: { code?: string }) => err.code,
        );
        assert.is(started, 'NBD_SERVER_FAILED');
        const seen = await seenEnv(program);
        assert.is(seen.get('PATH'), process.env.PATH);
        assert.is(seen.get('LD_LIBRARY_PATH'), name === 'nbdkit' ? vddk : undefined, name);
      }
    });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('rbd gets the allow-list: conf, user and keyring are arguments, CEPH_ARGS is not passed', async () => {
  const dir = await tempDir();
  try {
    const rbd = await fakeProgram(join(dir, 'bin'), 'rbd', 'rbd output');
    const out = await withEnv({ ...SECRET_ENV, PATH: `${join(dir, 'bin')}:${process.env.PATH}` }, () =>
      new Rbd({ conf: join(dir, 'ceph.conf'), user: 'hamal', keyring: join(dir, 'keyring') }).run(['--version'], 'rbd version'),
    );
    assert.is(out.trim(), 'rbd output');
    assert.ok((await seenEnv(rbd)).has('PATH'));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("doctor's tool probes (qemu-img, nbdkit, rbd, qemu-nbd) get the allow-list", async () => {
  const dir = await tempDir();
  try {
    const bin = join(dir, 'bin');
    const tools = await Promise.all(['qemu-img', 'nbdkit', 'rbd', 'qemu-nbd'].map((t) => fakeProgram(bin, t, `${t} fake 1.0`)));
    const r = await hamal(['doctor', '--json'], { ...SECRET_ENV, PATH: `${bin}:${process.env.PATH}` });
    const checks = JSON.parse(r.stdout) as Array<{ what: string; detail: string }>;
    assert.match(checks.find((c) => c.what === 'qemu-img')!.detail, 'qemu-img fake 1.0');
    for (const t of tools) assert.ok((await seenEnv(t)).has('PATH'), t);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a hamal.conf syntax error names file, line and key, never any part of the line (exit 2)', async () => {
  const dir = await tempDir();
  // [text, line, key named (or null), the secret in it]
  const cases: Array<[string, number, string | null, string]> = [
    [`[s3]\nsecret_access_key  ${AWS_SECRET}\n`, 2, 'secret_access_key', AWS_SECRET],
    [`[mass]\nauth_key ${AUTH_KEY}\n`, 2, 'auth_key', AUTH_KEY],
    // A value with "=" in it and the key's "=" missing: once a key "secret_access_key s3cr3t...".
    [`[s3]\nsecret_access_key ${AWS_SECRET}=\n`, 2, 'secret_access_key', AWS_SECRET],
    // Indented by mistake: once the continuation of endpoint, printed by its bad-value error.
    [`[s3]\nendpoint = http://rgw.local:7480\n    secret_access_key = ${AWS_SECRET}\n`, 3, 'secret_access_key', AWS_SECRET],
    [`[s3]\nsession_token = \n\n  ${AWS_TOKEN}\n`, 4, null, AWS_TOKEN],
    [`[s3]\n${AWS_SECRET}\n`, 2, null, AWS_SECRET],
    [`[mass]\n= ${AUTH_KEY}\n`, 2, null, AUTH_KEY],
    // A secret alone on an indented line below a URL: the URL parser drops the newline.
    [`[s3]\nendpoint = http://rgw.local:7480\n    ${AWS_SECRET}\n`, 2, 'endpoint', AWS_SECRET],
  ];
  try {
    for (const [i, [text, line, key, secret]] of cases.entries()) {
      const file = join(dir, `syntax${i}.conf`);
      await fsp.writeFile(file, text, { mode: 0o600 });
      const r = await hamal(['config', 'check', '--config', file]);
      assert.is(r.code, 2, `case ${i}: exit ${r.code}`);
      assert.not.ok(showsPart(r.stdout + r.stderr, secret), `case ${i}: part of the secret was printed`);
      assert.ok(r.stderr.includes(`${file}, line ${line}: `), `case ${i}: ${r.stderr}`);
      if (key) assert.ok(r.stderr.includes(key), `case ${i}: ${r.stderr}`);
      assert.is(r.stderr.trim().split('\n').length, 1, `case ${i}: ${r.stderr}`);
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a passphrase_file or key_file group or others can read: a warning naming the file and the fix, never the secret', async () => {
  const dir = await tempDir();
  try {
    const passFile = join(dir, 'passphrase');
    await fsp.writeFile(passFile, PASS + '\n');
    await fsp.chmod(passFile, 0o644);
    const conf = join(dir, 'hamal.conf');
    await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[hamal]\npassphrase_file = ${passFile}\n`, { mode: 0o600 });
    const env = { HAMAL_PASSPHRASE: '' };
    const target = join(dir, 'repo');
    const init = await hamal(['--config', conf, 'init', '--target', target, '--encryption', 'aes-256-gcm'], env);
    assert.is(init.code, 0, init.stderr);
    assert.ok(init.stderr.includes(`${passFile} ([hamal] passphrase_file) is readable by group or others (mode 644): chmod 600 ${passFile}`), init.stderr);
    assert.not.ok((init.stdout + init.stderr).includes(PASS));
    assert.is(init.stderr.match(/readable by group or others/g)!.length, 1, 'one warning');
    await fsp.chmod(passFile, 0o600);
    const quiet = await hamal(['--config', conf, 'versions', '--target', target], env);
    assert.is(quiet.code, 0, quiet.stderr);
    assert.not.match(quiet.stderr, 'readable by group or others');

    const keyFile = join(dir, 'repo.key');
    await fsp.writeFile(keyFile, pattern(32, 7));
    await fsp.chmod(keyFile, 0o640);
    const keyConf = join(dir, 'key.conf');
    await fsp.writeFile(keyConf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[hamal]\nkey_file = ${keyFile}\n`, { mode: 0o600 });
    const keyed = await hamal(['--config', keyConf, 'init', '--target', join(dir, 'keyed'), '--encryption', 'aes-256-gcm'], env);
    assert.is(keyed.code, 0, keyed.stderr);
    assert.ok(keyed.stderr.includes(`${keyFile} ([hamal] key_file) is readable by group or others (mode 640): chmod 600 ${keyFile}`), keyed.stderr);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test(`a passphrase shorter than ${MIN_PASSPHRASE_CHARS} characters (code points after NFC) is refused at init and key add, naming its source; one made before still opens`, async () => {
  const dir = await tempDir();
  const short = 'tiny-pass10';
  try {
    const noConfig = async (target: string) => assert.not.ok(await fsp.stat(join(target, 'config')).then(() => true, () => false), `${target} holds a repository`);
    // HAMAL_PASSPHRASE: too short; 11 emoji are 22 UTF-16 units but 11 characters; six
    // decomposed "é" are 12 code points but 6 after NFC.
    for (const [i, pass] of [short, '\u{1F511}'.repeat(11), 'e\u0301'.repeat(6)].entries()) {
      const target = join(dir, `short${i}`);
      const r = await hamal(['init', '--target', target, '--encryption', 'aes-256-gcm'], { HAMAL_PASSPHRASE: pass });
      assert.is(r.code, 2, `case ${i}: exit ${r.code}`);
      assert.match(r.stderr, `the passphrase from HAMAL_PASSPHRASE is shorter than ${MIN_PASSPHRASE_CHARS} characters`);
      assert.not.ok((r.stdout + r.stderr).includes(pass), `case ${i}: the passphrase was printed`);
      await noConfig(target);
    }
    const twelve = await hamal(['init', '--target', join(dir, 'emoji'), '--encryption', 'aes-256-gcm'], { HAMAL_PASSPHRASE: '\u{1F511}'.repeat(12) });
    assert.is(twelve.code, 0, twelve.stderr);

    // From [hamal] passphrase_file: the file is named.
    const passFile = join(dir, 'short.pass');
    await fsp.writeFile(passFile, short + '\n', { mode: 0o600 });
    const conf = join(dir, 'hamal.conf');
    await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[hamal]\npassphrase_file = ${passFile}\n`, { mode: 0o600 });
    const fromFile = await hamal(['--config', conf, 'init', '--target', join(dir, 'file'), '--encryption', 'aes-256-gcm'], { HAMAL_PASSPHRASE: '' });
    assert.is(fromFile.code, 2);
    assert.match(fromFile.stderr, `the passphrase from ${passFile} ([hamal] passphrase_file) is shorter than ${MIN_PASSPHRASE_CHARS} characters`);
    assert.not.ok((fromFile.stdout + fromFile.stderr).includes(short));

    // A repository made before the minimum, with a short passphrase: it opens, syncs, and
    // its key can be rotated to a long one, never to another short one.
    const old = join(dir, 'old');
    const store = await FsStore.open(old, { create: true });
    await Repository.open(store, { create: true, encryption: 'aes-256-gcm', secret: async () => ({ passphrase: short }) });
    await store.close();
    const disk = join(dir, 'disk.img');
    await makeImage(disk, 2 * MiB, [[0, pattern(4096, 3)]]);
    const env = { HAMAL_PASSPHRASE: short };
    const sync = await hamal(['sync', '--vm', 'vm', '--disk', `d=${disk}`, '--target', old], env);
    assert.is(sync.code, 0, sync.stderr);
    const newShort = await hamal(['key', 'add', '--target', old], { ...env, HAMAL_NEW_PASSPHRASE: 'also-short' });
    assert.is(newShort.code, 2);
    assert.match(newShort.stderr, `the passphrase from HAMAL_NEW_PASSPHRASE is shorter than ${MIN_PASSPHRASE_CHARS} characters`);
    assert.not.ok((newShort.stdout + newShort.stderr).includes('also-short'));
    const shortFile = await hamal(['key', 'add', '--target', old, '--passphrase-file', passFile], env);
    assert.is(shortFile.code, 2);
    assert.match(shortFile.stderr, `the passphrase from ${passFile} (--passphrase-file) is shorter than ${MIN_PASSPHRASE_CHARS} characters`);
    const added = await hamal(['key', 'add', '--target', old], { ...env, HAMAL_NEW_PASSPHRASE: NEW_PASS });
    assert.is(added.code, 0, added.stderr);
    const keys = await hamal(['key', 'list', '--target', old, '--json'], { HAMAL_PASSPHRASE: NEW_PASS });
    assert.is(keys.code, 0, keys.stderr);
    assert.is((JSON.parse(keys.stdout) as unknown[]).length, 2);
    for (const r of [sync, newShort, shortFile, added, keys]) assert.not.ok((r.stdout + r.stderr).includes(short));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test.run();
