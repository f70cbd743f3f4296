import { Observable } from 'rxjs';

/**
 * Backpressure for sources that push (a child process's stdout, an HTTP body): pulls the
 * next item from `source` only while fewer than `concurrency` projections run, so a slow
 * consumer pauses the producer instead of queueing its data. (RxJS's `from(asyncIterable)`
 * pulls as fast as it can and `mergeMap` queues what exceeds its cap: unbounded memory.)
 *
 * Memory: at most `concurrency` items in projection, plus what the source itself buffers
 * (a Node stream's highWaterMark). Unsubscribing stops pulling and returns the iterator,
 * which destroys a Node stream.
 */
export function pullMap<T, R>(source: AsyncIterable<T>, project: (item: T) => Promise<R>, concurrency: number): Observable<R> {
  if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
    throw new RangeError(`pullMap concurrency must be an integer of at least 1, got ${concurrency}`);
  }
  return new Observable<R>((subscriber) => {
    const iterator = source[Symbol.asyncIterator]();
    let active = 0;
    let pulling = false;
    let ended = false;
    let closed = false;

    const finish = () => {
      if (ended && active === 0 && !pulling && !closed) {
        closed = true;
        subscriber.complete();
      }
    };
    const fail = (err: unknown) => {
      if (closed) return;
      closed = true;
      subscriber.error(err);
    };
    const pump = async () => {
      if (pulling) return;
      pulling = true;
      try {
        while (!closed && !ended && active < concurrency) {
          const next = await iterator.next();
          if (closed) return;
          if (next.done) {
            ended = true;
            break;
          }
          active++;
          project(next.value).then(
            (r) => {
              active--;
              if (closed) return;
              subscriber.next(r);
              void pump();
              finish();
            },
            fail,
          );
        }
      } catch (err) {
        fail(err);
      } finally {
        pulling = false;
      }
      finish();
    };
    void pump();
    return () => {
      closed = true;
      void iterator.return?.();
    };
  });
}
