import { cpus, tmpdir, totalmem } from 'node:os';
import { promises as fsp, constants, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { loadConfig, configSecrets, type LoadedConfig } from '../config/loadConfig.ts';
import { log } from '../log/Logger.ts';
import { describeError } from '../errors.ts';
import { loadPublicKey } from '../service/SignedTask.ts';
import { TaskFiles } from '../service/TaskFiles.ts';
import { TaskRejected } from '../service/SignedTask.ts';
import { openStore } from '../sinks/openStore.ts';
import { formatTable } from './format.ts';
import { childEnv } from '../childEnv.ts';
import { VDDK_TEMPLATE } from '../sources/vmware/NbdkitExport.ts';
import { serverReason } from '../sources/nbd/NbdServerProcess.ts';

const run = promisify(execFile);
const GB = 1e9;

export interface Check {
  status: 'ok' | 'warn' | 'fail';
  what: string;
  detail: string;
  /** What to do about a warn or fail. */
  fix?: string;
}

/**
 * `hamal doctor`: the host against the seed's requirements (Ubuntu 20.04 or compatible,
 * 4 cores, 8 GB, 200 GB free on ext4/xfs, not LVM) and the proxy's reach (config, dirs,
 * control plane, task files, target, helper programs). Exit 1 when a check fails.
 */
export async function doctorCommand(opts: { config?: string; json?: boolean }): Promise<number> {
  const checks: Check[] = [];
  let config: LoadedConfig | undefined;
  try {
    config = await loadConfig(opts.config);
    log.configure({ secrets: configSecrets(config) });
    checks.push({ status: config.warnings.length ? 'warn' : 'ok', what: 'config', detail: `${config.file ?? 'built-in defaults'}${config.warnings.length ? `: ${config.warnings.join('; ')}` : ''}` });
  } catch (err) {
    checks.push({ status: 'fail', what: 'config', detail: describeError(err), fix: 'run `hamal config check` and correct the key it names' });
  }
  checks.push(...hostChecks());
  if (config) {
    const c = config.values;
    checks.push(await diskCheck(c.DEFAULT.hamal_lib_dir));
    for (const [key, dir] of [['hamal_lib_dir', c.DEFAULT.hamal_lib_dir], ['[hamal] log_dir', c.hamal.log_dir]] as const) checks.push(await writable(key, dir));
    checks.push(...(await reachChecks(config)));
  }
  checks.push(...(await toolChecks()));
  checks.push(...(await vddkChecks(config?.values.hamal.vmware_nbdkit_command || VDDK_TEMPLATE)));

  if (opts.json) process.stdout.write(JSON.stringify(checks, null, 2) + '\n');
  else process.stdout.write(formatTable([['status', 'check', 'detail', 'fix'], ...checks.map((k) => [k.status, k.what, k.detail, k.fix ?? ''])]) + '\n');
  return checks.some((k) => k.status === 'fail') ? 1 : 0;
}

function hostChecks(): Check[] {
  const out: Check[] = [];
  let os = 'unknown';
  try {
    const rel = readFileSync('/etc/os-release', 'utf8');
    os = /^PRETTY_NAME="?([^"\n]*)/m.exec(rel)?.[1] ?? os;
  } catch {
    /* not Linux, or no os-release */
  }
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime;
  const seed = /Ubuntu 20\.04/.test(os);
  const compatible = glibc !== undefined && Number(glibc.split('.')[1]) >= 28;
  out.push({
    status: seed || compatible ? (seed ? 'ok' : 'warn') : 'fail',
    what: 'os',
    detail: `${os}, glibc ${glibc ?? 'unknown'}`,
    fix: seed ? undefined : compatible ? 'supported (glibc 2.28 or later); the seed tests Ubuntu 20.04' : 'use Ubuntu 20.04 or a Linux with glibc 2.28 or later',
  });
  const cores = cpus().length;
  out.push({ status: cores >= 4 ? 'ok' : 'warn', what: 'cpu', detail: `${cores} cores`, fix: cores >= 4 ? undefined : 'the seed asks for 4 cores; fewer slow hashing and uploads' });
  const mem = totalmem();
  out.push({ status: mem >= 7.5 * GB ? 'ok' : 'warn', what: 'memory', detail: `${(mem / GB).toFixed(1)} GB`, fix: mem >= 7.5 * GB ? undefined : 'the seed asks for 8 GB; lower parallel_sync_disks_count and readers' });
  return out;
}

async function diskCheck(dir: string): Promise<Check> {
  const existing = await nearestExisting(dir);
  const s = await fsp.statfs(existing);
  const free = s.bavail * s.bsize;
  const mount = mountOf(existing);
  const fs = mount?.type ?? 'unknown';
  const lvm = mount ? /^\/dev\/(mapper\/|dm-)/.test(mount.device) : false;
  const problems: string[] = [];
  if (free < 200 * GB) problems.push(`${(free / GB).toFixed(0)} GB free (the seed asks 200 GB)`);
  if (!['ext4', 'xfs'].includes(fs)) problems.push(`${fs} file system (the seed asks ext4 or xfs)`);
  if (lvm) problems.push(`on LVM (${mount!.device}), which the seed does not support`);
  return {
    status: lvm ? 'fail' : problems.length ? 'warn' : 'ok',
    what: 'data disk',
    detail: `${dir}: ${(free / GB).toFixed(0)} GB free, ${fs}${mount ? ` on ${mount.device}` : ''}`,
    fix: problems.length ? `${problems.join('; ')}: put hamal_lib_dir on a plain ext4/xfs partition with 200 GB` : undefined,
  };
}

