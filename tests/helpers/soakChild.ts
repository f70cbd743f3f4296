// The soak's child process (tests/soak.test.ts): the service graph with its real parts
// (HTTP control-plane client against the STAND-IN, taskRunner, per-VM logs, journals, the
// repository) driven through CYCLES sync tasks of one changing disk, with shortened timers.
// Prints one JSON line of heap, RSS and open descriptors after WARMUP cycles and at the end.
import { promises as fsp, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { lastValueFrom } from 'rxjs';
import { parseConfig } from '../../src/config/loadConfig.ts';
import { rotationOf } from '../../src/log/LogFile.ts';
import { log } from '../../src/log/Logger.ts';
import { Service } from '../../src/service/Service.ts';
import { HttpControlPlane } from '../../src/service/HttpControlPlane.ts';
import { FileOutbox } from '../../src/service/Outbox.ts';
import { TaskLedger } from '../../src/service/TaskLedger.ts';
import { taskRunner } from '../../src/service/taskRunner.ts';
import { Slots } from '../../src/streams/Slots.ts';
import { ControlPlaneStandIn, AUTH_KEY } from './ControlPlaneStandIn.ts';
import { createPublicKey, randomBytes } from 'node:crypto';

const [dir, cyclesArg, warmupArg] = process.argv.slice(2);
const CYCLES = Number(cyclesArg);
const WARMUP = Number(warmupArg);
const MiB = 1024 * 1024;

const sample = () => {
  (globalThis as { gc?: () => void }).gc?.();
  const m = process.memoryUsage();
  return { heapMiB: m.heapUsed / MiB, buffersMiB: m.arrayBuffers / MiB, rssMiB: m.rss / MiB, fds: readdirSync('/proc/self/fd').length, handles: process.getActiveResourcesInfo().length };
};

const cp = new ControlPlaneStandIn();
await cp.start();
const disk = join(dir!, 'disk.img');
await fsp.writeFile(disk, randomBytes(8 * MiB));
const config = parseConfig(
  `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[hamal]\nlog_dir = ${dir}/log\nblock_size_mb = 1\n[data_sync_v2]\nfsync_period_frequency = 1\n`,
  null,
);
const c = config.values;
await fsp.mkdir(c.hamal.log_dir, { recursive: true });
log.configure({ sink: () => {} });
const proxyId = 'soak';
const client = new HttpControlPlane({ endpoint: cp.url, authKey: AUTH_KEY, proxyId, timeoutMs: 5000, publicKey: createPublicKey(cp.publicKeyPem), ledger: new TaskLedger(join(dir!, 'tasks')) });
const service = new Service(
  {
    feed: client,
    reporter: client,
    runTask: taskRunner(config, c.hamal.log_dir, rotationOf(c.DEFAULT), new Slots(8, 'disks'), proxyId),
    facts: () => ({ proxyId, version: 'soak', startedAt: '', hostIps: [], publicIps: [], capacity: { maxTasks: 1, parallelDisks: 1, readersPerDisk: 2 } }),
    outbox: new FileOutbox(join(dir!, 'lib', 'outbox')),
  },
  { pollMs: 10, heartbeatMs: 50, progressMs: 20, maxTasks: 1 },
);

const task = (n: number) => cp.signed(`t${n}`, proxyId, { version: 1, source: { platform: 'local', vm: 'soak-vm', disks: [{ id: 'd', path: disk }] }, target: join(dir!, 'repo') });
let warm: ReturnType<typeof sample> | undefined;
/** Heap (MiB) every 50 cycles: a leak shows as a slope. */
const trace: number[] = [];
let seen = 0;
let heartbeats = 0;
let progress = 0;
// Each result lets the next task in, after one 4 KiB write somewhere on the disk.
const watcher = setInterval(async () => {
  if (cp.results.length === seen) return;
  seen = cp.results.length;
  // The stand-in lives in this process: what it records must not pass for a leak of ours.
  heartbeats += cp.heartbeats.splice(0).length;
  progress += cp.progress.splice(0).length;
  if (seen === WARMUP) warm = sample();
  if (seen % 50 === 0) trace.push(Math.round(sample().heapMiB * 10) / 10);
  if (seen >= CYCLES) return service.stop();
  const h = await fsp.open(disk, 'r+');
  await h.write(randomBytes(4096), 0, 4096, Math.floor(Math.random() * (8 * MiB / 4096)) * 4096);
  await h.close();
  cp.enqueue(proxyId, task(seen));
}, 2);
cp.enqueue(proxyId, task(0));
const started = Date.now();
await lastValueFrom(service.run(), { defaultValue: undefined });
clearInterval(watcher);
const end = sample();
const states = cp.results.reduce<Record<string, number>>((a, r) => ((a[String(r.state)] = (a[String(r.state)] ?? 0) + 1), a), {});
await cp.stop();
process.stdout.write(JSON.stringify({ cycles: cp.results.length, states, seconds: (Date.now() - started) / 1000, warm, end, trace, heartbeats, progress }) + '\n');
