// The container image, built and run for real without a Docker engine: buildah builds the
// Dockerfile (its FROM images made locally by tests/container/base-images.sh, since no
// registry is reachable), podman runs it with runc. --version, a sync and a restore through
// mounted volumes, `serve` with a task file until `hamal health` passes inside it, SIGTERM.
// And the first start on an empty /etc/hamal volume (the image sets $HAMAL_CONFIG), first
// in-process against loadConfig, then in the image. Skips with one line only where podman
// cannot run at all. Containers, the image built and temp folders are removed, also after a
// failure, and so are the images the build made; the base images stay for the rest of the run.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/config/loadConfig.ts';
import { allOutput, hamal } from './helpers/cli.ts';
import { MiB, makeImage, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { VERSION } from '../src/version.ts';

const REPO = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const SAMPLE = join(REPO, 'deploy/hamal.conf.sample');
const IMAGE = `localhost/hamal-test-${process.pid}:${VERSION}`;
const PREFIX = `hamal-test-${process.pid}`;
// crun fails here on hybrid cgroups and setrlimit: runc, and limits given explicitly.
const RUN = ['--runtime', 'runc', '--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768'];
const ENV = { ...process.env, BUILDAH_ISOLATION: 'chroot' };

interface Out {
  code: number;
  out: string;
  err: string;
}

function exec(cmd: string, args: string[], timeoutMs = 120_000): Promise<Out> {
  return new Promise((resolveRun) => {
    execFile(cmd, args, { env: ENV, cwd: REPO, timeout: timeoutMs, maxBuffer: 64 * MiB, killSignal: 'SIGKILL' }, (err, out, errOut) => {
      allOutput.push(out, errOut);
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
      resolveRun({ code, out, err: errOut + (err && code === -1 ? `\n${cmd} ${args[0]}: ${err.message}` : '') });
    });
  });
}
const podman = (args: string[], timeoutMs?: number) => exec('podman', args, timeoutMs);
const runIn = (volumes: string[], args: string[], extra: string[] = []) => podman(['run', '--rm', ...RUN, ...volumes.flatMap((v) => ['-v', v]), ...extra, IMAGE, ...args]);
const show = (r: Out) => `exit ${r.code}\n${r.out}\n${r.err}`.slice(-4000);

/** Why podman cannot run here, or null. */
function cannotRun(): string | null {
  for (const cmd of ['podman', 'buildah']) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) return `${cmd} is not installed (scripts/test installs it)`;
  }
  const info = spawnSync('podman', ['info', '--format', '{{.Store.GraphDriverName}}'], { encoding: 'utf8' });
  if (info.status !== 0) return `podman info failed: ${(info.stderr || '').trim().split('\n').pop()}`;
  return null;
}
const skip = cannotRun();

const containers: string[] = [];
let imageBuilt = false;
/** Every image (with the intermediate ones of --layers) there before the build. */
let imagesBefore: Set<string> | null = null;
const imageIds = () => new Set(spawnSync('podman', ['images', '--all', '--quiet', '--no-trunc'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean));
function removeAll() {
  for (const name of containers.splice(0)) spawnSync('podman', ['rm', '--force', '--time', '0', name], { stdio: 'ignore' });
  if (imageBuilt) spawnSync('podman', ['rmi', '--force', IMAGE], { stdio: 'ignore' });
  imageBuilt = false;
  // What the build made (its layers, the build stage): the suite builds once per run, so a
  // cache kept past it would only grow. The base images stay for the rest of the run.
  if (imagesBefore) {
    const made = [...imageIds()].filter((id) => !imagesBefore!.has(id));
    if (made.length) spawnSync('podman', ['rmi', '--force', ...made], { stdio: 'ignore' });
  }
  imagesBefore = null;
}
// Also when a test throws or the run is interrupted; temp folders go with tempDir's own hook.
process.on('exit', removeAll);

const HAMAL_CONFIG = process.env.HAMAL_CONFIG;
function withEnvConfig<T>(value: string | undefined, fn: () => Promise<T>): Promise<T> {
  if (value === undefined) delete process.env.HAMAL_CONFIG;
  else process.env.HAMAL_CONFIG = value;
  return fn().finally(() => {
    if (HAMAL_CONFIG === undefined) delete process.env.HAMAL_CONFIG;
    else process.env.HAMAL_CONFIG = HAMAL_CONFIG;
  });
}
async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected an error, got none');
}