function mountOf(path: string): { device: string; mountPoint: string; type: string } | undefined {
  try {
    const mounts = readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' '))
      .filter((f) => f.length >= 3)
      .map(([device, mountPoint, type]) => ({ device: device!, mountPoint: mountPoint!.replace(/\\040/g, ' '), type: type! }));
    return mounts.filter((m) => path === m.mountPoint || path.startsWith(m.mountPoint.endsWith('/') ? m.mountPoint : m.mountPoint + '/')).sort((a, b) => b.mountPoint.length - a.mountPoint.length)[0];
  } catch {
    return undefined;
  }
}

async function nearestExisting(dir: string): Promise<string> {
  for (let d = dir; ; d = dirname(d)) {
    if (await fsp.stat(d).then(() => true, () => false)) return d;
    if (d === dirname(d)) return d;
  }
}

async function writable(key: string, dir: string): Promise<Check> {
  const existing = await nearestExisting(dir);
  try {
    await fsp.access(existing, constants.W_OK);
    return { status: 'ok', what: key, detail: existing === dir ? `${dir} writable` : `${dir} will be created (in ${existing})` };
  } catch {
    return { status: 'fail', what: key, detail: `${existing} is not writable`, fix: `create ${dir} writable by the user hamal runs as` };
  }
}

async function reachChecks(config: LoadedConfig): Promise<Check[]> {
  const c = config.values;
  const out: Check[] = [];
  if (c.mass.mass_endpoint) {
    try {
      await loadPublicKey(c.mass.public_key_path);
      out.push({ status: 'ok', what: 'public_key_path', detail: `${c.mass.public_key_path}: Ed25519` });
    } catch (err) {
      out.push({ status: 'fail', what: 'public_key_path', detail: describeError(err), fix: "put the control plane's Ed25519 public key (PEM) there" });
    }
    const url = `${c.mass.mass_endpoint.replace(/\/+$/, '')}/v1/proxies/${encodeURIComponent(c.mass.hyper_exporter_id || 'unknown')}/tasks`;
    try {
      const res = await fetch(url, { headers: { Authorization: `Bearer ${c.mass.auth_key}` }, signal: AbortSignal.timeout(Math.min(c.mass.default_request_timeout, 15) * 1000) });
      out.push(
        res.ok
          ? { status: 'ok', what: 'control plane', detail: `${c.mass.mass_endpoint} answers` }
          : { status: 'fail', what: 'control plane', detail: `${c.mass.mass_endpoint}: HTTP ${res.status}`, fix: res.status === 401 || res.status === 403 ? 'check [mass] auth_key and hyper_exporter_id' : 'check [mass] mass_endpoint' },
      );
    } catch (err) {
      const e = err as { cause?: Error; message: string };
      out.push({ status: 'fail', what: 'control plane', detail: `${c.mass.mass_endpoint}: ${e.cause?.message ?? e.message}`, fix: 'check [mass] mass_endpoint, routes and firewalls (and NODE_EXTRA_CA_CERTS for a private CA)' });
    }
  } else {
    const dir = c.hamal.tasks_dir;
    // A throwaway schedule state: doctor must not touch the service's.
    const scratch = await fsp.mkdtemp(join(tmpdir(), 'hamal-doctor-'));
    try {
      const found = await new TaskFiles(dir, join(scratch, 'state.json')).poll();
      const bad = found.filter((t) => t instanceof TaskRejected) as TaskRejected[];
      out.push(
        bad.length
          ? { status: 'fail', what: 'task files', detail: bad.map((b) => b.message).join('; '), fix: 'correct the files and fields named' }
          : { status: found.length ? 'ok' : 'warn', what: 'task files', detail: `standalone mode: ${found.length} task file(s) in ${dir}`, fix: found.length ? undefined : `add task files to ${dir} (docs/tasks.md), or set [mass] mass_endpoint` },
      );
    } catch (err) {
      out.push({ status: 'warn', what: 'task files', detail: describeError(err), fix: `create ${dir}, or set [mass] mass_endpoint` });
    } finally {
      await fsp.rm(scratch, { recursive: true, force: true });
    }
  }
  if (c.hamal.target) {
    try {
      const store = await openStore(c.hamal.target, { config: c });
      await store.close();
      out.push({ status: 'ok', what: 'target', detail: c.hamal.target });
    } catch (err) {
      out.push({ status: 'fail', what: 'target', detail: describeError(err), fix: 'check [hamal] target and [s3]' });
    }
  }
  return out;
}

