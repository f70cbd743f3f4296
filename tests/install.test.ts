// Delivery: the single executable (built here with scripts/build-binary), install.sh into a
// temporary root, update with rollback, uninstall; the container's entrypoint (`hamal
// serve`, HEALTHCHECK `hamal health`) run as a plain process; the Dockerfile and compose
// file checked by what runs without a Docker engine.
import { test } from 'uvu';
import YAML from 'yaml';
import * as assert from 'uvu/assert';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_CONFIG, allOutput } from './helpers/cli.ts';
import { MiB, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { VERSION } from '../src/version.ts';

const run = promisify(execFile);
const REPO = resolve(fileURLToPath(new URL('../..', import.meta.url)));
let work: string;
let binary: string;

async function sh(cmd: string, args: string[], env: Record<string, string> = {}) {
  try {
    const r = await run(cmd, args, { env: { ...process.env, ...env }, cwd: REPO });
    allOutput.push(r.stdout, r.stderr);
    return { code: 0, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    allOutput.push(e.stdout, e.stderr);
    return { code: e.code, out: e.stdout + e.stderr };
  }
}

test.before(async () => {
  work = await tempDir('hamal-install-');
  binary = join(work, 'hamal');
  const b = await sh('bash', ['scripts/build-binary', binary]);
  assert.is(b.code, 0, b.out);
  assert.match(b.out, /needs GLIBC_2\.(\d+)/);
  // Ubuntu 20.04, the seed's host, has glibc 2.31.
  assert.ok(Number(/needs GLIBC_2\.(\d+)/.exec(b.out)![1]) <= 31, b.out);
});

test('install.sh into a temporary root; the installed binary syncs and restores; update rolls back a bad binary; uninstall keeps config and data', async () => {
  const root = join(work, 'root');
  const i = await sh('bash', ['deploy/install.sh', '--binary', binary], { DESTDIR: root });
  assert.is(i.code, 0, i.out);
  const opt = join(root, 'opt/hamal');
  for (const f of ['bin/hamal', 'docker-compose-hamal.yaml', 'version', 'changelog.txt', '.env', 'update_sync_proxy.sh', 'uninstall_hamal.sh']) assert.ok(existsSync(join(opt, f)), f);
  assert.is((await fsp.readFile(join(opt, 'version'), 'utf8')).trim(), VERSION);
  assert.is(((await fsp.stat(join(root, 'etc/hamal/hamal.conf'))).mode & 0o777).toString(8), '600');
  const hamal = join(opt, 'bin/hamal');
  assert.is((await sh(hamal, ['--version'])).out.trim(), VERSION);

  const disk = join(work, 'disk.img');
  await fsp.writeFile(disk, pattern(5 * MiB, 3));
  const s = await sh(hamal, ['sync', '--vm', 'v', '--disk', `root=${disk}`, '--target', join(work, 'repo')], { HAMAL_CONFIG: TEST_CONFIG });
  assert.is(s.code, 0, s.out);
  const r = await sh(hamal, ['restore', '--target', join(work, 'repo'), '--vm', 'v', '--disk', 'root', '--out', join(work, 'out.img')], { HAMAL_CONFIG: TEST_CONFIG });
  assert.is(r.code, 0, r.out);
  assert.is(await sha256File(join(work, 'out.img')), await sha256File(disk));

  // Operator state that must survive updates and a plain uninstall.
  await fsp.appendFile(join(root, 'etc/hamal/hamal.conf'), '# operator edit\n');
  await fsp.writeFile(join(root, 'var/lib/hamal/marker'), 'data');
  const bad = join(work, 'bad-hamal');
  await fsp.writeFile(bad, '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  const u1 = await sh('bash', [join(opt, 'update_sync_proxy.sh'), bad], { DESTDIR: root });
  assert.is(u1.code, 1);
  assert.match(u1.out, /failed its self-check/);
  assert.is((await sh(hamal, ['--version'])).out.trim(), VERSION, 'the old binary is still in place');
  const u2 = await sh('bash', [join(opt, 'update_sync_proxy.sh'), binary], { DESTDIR: root });
  assert.is(u2.code, 0, u2.out);
  assert.ok(existsSync(join(opt, 'bin/hamal.prev')));
  assert.match(await fsp.readFile(join(root, 'etc/hamal/hamal.conf'), 'utf8'), '# operator edit');

  // A second install keeps the operator's config.
  assert.match((await sh('bash', ['deploy/install.sh', '--binary', binary], { DESTDIR: root })).out, /kept .*hamal\.conf/);
  const un = await sh('bash', [join(opt, 'uninstall_hamal.sh')], { DESTDIR: root });
  assert.is(un.code, 0, un.out);
  assert.not.ok(existsSync(opt));
  assert.ok(existsSync(join(root, 'etc/hamal/hamal.conf')) && existsSync(join(root, 'var/lib/hamal/marker')));
  await sh('bash', ['deploy/install.sh', '--binary', binary], { DESTDIR: root });
  assert.is((await sh('bash', [join(opt, 'uninstall_hamal.sh'), '--purge'], { DESTDIR: root })).code, 0);
  assert.not.ok(existsSync(join(root, 'etc/hamal')) || existsSync(join(root, 'var/lib/hamal')));
});

test('the binary compresses on its hash threads (zstd from its assets): a compressible disk stored small, restored byte-exact, no fallback', async () => {
  const disk = join(work, 'text.img');
  const lines = Array.from({ length: 200_000 }, (_, i) => `line ${i} of a disk that compresses well\n`).join('');
  await fsp.writeFile(disk, Buffer.from(lines.repeat(2)).subarray(0, 12 * MiB));
  const repo = join(work, 'zstd-repo');
  const env = { HAMAL_CONFIG: TEST_CONFIG };
  assert.is((await sh(binary, ['init', '--target', repo, '--compression', 'zstd'], env)).code, 0);
  const s = await sh(binary, ['sync', '--vm', 'z', '--disk', `text=${disk}`, '--target', repo], env);
  assert.is(s.code, 0, s.out);
  assert.not.match(s.out, /main thread/, 'no fallback to the main thread');
  let stored = 0;
  for (const f of await fsp.readdir(join(repo, 'chunks'), { recursive: true })) {
    const st = await fsp.stat(join(repo, 'chunks', f));
    if (st.isFile()) stored += st.size;
  }
  assert.ok(stored < 2 * MiB, `${stored} bytes stored of 12 MiB`);
  const r = await sh(binary, ['restore', '--target', repo, '--vm', 'z', '--disk', 'text', '--out', join(work, 'text.out')], env);
  assert.is(r.code, 0, r.out);
  assert.not.match(r.out, /main thread/, 'decompressed on the threads: no fallback');
  assert.is(await sha256File(join(work, 'text.out')), await sha256File(disk));
});

test("the container's entrypoint as a plain process: `hamal serve` standalone, healthy through `hamal health`, SIGTERM exits 0", async () => {
  const dir = await tempDir('hamal-entry-');
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  const conf = join(dir, 'hamal.conf');
  await fsp.mkdir(join(dir, 'tasks.d'));
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\nhamal_info_path = ${dir}/lib/info\n[hamal]\nlog_dir = ${dir}/log\ntasks_dir = ${dir}/tasks.d\nhealth_listen = 127.0.0.1:${port}\n`);
  const env = { ...process.env, HAMAL_CONFIG: conf };
  const child = spawn(binary, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.on('close', r));
  let health = { code: 1, out: '' };
  for (let i = 0; i < 50 && health.code !== 0; i++) {
    await new Promise((r) => setTimeout(r, 200));
    health = await sh(binary, ['health'], { HAMAL_CONFIG: conf });
  }
  assert.equal([health.code, health.out], [0, 'healthy\n'], out);
  child.kill('SIGTERM');
  assert.is(await exited, 0, out);
  allOutput.push(out);
  assert.is(JSON.parse(await fsp.readFile(join(dir, 'lib/info'), 'utf8')).state, 'stopped');
  assert.is((await sh(binary, ['health'], { HAMAL_CONFIG: conf })).code, 1, 'no service: unhealthy');
  await fsp.rm(dir, { recursive: true, force: true });
});

test('Dockerfile and compose file: sources exist, entrypoint, health check and volumes agree with the seed', async () => {
  const docker = await fsp.readFile(join(REPO, 'Dockerfile'), 'utf8');
  for (const m of docker.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) for (const src of m[1]!.split(/\s+/)) assert.ok(existsSync(join(REPO, src)), `COPY ${src}`);
  assert.match(docker, /^ENTRYPOINT \["hamal"\]$/m);
  assert.match(docker, /^CMD \["serve"\]$/m);
  assert.match(docker, /^HEALTHCHECK .* CMD \["hamal", "health"\]$/m);
  assert.match(docker, /VOLUME \["\/etc\/hamal", "\/var\/lib\/hamal", "\/var\/log\/hamal"\]/);
  const compose = await fsp.readFile(join(REPO, 'deploy/docker-compose-hamal.yaml'), 'utf8');
  for (const v of ['/etc/hamal', '/var/lib/hamal', '/var/log/hamal']) assert.match(compose, `- ${v}:${v}`);
  assert.match(compose, /test: \["CMD", "hamal", "health"\]/);
  assert.match(compose, /stop_grace_period: 40s/);
  const conf = await sh(binary, ['config', 'check', '--config', 'deploy/hamal.conf.sample']);
  assert.is(conf.code, 0, conf.out);
});

test('many proxies: the replicas compose file and the Kubernetes Deployment give each proxy its own id and lib dir', async () => {
  const compose = YAML.parse(await fsp.readFile(join(REPO, 'deploy/docker-compose-hamal-replicas.yaml'), 'utf8'));
  const svc = compose.services.hamal;
  assert.is(svc.network_mode, undefined, 'bridge networking: one host name, so one proxy id, per replica');
  assert.is(svc.container_name, undefined, 'replicas cannot share a container name');
  assert.ok(!svc.volumes.some((v: string) => v.startsWith('/var/lib/hamal')), 'journals are per proxy');
  assert.equal(svc.healthcheck.test, ['CMD', 'hamal', 'health']);
  const k8s = YAML.parse(await fsp.readFile(join(REPO, 'deploy/kubernetes/hamal.yaml'), 'utf8'));
  assert.is(k8s.kind, 'Deployment');
  const pod = k8s.spec.template.spec;
  assert.ok(pod.terminationGracePeriodSeconds >= 40);
  const c = pod.containers[0];
  assert.equal(c.args, ['serve']);
  assert.equal(c.livenessProbe.exec.command, ['hamal', 'health']);
  assert.equal(c.env.find((e: { name: string }) => e.name === 'HAMAL_PROXY_ID').valueFrom.fieldRef.fieldPath, 'metadata.name');
  const mounts = Object.fromEntries(c.volumeMounts.map((m: { mountPath: string; name: string }) => [m.mountPath, m.name]));
  for (const dir of ['/etc/hamal', '/var/lib/hamal', '/var/log/hamal']) assert.ok(mounts[dir], dir);
  assert.is(pod.volumes.find((v: { name: string }) => v.name === mounts['/etc/hamal']).secret.defaultMode, 0o400);
});

test.after(() => fsp.rm(work, { recursive: true, force: true }));

test.run();
