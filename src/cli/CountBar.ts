import cliProgress from 'cli-progress';
import { formatBytes } from './format.ts';
import { log } from '../log/Logger.ts';

/**
 * One progress bar on stderr when it is a terminal (cli-progress), for long work that is
 * not a sync: a restore counts bytes, a deep verify counts chunks. Log lines go above it.
 * Elsewhere it does nothing: the command's summary line says how it ended.
 */
export class CountBar {
  private readonly _bar?: cliProgress.SingleBar;
  private readonly _started = Date.now();
  private _done = 0;

  constructor(
    what: string,
    total: number,
    private readonly _unit: 'bytes' | 'chunks',
    enabled = true,
  ) {
    if (!enabled || process.stderr.isTTY !== true) return;
    this._bar = new cliProgress.SingleBar(
      {
        stream: process.stderr,
        format: ` ${what} |{bar}| {percentage}% {doneH} of {totalH} at {rateH}, ETA {eta_formatted}`,
        hideCursor: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    this._bar.start(total, 0, this._payload(total));
    const bar = this._bar;
    log.configure({ sink: (line) => (bar.isActive ? process.stderr.write(`\r\x1b[K${line}\n`) : process.stderr.write(line + '\n')) });
  }

  add(n: number): void {
    if (!this._bar) return;
    this._done += n;
    this._bar.update(this._done, this._payload(this._bar.getTotal()));
  }

  stop(): void {
    if (!this._bar) return;
    this._bar.stop();
    log.configure({ sink: (line) => process.stderr.write(line + '\n') });
  }

  private _payload(total: number) {
    const seconds = (Date.now() - this._started) / 1000;
    const amount = (n: number) => (this._unit === 'bytes' ? formatBytes(n) : String(Math.round(n)));
    return {
      doneH: amount(this._done),
      totalH: this._unit === 'bytes' ? amount(total) : `${total} chunks`,
      rateH: `${amount(seconds > 0 ? this._done / seconds : 0)}/s`,
    };
  }
}
