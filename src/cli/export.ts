import { promises as fsp } from 'node:fs';
import tls from 'node:tls';
import type { LoadedConfig } from '../config/loadConfig.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import { RepositoryLock } from '../repo/RepositoryLock.ts';
import { repositorySecret } from '../config/repositorySecret.ts';
import { UsageError, describeError } from '../errors.ts';
import { log as rootLog } from '../log/Logger.ts';
import { VersionImage } from '../export/VersionImage.ts';
import { Overlay } from '../export/Overlay.ts';
import { ExportedDisk } from '../export/ExportedDisk.ts';
import { NbdServer, type NbdListenAddress } from '../export/NbdServer.ts';
import { listenUnix } from '../export/unixSocket.ts';
import { formatBytes } from './format.ts';

/** Where `hamal export` listens without --listen: a socket in the current folder. */
export const DEFAULT_LISTEN = 'unix:hamal-export.sock';
const MiB = 1024 * 1024;

export interface ExportCommandOptions {
  target: string;
  vm: string;
  disk: string;
  version?: string;
  /** unix:PATH or tcp:HOST:PORT. @default DEFAULT_LISTEN */
  listen?: string;
  writable?: boolean;
  overlay?: string;
  tlsCert?: string;
  tlsKey?: string;
  /** Clients must present a certificate this CA signed (with --tls-cert). */
  tlsClientCa?: string;
  /** false: `--no-tls`, plain TCP on purpose. @default true */
  tls?: boolean;
  cacheMib?: number;
}

const log = rootLog.child('export');

/**
 * `hamal export`: serves one stored version of a disk over NBD until SIGTERM or SIGINT
 * (exit 143 / 130), holding a shared repository lock so prune leaves its chunks alone.
 */
export async function exportCommand(opts: ExportCommandOptions, config?: LoadedConfig): Promise<number> {
  const listen = parseListen(opts.listen ?? DEFAULT_LISTEN);
  checkFlags(opts, listen);
  const secure = await loadTls(opts);
  const stop = waitForSignal();
  const undo: Array<[string, () => Promise<void>]> = [];
  let failed: unknown;
  try {
    const store = await openStore(opts.target, { config: config?.values });
    undo.push(['close the repository', () => store.close()]);
    const repo = await Repository.open(store, { secret: () => repositorySecret(config?.values) });
    const c = config?.values.hamal;
    const lock = await RepositoryLock.acquire(store, 'shared', { ttlSeconds: c?.lock_ttl, clockSkewSeconds: c?.lock_clock_skew, purpose: `export ${opts.vm}/${opts.disk}` });
    undo.push([`release repository lock ${lock.key}`, () => lock.release()]);
    // After the lock: no prune can take this version between reading it and serving it.
    const manifest = await repo.readManifest(opts.vm, opts.disk, opts.version ?? 'latest');
    const overlay = opts.writable ? await Overlay.open(opts.overlay!, manifest) : null;
    if (overlay) undo.push([`flush overlay ${overlay.path}`, () => overlay.close()]);
    const cacheMib = opts.cacheMib ?? c?.export_cache_mb ?? 256;
    const image = new VersionImage(repo, manifest, { maxBytes: cacheMib * MiB, log });
    const name = `${manifest.vm}/${manifest.disk}`;
    const server = new NbdServer(new ExportedDisk(image, overlay), {
      name,
      description: `hamal: vm ${manifest.vm} disk ${manifest.disk} version ${manifest.version}${overlay ? ` with overlay ${overlay.path}` : ' (read-only)'}`,
      tls: secure,
      requireClientCert: opts.tlsClientCa !== undefined,
      log,
    });
    undo.push(['stop the NBD server', () => server.close()]);
    const where = 'path' in listen ? await bindUnix(server, listen.path, undo) : await server.listen(listen);
    const url = urlOf(where, secure !== null);
    log.info(
      `serving vm ${manifest.vm} disk ${manifest.disk} version ${manifest.version} (${formatBytes(manifest.capacity)}, blocks of ${formatBytes(manifest.blockSize)}) ` +
        `${overlay ? `writable, writes to overlay ${overlay.path} (${overlay.heldBlocks} blocks held)` : 'read-only'} at ${url}; ` +
        `cache ${cacheMib} MiB (${image.cache.maxEntries} blocks)${secure ? ', TLS' : ''}; repository ${store.location} locked (${lock.key})`,
    );
    process.stdout.write(`${url}\n`);
    const sig = await stop.signalled;
    log.info(`${sig}: stopping the export of ${name} at ${url}`);
    const st = image.cache.stats;
    log.verbose(`chunk cache: ${st.hits} hits, ${st.misses} misses, ${st.shared} shared fetches, ${st.prefetched} read ahead, ${formatBytes(st.fetchedBytes)} fetched`);
    return sig === 'SIGINT' ? 130 : 143;
  } catch (err) {
    failed = err;
    throw err;
  } finally {
    const cleanupError = await runUndo(undo);
    stop.dispose();
    // A failed cleanup (an overlay that could not be flushed) fails the command, unless it already failed.
    if (cleanupError && failed === undefined) throw cleanupError;
  }
}

