import cliProgress from 'cli-progress';
import type { SyncEvent } from '../streams/SyncEvent.ts';
import { formatBytes } from './format.ts';
import { log } from '../log/Logger.ts';

/**
 * Progress of a sync on stderr when it is a terminal: one bar per disk (cli-progress:
 * position, bytes read, rate, ETA). Elsewhere the log's lines at disk start and end serve.
 */
export class Progress {
  private readonly _enabled: boolean;
  private readonly _bars?: cliProgress.MultiBar;
  private readonly _bar = new Map<string, cliProgress.SingleBar>();
  private readonly _read = new Map<string, number>();
  private readonly _started = new Map<string, number>();

  constructor(enabled: boolean) {
    this._enabled = enabled && process.stderr.isTTY === true;
    if (this._enabled) {
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
      // Log lines go above the bars instead of through them.
      const bars = this._bars;
      log.configure({ sink: (line) => bars.log(line + '\n') });
    }
  }

  onSyncEvent(e: SyncEvent): void {
    if (!this._enabled) return;
    if (e.type === 'disk-start') {
      this._read.set(e.disk, 0);
      this._started.set(e.disk, Date.now());
      const kind = e.incremental ? `incremental from ${e.parent}` : e.parent ? `full (parent ${e.parent})` : 'full';
      this._bar.set(e.disk, this._bars!.create(e.capacity, 0, { disk: `${e.disk} (${kind})`, ...this._payload(e.disk, e.capacity) }));
    } else if (e.type === 'block') {
      this._read.set(e.disk, (this._read.get(e.disk) ?? 0) + e.bytes);
      const bar = this._bar.get(e.disk);
      if (bar) {
        const position = Math.max(bar.getProgress() * bar.getTotal(), e.offset + e.bytes);
        bar.update(position, this._payload(e.disk, bar.getTotal()));
      }
    } else if (e.type === 'disk-done') {
      const bar = this._bar.get(e.disk);
      bar?.update(bar.getTotal(), this._payload(e.disk, bar.getTotal()));
    } else if (e.type === 'disk-failed') {
      this._bar.get(e.disk)?.stop();
    }
  }

  private _payload(disk: string, total: number) {
    const read = this._read.get(disk) ?? 0;
    const seconds = (Date.now() - (this._started.get(disk) ?? Date.now())) / 1000;
    return { totalH: formatBytes(total), readH: formatBytes(read), rateH: seconds > 0 ? `${formatBytes(read / seconds)}/s` : '-' };
  }

  stop(): void {
    if (!this._bars) return;
    this._bars.stop();
    log.configure({ sink: (line) => process.stderr.write(line + '\n') });
  }
}