test('first start: a missing file at $HAMAL_CONFIG gets the sample (0600, named in a warning), nothing is overwritten', async () => {
  const dir = await tempDir();
  const file = join(dir, 'hamal.conf');
  const loaded = await withEnvConfig(file, () => loadConfig(undefined, SAMPLE));
  assert.is(loaded.file, file);
  assert.is(await fsp.readFile(file, 'utf8'), await fsp.readFile(SAMPLE, 'utf8'));
  assert.is((await fsp.stat(file)).mode & 0o777, 0o600);
  assert.match(loaded.warnings[0] ?? '', `first start: ${file} did not exist, so the sample ${SAMPLE} was copied there`);
  assert.is(loaded.values.hamal.tasks_dir, '/etc/hamal/tasks.d');
  // Second start: the operator's edit is read as it is, no warning.
  await fsp.writeFile(file, '[period]\ninterval = 7\n', { mode: 0o600 });
  const again = await withEnvConfig(file, () => loadConfig(undefined, SAMPLE));
  assert.is(again.values.period.interval, 7);
  assert.equal(again.warnings, []);
});

test('first start without a sample: built-in defaults and a warning naming the file; --config missing is still an error', async () => {
  const dir = await tempDir();
  const file = join(dir, 'hamal.conf');
  const loaded = await withEnvConfig(file, () => loadConfig(undefined, join(dir, 'no-sample')));
  assert.is(loaded.file, null);
  assert.match(loaded.warnings.join('\n'), `no config file ${file} ($HAMAL_CONFIG): running on the built-in defaults`);
  assert.not.ok(existsSync(file));
  // An explicit --config never gets a sample, whatever $HAMAL_CONFIG says.
  const err = await rejection(withEnvConfig(undefined, () => loadConfig(file, SAMPLE)));
  assert.match(err.message, `cannot read config file ${file}: ENOENT`);
  assert.not.ok(existsSync(file), '--config: nothing written');
  const cli = await hamal(['config', 'check', '--config', file]);
  assert.is(cli.code, 2, cli.stderr);
  assert.match(cli.stderr, `cannot read config file ${file}: ENOENT`);
});

