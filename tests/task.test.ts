import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseTask } from '../src/tasks/loadTask.ts';
import { TASK_SCHEMA } from '../src/tasks/taskSchema.ts';
import { hamal } from './helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { REPO_ROOT } from './helpers/repoRoot.ts';

const root = REPO_ROOT;
const local = (extra: object = {}) => ({ version: 1, source: { platform: 'local', vm: 'web', disks: [{ path: '/x.img' }] }, ...extra });
const fails = (task: unknown, field: RegExp) => {
  try {
    parseTask(JSON.stringify(task), 't.json');
    assert.unreachable(`accepted ${JSON.stringify(task)}`);
  } catch (err) {
    assert.match((err as Error).message, /^task file t\.json: /);
    assert.match((err as Error).message, field);
    assert.is((err as { exitCode: number }).exitCode, 2);
  }
};

test('a valid local task loads', () => {
  const t = parseTask(JSON.stringify(local({ target: 'file:///b', options: { readers: 3 } })), 't.json');
  assert.is(t.source.vm, 'web');
  assert.is(t.options?.readers, 3);
});

test('a missing field is named', () => {
  fails({ version: 1, source: { platform: 'local', disks: [{ path: '/x' }] } }, /source\.vm: is required/);
  fails({ version: 1, source: { platform: 'local', vm: 'a' } }, /source\.disks: is required/);
  fails({ version: 1, source: { platform: 'local', vm: 'a', disks: [{ id: 'x' }] } }, /source\.disks\.0\.path: is required/);
  fails({ version: 1, source: { platform: 'vmware', vm: 'a', connection: { host: 'h' } } }, /source\.connection\.username: is required/);
  fails({ version: 1, source: { platform: 'vmware', vm: 'a', connection: { host: 'h', username: 'u' } } }, /source\.connection: needs exactly one of password, passwordFile, passwordEnv/);
});

test('a wrong type is named', () => {
  fails(local({ options: { readers: '2' } }), /options\.readers: must be integer/);
  fails(local({ target: 5 }), /target: must be string/);
  fails({ version: 2, source: local().source }, /version: must be 1/);
});

test('an unknown platform is named with what is allowed', () => {
  fails({ version: 1, source: { platform: 'hyperv', vm: 'a' } }, /source\.platform: must be one of local, vmware, openstack_ceph, fusion_compute, libvirt \(got "hyperv"\)/);
});

test('a libvirt task: a URI, no secret or one, never two', () => {
  const conn = (c: Record<string, unknown>) => ({ version: 1, source: { platform: 'libvirt', vm: 'web', connection: { uri: 'qemu:///system', ...c } } });
  assert.is(parseTask(JSON.stringify(conn({})), 't.json').source.platform, 'libvirt');
  fails(conn({ password: 'a', passwordEnv: 'B' }), /source\.connection: takes at most one of password, passwordFile, passwordEnv/);
  fails({ version: 1, source: { platform: 'libvirt', vm: 'web', connection: {} } }, /source\.connection\.uri: is required/);
});

test('an unknown field is named', () => {
  fails(local({ retention: 'daily' }), /retention: is not a known field/);
});

test('a schedule is {every} or {cron}, and says so when it is neither', () => {
  fails(local({ schedule: 'daily' }), /schedule: must be \{"every": seconds\} or \{"cron": "expression"\}$/);
  fails(local({ schedule: { every: 0 } }), /schedule: must be/);
  assert.equal(parseTask(JSON.stringify(local({ schedule: { cron: '0 2 * * *' } })), 't.json').schedule, { cron: '0 2 * * *' });
});

test('invalid JSON names the file', () => {
  assert.throws(() => parseTask('{"version": 1,', 'bad.json'), /task file bad\.json is not valid JSON/);
});

test('a task password never appears in the error', () => {
  try {
    parseTask(JSON.stringify({ version: 1, source: { platform: 'vmware', vm: 'a', connection: { host: 'h', username: 'u', password: 's3cr3t-Pa55word-for-tests', port: 'x' } } }), 't.json');
    assert.unreachable();
  } catch (err) {
    assert.match((err as Error).message, /source\.connection\.port: must be integer/);
    assert.not.match((err as Error).message, 's3cr3t');
  }
});

test('docs/task.schema.json is what src/tasks/taskSchema.ts generates (npm run docs)', () => {
  assert.equal(JSON.parse(readFileSync(join(root, 'docs/task.schema.json'), 'utf8')), TASK_SCHEMA);
});

test('hamal sync --task runs a local task; a bad task file exits 2 naming the field', async () => {
  const dir = await tempDir();
  const img = join(dir, 'root.img');
  await makeImage(img, 9 * MiB, [[MiB, pattern(3 * MiB, 1)]]);
  const task = join(dir, 'task.json');
  await fsp.writeFile(task, JSON.stringify({ version: 1, source: { platform: 'local', vm: 'web', disks: [{ id: 'root', path: img }] }, target: `file://${dir}/repo` }));
  const ok = await hamal(['sync', '--task', task, '--json']);
  assert.is(ok.code, 0, ok.stderr);
  const summary = JSON.parse(ok.stdout);
  assert.is(summary.disks[0].disk, 'root');
  assert.is(summary.disks[0].storedBytes, 4 * MiB);
  const out = join(dir, 'out.img');
  const r = await hamal(['restore', '--target', `${dir}/repo`, '--vm', 'web', '--disk', 'root', '--out', out]);
  assert.is(r.code, 0, r.stderr);
  assert.is(await sha256File(out), await sha256File(img));

  await fsp.writeFile(task, JSON.stringify({ version: 1, source: { platform: 'local', vm: 'web', disks: [{ id: 'root' }] } }));
  const bad = await hamal(['sync', '--task', task]);
  assert.is(bad.code, 2);
  assert.match(bad.stderr, 'source.disks.0.path: is required');

  await fsp.writeFile(task, JSON.stringify({ version: 1, source: { platform: 'fusion_compute', vm: 'w', connection: { url: 'https://fc', username: 'u', passwordEnv: 'X', thumbprint: 'AA:BB' } }, target: dir }));
  const fc = await hamal(['sync', '--task', task]);
  assert.is(fc.code, 2);
  assert.match(fc.stderr, 'source.connection.thumbprint is not supported for FusionCompute yet; give caFile');

  await fsp.writeFile(task, JSON.stringify({ version: 1, source: { platform: 'vmware', vm: 'w', connection: { host: 'h', username: 'u', passwordEnv: 'HAMAL_NO_SUCH_VARIABLE' } }, target: dir }));
  const vmw = await hamal(['sync', '--task', task]);
  assert.is(vmw.code, 2);
  assert.match(vmw.stderr, 'environment variable HAMAL_NO_SUCH_VARIABLE (source.connection.passwordEnv) is not set');
  await fsp.rm(dir, { recursive: true });
});

test.run();