async function toolChecks(): Promise<Check[]> {
  const version = async (cmd: string, args: string[]) => {
    try {
      const { stdout, stderr } = await run(cmd, args, { timeout: 10_000, env: childEnv() });
      return (stdout || stderr).split('\n')[0]!.trim();
    } catch {
      return undefined;
    }
  };
  const out: Check[] = [];
  const qemu = await version('qemu-img', ['--version']);
  out.push({ status: qemu ? 'ok' : 'warn', what: 'qemu-img', detail: qemu ?? 'missing', fix: qemu ? undefined : 'apt-get install qemu-utils: local images are read whole without it (holes not skipped)' });
  const nbdkit = await version('nbdkit', ['--version']);
  out.push({ status: nbdkit ? 'ok' : 'warn', what: 'nbdkit', detail: nbdkit ?? 'missing', fix: nbdkit ? undefined : 'needed by VMware tasks with transport nbd: install nbdkit (with the vddk plugin)' });
  const rbd = await version('rbd', ['--version']);
  out.push({ status: rbd ? 'ok' : 'warn', what: 'rbd', detail: rbd ?? 'missing', fix: rbd ? undefined : 'OpenStack/Ceph tasks need the rbd command: apt-get install ceph-common' });
  const qemuNbd = await version('qemu-nbd', ['--version']);
  const rbdDriver = await fsp.stat('/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so').then(() => true, () => false);
  out.push({
    status: qemuNbd && rbdDriver ? 'ok' : 'warn',
    what: 'qemu-nbd (rbd)',
    detail: qemuNbd ? `${qemuNbd}${rbdDriver ? ', rbd driver present' : ', no rbd driver'}` : 'missing',
    fix: qemuNbd && rbdDriver ? undefined : 'OpenStack/Ceph tasks read snapshots through qemu-nbd: apt-get install qemu-utils qemu-block-extra',
  });
  return out;
}

/**
 * The VMware `nbd` transport's two parts Debian's bookworm does not ship (docs/vddk.md):
 * nbdkit's vddk plugin, and VMware's VDDK where the command template's `libdir=` says.
 * `nbdkit vddk --dump-plugin libdir=DIR` answers both: it fails without the plugin, and
 * prints `vddk_library_version=` only when it loaded VDDK from DIR (nbdkit-vddk-plugin(1),
 * "DEBUGGING VIXDISKLIB"). Checked only when the configured command uses the vddk plugin.
 */
export async function vddkChecks(template: string): Promise<Check[]> {
  const words = template.trim().split(/\s+/);
  // The plugin by name, or by the path of its .so (a plugin built outside nbdkit's dir).
  const vddk = words.find((w) => w === 'vddk' || w.endsWith('/nbdkit-vddk-plugin.so'));
  if (!vddk) return [{ status: 'ok', what: 'nbdkit vddk', detail: '[hamal] vmware_nbdkit_command does not use the vddk plugin: not checked' }];
  const nbdkit = words[0]!;
  const libdir = words.map((w) => /^libdir=(.+)$/.exec(w)?.[1]).find((d) => d);
  const doc = 'see docs/vddk.md (a derived image, or the host paths mounted); https needs neither';
  const plain = await dumpPlugin(nbdkit, vddk, []);
  if (typeof plain !== 'string') return [{ status: 'warn', what: 'nbdkit vddk', detail: plain.reason, fix: `VMware tasks with transport nbd need nbdkit's vddk plugin: ${doc}` }];
  const field = (dump: string, name: string) => new RegExp(`^${name}=(.*)$`, 'm').exec(dump)?.[1];
  const plugin: Check = { status: 'ok', what: 'nbdkit vddk', detail: `${nbdkit} has the vddk plugin (${field(plain, 'version') ?? 'version unknown'})` };
  const where = libdir ?? field(plain, 'vddk_default_libdir') ?? 'its default libdir';
  // With libdir= the plugin loads VDDK, or fails saying why (a libdir that does not exist).
  const loaded = libdir ? await dumpPlugin(nbdkit, vddk, [`libdir=${libdir}`]) : plain;
  const version = typeof loaded === 'string' ? field(loaded, 'vddk_library_version') : undefined;
  const why = typeof loaded === 'string' ? `the vddk plugin could not load VDDK from ${where}` : loaded.reason;
  return [
    plugin,
    version
      ? { status: 'ok', what: 'VDDK', detail: `VDDK ${version} loaded from ${field(loaded as string, 'vddk_dll') ?? where}` }
      : { status: 'warn', what: 'VDDK', detail: `${why} (libdir= of [hamal] vmware_nbdkit_command)`, fix: `VMware tasks with transport nbd need VMware's VDDK there: ${doc}` },
  ];
}

/** `nbdkit PLUGIN --dump-plugin ARGS`: its output, or nbdkit's own reason for failing. */
async function dumpPlugin(nbdkit: string, plugin: string, args: string[]): Promise<string | { reason: string }> {
  try {
    return (await run(nbdkit, [plugin, '--dump-plugin', ...args], { timeout: 10_000, env: childEnv({ pass: ['LD_LIBRARY_PATH'] }) })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; code?: string; message: string };
    return { reason: e.code === 'ENOENT' ? `${nbdkit}: not installed` : serverReason(e.stderr ?? '', 'nbdkit') || e.message };
  }
}
