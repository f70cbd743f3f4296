import cliProgress from 'cli-progress';
import type { SyncEvent } from '../streams/SyncEvent.ts';
import { formatBytes } from './format.ts';

/**
 * Progress of a sync on stderr: one bar per disk on a terminal (cli-progress: bytes,
 * rate, ETA), plain lines otherwise (start and end of each disk), nothing when disabled.
 */
export class Progress {
  private readonly _enabled: boolean;
  private readonly _bars?: cliProgress.MultiBar;
  private readonly _bar = new Map<string, cliProgress.SingleBar>();
  private readonly _read = new Map<string, number>();
  private readonly _started = new Map<string, number>();

  constructor(enabled: boolean) {
    this._enabled = enabled;
    if (enabled && process.stderr.isTTY) {
      this._bars = new cliProgress.MultiBar(
        {
          stream: process.stderr,
          // The bar is the position in the disk (holes are skipped over); bytes are those read.
          format: ' {disk} |{bar}| {percentage}% of {totalH}, read {readH} at {rateH}, ETA {eta_formatted}',
          hideCursor: true,
          clearOnComplete: false,
          etaBuffer: 50,
        },
        cliProgress.Presets.shades_classic,
      );
    }
  }

  onSyncEvent(e: SyncEvent): void {
    if (!this._enabled) return;
    if (e.type === 'disk-start') {
      this._read.set(e.disk, 0);
      this._started.set(e.disk, Date.now());
      const kind = e.incremental ? `incremental from ${e.parent}` : e.parent ? `full (parent ${e.parent})` : 'full';
      if (this._bars) {
        this._bar.set(e.disk, this._bars.create(e.capacity, 0, { disk: e.disk, ...this._payload(e.disk, e.capacity) }));
      } else {
        process.stderr.write(`hamal: disk ${e.disk}: ${formatBytes(e.capacity)}, ${kind}\n`);
      }
      if (e.note) this._log(`hamal: disk ${e.disk}: ${e.note}`);
    } else if (e.type === 'block') {
      this._read.set(e.disk, (this._read.get(e.disk) ?? 0) + e.bytes);
      const bar = this._bar.get(e.disk);
      if (bar) {
        const position = Math.max(bar.getProgress() * bar.getTotal(), e.offset + e.bytes);
        bar.update(position, this._payload(e.disk, bar.getTotal()));
      }
    } else if (e.type === 'disk-done') {
      const bar = this._bar.get(e.disk);
      if (bar) bar.update(bar.getTotal(), this._payload(e.disk, bar.getTotal()));
      else {
        const s = e.manifest.stats;
        this._log(
          `hamal: disk ${e.disk}: version ${e.manifest.version} committed: read ${formatBytes(s.readBytes)}, stored ${formatBytes(s.storedBytes)}, ${s.durationMs} ms`,
        );
      }
    } else if (e.type === 'disk-failed') {
      this._bar.get(e.disk)?.stop();
    }
  }

  private _payload(disk: string, total: number) {
    const read = this._read.get(disk) ?? 0;
    const seconds = (Date.now() - (this._started.get(disk) ?? Date.now())) / 1000;
    return { totalH: formatBytes(total), readH: formatBytes(read), rateH: seconds > 0 ? `${formatBytes(read / seconds)}/s` : '-' };
  }

  private _log(line: string): void {
    if (this._bars) this._bars.log(line + '\n');
    else process.stderr.write(line + '\n');
  }

  stop(): void {
    this._bars?.stop();
  }
}
