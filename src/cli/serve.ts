import { hostname } from 'node:os';
import { join } from 'node:path';
import { promises as fsp } from 'node:fs';
import { lastValueFrom } from 'rxjs';
import type { Server } from 'node:http';
import type { LoadedConfig } from '../config/loadConfig.ts';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';
import { LogFile, rotationOf } from '../log/LogFile.ts';
import { setSubprocessSink } from '../log/subprocessLog.ts';
import { releasing } from '../streams/usingResource.ts';
import { VERSION } from '../version.ts';
import { Service } from '../service/Service.ts';
import { HttpControlPlane } from '../service/HttpControlPlane.ts';
import { TaskFiles } from '../service/TaskFiles.ts';
import { FileOutbox } from '../service/Outbox.ts';
import { LastSuccess } from '../service/LastSuccess.ts';
import { loadPublicKey } from '../service/SignedTask.ts';
import { TaskLedger } from '../service/TaskLedger.ts';
import { ProxyInfo } from '../service/ProxyInfo.ts';
import { hostIps, publicIps } from '../service/HostFacts.ts';
import { startHealthServer } from '../service/HealthServer.ts';
import { taskRunner } from '../service/taskRunner.ts';
import { Slots } from '../streams/Slots.ts';

/** How long a stop may wait for snapshots and locks to be released before exiting anyway. */
const RELEASE_GRACE_MS = 20_000;
const PUBLIC_IP_REFRESH_MS = 10 * 60_000;

/**
 * `hamal serve`: the proxy as a long-running service (docs/service.md). With
 * `[mass] mass_endpoint`, tasks come signed from the control plane and progress,
 * results and heartbeats go back to it; without, the task files of `[hamal] tasks_dir`
 * run on their schedules. SIGTERM/SIGINT stop it cleanly; exit code 0 after a clean stop.
 */
export async function serveCommand(_opts: object, config: LoadedConfig): Promise<number> {
  const c = config.values;
  const logDir = c.hamal.log_dir;
  const lib = c.DEFAULT.hamal_lib_dir;
  const rotation = rotationOf(c.DEFAULT);
  for (const [key, dir] of [['[hamal] log_dir', logDir], ['hamal_lib_dir', lib]] as const) {
    // Created 0700: logs name VMs and hosts, the lib dir holds journals and the outbox.
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 }).catch((err) => {
      throw new UsageError('DIR_UNWRITABLE', `cannot create ${dir} (${key}): ${(err as NodeJS.ErrnoException).code ?? err}`, { subject: key });
    });
  }
  const periodLog = new LogFile(join(logDir, 'hamal-period.log'), rotation);
  const subprocessLog = new LogFile(join(logDir, 'hamal-period-subprocess.log'), rotation);
  log.configure({
    sink: (line) => {
      process.stderr.write(line + '\n');
      periodLog.write(line);
    },
  });
  setSubprocessSink((line) => subprocessLog.write(line));
  const sub = log.child('service');

  // Replicas share one hamal.conf: each takes its id from the environment (a pod's name).
  const proxyId = process.env.HAMAL_PROXY_ID || c.mass.hyper_exporter_id || hostname();
  const mode = c.mass.mass_endpoint ? 'control-plane' : 'standalone';
  let controlPlane: HttpControlPlane | undefined;
  if (c.mass.mass_endpoint) {
    if (!c.mass.auth_key) throw new UsageError('CONFIG_INVALID', '[mass] auth_key is required with mass_endpoint', { subject: 'auth_key' });
    controlPlane = new HttpControlPlane({
      endpoint: c.mass.mass_endpoint,
      authKey: c.mass.auth_key,
      proxyId,
      timeoutMs: c.mass.default_request_timeout * 1000,
      publicKey: await loadPublicKey(c.mass.public_key_path),
      ledger: new TaskLedger(join(lib, 'service', 'tasks'), { legacyNonces: join(lib, 'service', 'nonces.json') }),
    });
  } else {
    await fsp.mkdir(join(lib, 'service'), { recursive: true });
  }
  const feed = controlPlane ?? new TaskFiles(c.hamal.tasks_dir, join(lib, 'service', 'schedule.json'));
  const info = new ProxyInfo(c.DEFAULT.hamal_info_path, { id: proxyId, version: VERSION, pid: process.pid, mode, startedAt: new Date().toISOString(), state: 'starting' });
  await info.set('starting');

  const startedAt = new Date().toISOString();
  let publics: string[] = [];
  const refreshPublic = async () => {
    if (c.mass.enable_get_public_ips) publics = await publicIps(c.hamal.public_ip_endpoints.split(',').map((s) => s.trim()).filter(Boolean), c.mass.get_public_ip_timeout * 1000);
  };
  await refreshPublic();
  const publicTimer = setInterval(() => void refreshPublic(), PUBLIC_IP_REFRESH_MS);
  publicTimer.unref();

  const service = new Service(
    {
      feed,
      reporter: controlPlane,
      runTask: taskRunner(config, logDir, rotation, new Slots(c.hamal.max_running_disks, '[hamal] max_running_disks'), proxyId),
      facts: () => ({
        proxyId,
        version: VERSION,
        startedAt,
        hostIps: hostIps(),
        publicIps: publics,
        capacity: { maxTasks: c.hamal.max_running_tasks, parallelDisks: c.data_sync_v2.parallel_sync_disks_count, readersPerDisk: c.data_sync_v2.pre_disk_readers_count },
      }),
      outbox: controlPlane ? new FileOutbox(join(lib, 'service', 'outbox')) : undefined,
      lastSuccess: new LastSuccess(join(lib, 'service', 'last_success.json')),
    },
    {
      pollMs: c.period.interval * 1000,
      heartbeatMs: c.mass.enable_heartbeat_msg ? c.hamal.heartbeat_interval * 1000 : 0,
      progressMs: c.period.task_update_wait_time * 1000,
      maxTasks: c.hamal.max_running_tasks,
    },
  );
  service.metrics.set('hamal_proxy_info', 1, { version: VERSION, proxy: proxyId, mode });
  service.metrics.set('hamal_proxy_start_time_seconds', Date.parse(startedAt) / 1000);
  let health: Server | undefined;
  if (c.hamal.health_listen) health = await startHealthServer(c.hamal.health_listen, service, { hamal_lib_dir: lib, log_dir: logDir });

  const onSignal = (sig: NodeJS.Signals) => {
    sub.warn(`${sig}: stopping`);
    void info.set('stopping');
    service.stop();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  sub.info(`hamal ${VERSION} serving as proxy ${proxyId}, ${mode === 'standalone' ? `standalone: task files in ${c.hamal.tasks_dir}` : `control plane ${c.mass.mass_endpoint}`}`, {
    health: c.hamal.health_listen || 'off',
    maxTasks: c.hamal.max_running_tasks,
  });
  await info.set('running');
  try {
    await lastValueFrom(service.run(), { defaultValue: undefined });
    // Snapshots and locks of stopped tasks are released in the background: wait, within bounds.
    const grace = new Promise((r) => setTimeout(r, RELEASE_GRACE_MS).unref());
    await Promise.race([Promise.allSettled([...releasing]), grace]);
    sub.info('stopped');
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    clearInterval(publicTimer);
    health?.close();
    // A poll or report still waiting on the control plane would keep the process alive
    // until its timeout (default_request_timeout, 600 s by default).
    controlPlane?.close();
    await info.set('stopped');
    setSubprocessSink(undefined);
    log.configure({ sink: (line) => process.stderr.write(line + '\n') });
    await Promise.all([periodLog.close(), subprocessLog.close()]);
  }
  return 0;
}