test('first start is only for nothing at the path: a dangling symlink, a directory, an unreadable file fail naming it', async () => {
  const dir = await tempDir();
  const link = join(dir, 'hamal.conf');
  await fsp.symlink(join(dir, 'elsewhere.conf'), link);
  const dangling = await rejection(withEnvConfig(link, () => loadConfig(undefined, SAMPLE)));
  assert.match(dangling.message, `cannot read config file ${link}: ENOENT`);
  assert.not.ok(existsSync(join(dir, 'elsewhere.conf')), 'the sample is not written through the symlink');
  const isDir = await rejection(withEnvConfig(dir, () => loadConfig(undefined, SAMPLE)));
  assert.match(isDir.message, `cannot read config file ${dir}: EISDIR`);
  // Unreadable: root reads anything, so as nobody, through the real CLI.
  const closed = join(dir, 'closed.conf');
  await fsp.writeFile(closed, '[period]\ninterval = 7\n', { mode: 0o600 });
  await fsp.chmod(dir, 0o755);
  const r = await hamal(['config', 'check'], { HAMAL_CONFIG: closed }, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']);
  assert.is(r.code, 2, r.stderr);
  assert.match(r.stderr, `cannot read config file ${closed}: EACCES`);
});

test('container: the image builds and runs --version, demo, a sync and a restore through volumes, first start included', async () => {
  if (skip) {
    console.log(`container tests skipped: ${skip}`);
    return;
  }
  const started = Date.now();
  const base = await exec('bash', ['tests/container/base-images.sh'], 10 * 60_000);
  assert.is(base.code, 0, show(base));
  console.log(base.out.trim());
  imagesBefore = imageIds();
  const buildStart = Date.now();
  // --format docker: the OCI format has no HEALTHCHECK, which `podman healthcheck run` needs.
  const build = await exec('buildah', ['build', '--layers', '--pull=never', '--network', 'host', '--format', 'docker', '--ulimit', 'nofile=20000:20000', '--ulimit', 'nproc=32768:32768', '-t', IMAGE, '.'], 15 * 60_000);
  imageBuilt = true;
  assert.is(build.code, 0, show(build));
  console.log(`image built in ${Math.round((Date.now() - buildStart) / 1000)} s (base images ${Math.round((buildStart - started) / 1000)} s)`);

  const version = await runIn([], ['--version']);
  assert.is(version.code, 0, show(version));
  assert.is(version.out.trim(), VERSION);
  const demo = await runIn([], ['demo']);
  assert.is(demo.code, 0, show(demo));
  assert.match(demo.out + demo.err, 'demo passed');

  const work = await tempDir();
  const dirs = Object.fromEntries(['etc', 'lib', 'log', 'data', 'repo', 'out'].map((d) => [d, join(work, d)]));
  for (const d of Object.values(dirs)) await fsp.mkdir(d);
  const src = join(dirs.data!, 'src.img');
  await makeImage(src, 24 * MiB, [[0, pattern(3 * MiB, 21)], [9 * MiB + 4096, pattern(2 * MiB, 22)], [24 * MiB - 8192, pattern(8192, 23)]]);
  const volumes = [`${dirs.etc}:/etc/hamal`, `${dirs.lib}:/var/lib/hamal`, `${dirs.log}:/var/log/hamal`, `${dirs.data}:/data:ro`, `${dirs.repo}:/repo`, `${dirs.out}:/out`];

  // The empty /etc/hamal volume of a first start: the sample is copied in, said on stderr.
  const sync = await runIn(volumes, ['sync', '--vm', 'ctr', '--disk', 'root=/data/src.img', '--target', '/repo', '--json']);
  assert.is(sync.code, 0, show(sync));
  assert.match(sync.err, 'first start: /etc/hamal/hamal.conf did not exist, so the sample /usr/share/hamal/hamal.conf.sample was copied there');
  assert.is(await fsp.readFile(join(dirs.etc!, 'hamal.conf'), 'utf8'), await fsp.readFile(SAMPLE, 'utf8'));
  const restore = await runIn(volumes, ['restore', '--target', '/repo', '--vm', 'ctr', '--disk', 'root', '--out', '/out/restored.img']);
  assert.is(restore.code, 0, show(restore));
  assert.not.match(restore.err, 'first start', 'second start reads the copied file');
  assert.is(await sha256File(join(dirs.out!, 'restored.img')), await sha256File(src), 'restored image equals the source');

  // What must still fail, naming the path: --config to nothing, $HAMAL_CONFIG a directory.
  const named = await runIn(volumes, ['config', 'check', '--config', '/etc/hamal/nope.conf']);
  assert.is(named.code, 2, show(named));
  assert.match(named.err, 'cannot read config file /etc/hamal/nope.conf: ENOENT');
  assert.not.ok(existsSync(join(dirs.etc!, 'nope.conf')));
  const isDir = await runIn(volumes, ['config', 'check'], ['-e', 'HAMAL_CONFIG=/etc/hamal']);
  assert.is(isDir.code, 2, show(isDir));
  assert.match(isDir.err, 'cannot read config file /etc/hamal: EISDIR');
  // A read-only empty config volume: the defaults, and why.
  const ro = join(work, 'ro');
  await fsp.mkdir(ro);
  const readOnly = await runIn([`${ro}:/etc/hamal:ro`], ['config', 'check']);
  assert.is(readOnly.code, 0, show(readOnly));
  assert.match(readOnly.err, 'no config file /etc/hamal/hamal.conf ($HAMAL_CONFIG): running on the built-in defaults (the sample could not be copied there: EROFS)');
  console.log(`container: build, --version, demo, sync, restore in ${Math.round((Date.now() - started) / 1000)} s`);
});

test('container: serve with a task file until `hamal health` passes inside it, then SIGTERM ends it cleanly within 30 s', async () => {
  if (skip) return; // said once, by the test above
  assert.ok(imageBuilt, 'the image was built by the test before');
  const started = Date.now();
  const work = await tempDir();
  const dirs = Object.fromEntries(['etc', 'lib', 'log', 'data', 'repo'].map((d) => [d, join(work, d)]));
  for (const d of Object.values(dirs)) await fsp.mkdir(d);
  await makeImage(join(dirs.data!, 'src.img'), 16 * MiB, [[MiB, pattern(2 * MiB, 31)]]);
  // Only the task file: hamal.conf comes from the first start.
  await fsp.mkdir(join(dirs.etc!, 'tasks.d'));
  const task = { version: 1, name: 'container', source: { platform: 'local', vm: 'ctr', disks: [{ id: 'root', path: '/data/src.img' }] }, target: '/repo', schedule: { every: 3600 } };
  await fsp.writeFile(join(dirs.etc!, 'tasks.d', 'ctr.json'), JSON.stringify(task));
  const name = `${PREFIX}-serve`;
  containers.push(name);
  const volumes = [`${dirs.etc}:/etc/hamal`, `${dirs.lib}:/var/lib/hamal`, `${dirs.log}:/var/log/hamal`, `${dirs.data}:/data:ro`, `${dirs.repo}:/repo`];
  const run = await podman(['run', '-d', '--name', name, ...RUN, ...volumes.flatMap((v) => ['-v', v]), IMAGE]);
  assert.is(run.code, 0, show(run));

  let health: Out = { code: -1, out: '', err: 'never asked' };
  for (let i = 0; i < 60; i++) {
    health = await podman(['healthcheck', 'run', name]);
    if (health.code === 0) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  assert.is(health.code, 0, `healthcheck: ${show(health)}\nlogs: ${show(await podman(['logs', name]))}`);
  const exec1 = await podman(['exec', name, 'hamal', 'health']);
  assert.is(exec1.code, 0, show(exec1));

  // The task file ran: its version is in the mounted repository.
  let versions: Out = { code: -1, out: '', err: '' };
  for (let i = 0; i < 60; i++) {
    versions = await podman(['exec', name, 'hamal', 'versions', '--target', '/repo', '--json']);
    if (versions.code === 0 && (JSON.parse(versions.out) as unknown[]).length === 1) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  assert.is(versions.code, 0, show(versions));
  assert.is((JSON.parse(versions.out) as unknown[]).length, 1, `${versions.out}\nlogs: ${show(await podman(['logs', name]))}`);
  assert.ok(existsSync(join(dirs.etc!, 'hamal.conf')), 'first start wrote hamal.conf into the volume');
  assert.ok(existsSync(join(dirs.log!, 'hamal-period.log')), 'the service log is in /var/log/hamal');

  const stopStart = Date.now();
  const stop = await podman(['stop', '--time', '30', name], 60_000);
  const stopSeconds = (Date.now() - stopStart) / 1000;
  assert.is(stop.code, 0, show(stop));
  const state = await podman(['inspect', name, '--format', '{{.State.ExitCode}} {{.State.Status}}']);
  const logs = await podman(['logs', name]);
  assert.is(state.out.trim(), '0 exited', `${show(state)}\nlogs: ${show(logs)}`);
  assert.ok(stopSeconds < 30, `stopped in ${stopSeconds} s`);
  assert.match(logs.out + logs.err, 'first start: /etc/hamal/hamal.conf did not exist');
  console.log(`container: serve healthy, task synced, stopped in ${stopSeconds.toFixed(1)} s (${Math.round((Date.now() - started) / 1000)} s in all)`);
});

test.after(() => {
  removeAll();
});

test.run();