/** Binds the Unix socket and registers its removal. */
async function bindUnix(server: NbdServer, path: string, undo: Array<[string, () => Promise<void>]>): Promise<NbdListenAddress> {
  const remove = await listenUnix(server, path);
  // Removed after the server stopped: undo runs last-in first-out.
  undo.splice(undo.length - 1, 0, [`remove socket ${path}`, remove]);
  return { path: (await fsp.realpath(path).catch(() => path)) };
}

/** Runs the cleanup steps newest first, each whatever the others did; the first failure, logged. */
async function runUndo(undo: Array<[string, () => Promise<void>]>): Promise<unknown> {
  let first: unknown;
  for (const [what, fn] of undo.reverse()) {
    try {
      await fn();
    } catch (err) {
      log.error(`could not ${what}: ${describeError(err)}`);
      first ??= err;
    }
  }
  return first;
}

/** SIGTERM/SIGINT caught from now on (also during start-up and cleanup): the first one counts. */
function waitForSignal(): { signalled: Promise<NodeJS.Signals>; dispose: () => void } {
  let resolve!: (s: NodeJS.Signals) => void;
  const signalled = new Promise<NodeJS.Signals>((r) => (resolve = r));
  const on = (sig: NodeJS.Signals) => resolve(sig);
  process.on('SIGTERM', on);
  process.on('SIGINT', on);
  return {
    signalled,
    dispose: () => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
    },
  };
}

/** `unix:PATH` or `tcp:HOST:PORT` (`tcp:[::1]:10809`). */
export function parseListen(value: string): NbdListenAddress {
  if (value.startsWith('unix:') && value.length > 5) return { path: value.slice(5) };
  const m = /^tcp:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(value);
  if (m && Number(m[2]) <= 65535) return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  throw new UsageError('BAD_LISTEN', `--listen ${JSON.stringify(value)} must be unix:PATH or tcp:HOST:PORT (port 0: any free port)`, { subject: '--listen' });
}

function checkFlags(opts: ExportCommandOptions, listen: NbdListenAddress): void {
  const bad = (code: string, message: string, subject: string) => new UsageError(code, message, { subject });
  if (opts.writable && !opts.overlay) throw bad('OVERLAY_REQUIRED', '--writable needs --overlay FILE: writes go there, never into the repository', '--overlay');
  if (opts.overlay && !opts.writable) throw bad('WRITABLE_REQUIRED', '--overlay is for writable exports: add --writable', '--writable');
  if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined)) throw bad('TLS_INCOMPLETE', '--tls-cert and --tls-key go together', '--tls-key');
  if (opts.tlsClientCa && !opts.tlsCert) throw bad('TLS_INCOMPLETE', '--tls-client-ca needs --tls-cert and --tls-key', '--tls-client-ca');
  if (opts.tls === false && opts.tlsCert) throw bad('TLS_CONFLICT', '--no-tls and --tls-cert contradict each other', '--no-tls');
  if ('host' in listen && !opts.tlsCert && opts.tls !== false) {
    throw bad('TLS_REQUIRED', `--listen tcp:${listen.host}:${listen.port} serves the disk to the network: give --tls-cert and --tls-key, or --no-tls to serve it in the clear`, '--listen');
  }
  if ('host' in listen && opts.tls === false) log.warn(`serving over plain TCP (--no-tls): anyone who can reach ${listen.host}:${listen.port} can read the disk${opts.writable ? ' and write its overlay' : ''}`);
}

/** The TLS context of --tls-cert/--tls-key (and --tls-client-ca), or null; errors name the file. */
async function loadTls(opts: ExportCommandOptions): Promise<tls.SecureContextOptions | null> {
  if (!opts.tlsCert) return null;
  const read = (path: string, flag: string) =>
    fsp.readFile(path).catch((err: unknown) => {
      throw new UsageError('TLS_FILE', `cannot read ${flag} ${path}: ${(err as Error).message}`, { subject: path, cause: err });
    });
  const [cert, key, ca] = await Promise.all([read(opts.tlsCert, '--tls-cert'), read(opts.tlsKey!, '--tls-key'), opts.tlsClientCa ? read(opts.tlsClientCa, '--tls-client-ca') : undefined]);
  try {
    const options: tls.SecureContextOptions = { cert, key, ca, minVersion: 'TLSv1.2' };
    tls.createSecureContext(options); // checked here, so a bad file fails the start, not each client
    return options;
  } catch (err) {
    throw new UsageError('TLS_FILE', `--tls-cert ${opts.tlsCert} and --tls-key ${opts.tlsKey}${ca ? ` and --tls-client-ca ${opts.tlsClientCa}` : ''} do not make a TLS identity: ${(err as Error).message}`, { subject: opts.tlsCert, cause: err });
  }
}

/** The NBD URI a client connects to (qemu, nbdinfo, nbdcopy). */
function urlOf(where: NbdListenAddress, secure: boolean): string {
  if ('path' in where) return `nbd${secure ? 's' : ''}+unix:///?socket=${where.path}`;
  const host = where.host.includes(':') ? `[${where.host}]` : where.host;
  return `nbd${secure ? 's' : ''}://${host}:${where.port}/`;
}
