import { exhaustMap, interval, type Subscription } from 'rxjs';
import { HamalError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import type { FcClient } from './FcClient.ts';

/** Where a volume snapshot's data is served, as GET .../backupresources/{taskId} answers (eSDK model BackupResource). */
export interface ChannelInfo {
  hostIP: string;
  hostPort: number;
  resourceUrl: string;
  token: string;
  targetFile?: string;
  /** PEM of the channel's certificate, for `lanssl`. */
  caCert?: string;
}

export interface BackupResourceOptions {
  snapUrn: string;
  volCBTCreateTime?: string;
  /** The proxy's address the VRM opens the channel for. */
  ip: string;
  transMode: 'lan' | 'lanssl';
  /** Longest wait for the preparing task. */
  timeoutMs: number;
  /**
   * Seconds the VRM keeps the resource without an extension (60..7200; eSDK
   * CreateBackupResourceReq). Every half of it hamal adds a half (PUT), so a slow read
   * never loses its channel and a crashed proxy's lapses within this time. @default 600
   */
  leaseSeconds?: number;
}

/**
 * The lease on one volume snapshot's data channel (eSDK BackupOperationResource): POST
 * {volume}/backupresources starts a task; once it succeeds, GET .../{taskId} names the host,
 * port, resource and token; a timer extends the lease (PUT {delay}) while it is open;
 * `close` releases it (DELETE), as the VRM otherwise holds it until the lease lapses.
 */
export class BackupResource {
  private constructor(
    private readonly _fc: FcClient,
    private readonly _path: string,
    readonly info: ChannelInfo,
    private readonly _renewal: Subscription,
    private readonly _what: string,
  ) {}

  static async open(fc: FcClient, volume: { uri: string; name: string }, o: BackupResourceOptions): Promise<BackupResource> {
    const what = `data channel of volume ${volume.name}`;
    const lease = o.leaseSeconds ?? 600;
    const t = await fc.call('POST', `${volume.uri}/backupresources`, what, {
      delay: lease,
      taskType: 'CBTBackup',
      ip: o.ip,
      snapUrn2: o.snapUrn,
      ...(o.volCBTCreateTime ? { volCBTCreateTime: o.volCBTCreateTime } : {}),
      transMode: o.transMode,
    });
    const taskUri = String(t.taskUri ?? '');
    // The resource is named by the task's id, the last part of its uri ("/tasks/4962" -> 4962).
    const taskId = /\/tasks\/([^/?#]+)$/.exec(taskUri)?.[1];
    if (!taskId) throw new HamalError('FC_BAD_REPLY', `${what}: the VRM answered no task uri (${JSON.stringify(t).slice(0, 200)})`, { subject: volume.uri });
    const path = `${volume.uri}/backupresources/${encodeURIComponent(taskId)}`;
    const release = () => fc.call('DELETE', path, what).then(() => undefined, () => undefined);
    try {
      await fc.waitTask(taskUri, what, o.timeoutMs);
      const info = channelInfo(await fc.call('GET', path, what), what, volume.uri);
      log.addSecret(info.token);
      const half = Math.max(30, Math.floor(lease / 2));
      // exhaustMap: a PUT that hangs does not queue the next ones behind it.
      const renewal = interval(half * 1000)
        .pipe(exhaustMap(() => fc.call('PUT', path, what, { delay: half }).catch((err: Error) => log.child('fusion_compute').warn(`${what}: lease not extended: ${err.message}`))))
        .subscribe();
      return new BackupResource(fc, path, info, renewal, what);
    } catch (err) {
      await release();
      throw err;
    }
  }

  /** Releases the channel; a failure is logged (the lease lapses by itself). */
  async close(): Promise<void> {
    this._renewal.unsubscribe();
    await this._fc.call('DELETE', this._path, this._what).catch((err: Error) => log.child('fusion_compute').warn(`${this._what} not released (${err.message}); it lapses by itself`));
  }
}

function channelInfo(r: Record<string, unknown>, what: string, subject: string): ChannelInfo {
  if (r.status !== undefined && r.status !== 'success') {
    throw new HamalError('FC_DATA_CHANNEL', `${what} is ${String(r.status)}${r.reasonDes ? `: ${String(r.reasonDes)}` : ''}`, { subject });
  }
  const port = Number(r.hostPort);
  if (typeof r.hostIP !== 'string' || !r.hostIP || !Number.isInteger(port) || port < 1 || port > 65535 || typeof r.token !== 'string' || !r.token || typeof r.resourceUrl !== 'string') {
    throw new HamalError('FC_DATA_CHANNEL', `${what}: the VRM gave no usable hostIP, hostPort, resourceUrl and token (status ${String(r.status ?? 'unknown')})`, { subject });
  }
  return {
    hostIP: r.hostIP,
    hostPort: port,
    resourceUrl: r.resourceUrl,
    token: r.token,
    targetFile: typeof r.targetFile === 'string' ? r.targetFile : undefined,
    caCert: typeof r.caCert === 'string' && r.caCert ? r.caCert : undefined,
  };
}
