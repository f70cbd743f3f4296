import { concatMap, delay, of, type MonoTypeOperatorFunction, type SchedulerLike, asyncScheduler } from 'rxjs';

const MB = 1024 * 1024;

/** Milliseconds to pause after reading `bytes` at `msPerMb` (the seed's *_release_cpu_time keys). */
export function releaseCpuDelay(bytes: number, msPerMb: number): number {
  return msPerMb > 0 ? (bytes / MB) * msPerMb : 0;
}

/**
 * Throttle for any source: after each item of `length` bytes, waits `msPerMb` ms per MB
 * before passing the next, leaving CPU (and disk) to the platform. 0 = off, no delay at
 * all. Items keep their order.
 */
export function releaseCpu<T extends { length: number }>(msPerMb: number, scheduler: SchedulerLike = asyncScheduler): MonoTypeOperatorFunction<T> {
  if (!(msPerMb >= 0)) throw new RangeError(`release CPU time must be 0 or more ms per MB, got ${msPerMb}`);
  if (msPerMb === 0) return (source) => source;
  return concatMap((item: T) => of(item).pipe(delay(releaseCpuDelay(item.length, msPerMb), scheduler)));
}

/**
 * The same pause for code that reads with promises (the pipeline's read step); it ends at
 * once when `signal` aborts (a stopped sync must not wait out pauses of up to 10 s per MB).
 */
export function sleepForRead(bytes: number, msPerMb: number, signal?: AbortSignal): Promise<void> {
  const ms = releaseCpuDelay(bytes, msPerMb);
  if (ms <= 0 || signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
