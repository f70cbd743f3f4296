import { defer, fromEvent, mergeMap, takeUntil, throwError, type MonoTypeOperatorFunction } from 'rxjs';

/**
 * Fails the stream with `error()` once `signal` is aborted (at once if it already is).
 * An error, not an unsubscription: the resources the stream holds are released before it
 * reaches the subscriber (usingResource), so awaiting it awaits the cleanup.
 */
export function untilAborted<T>(signal: AbortSignal | undefined, error: () => Error): MonoTypeOperatorFunction<T> {
  if (!signal) return (source) => source;
  const aborted = defer(() => (signal.aborted ? throwError(error) : fromEvent(signal, 'abort').pipe(mergeMap(() => throwError(error)))));
  return (source) => source.pipe(takeUntil(aborted));
}
