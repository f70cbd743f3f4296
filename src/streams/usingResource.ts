import { catchError, concat, defer, from, ignoreElements, mergeMap, Observable } from 'rxjs';

/**
 * Releases under way after an unsubscription: a process that stops on a signal awaits
 * them (snapshots removed, locks dropped) before it exits.
 */
export const releasing = new Set<Promise<void>>();

/**
 * RxJS's `using` for resources whose release is asynchronous (a platform snapshot, a
 * repository lock): acquires, runs `body`, and releases once on completion, on error
 * (then rethrows) and on unsubscription alike. Completion and errors wait for the release.
 */
export function usingResource<R, T>(
  acquire: () => Promise<R>,
  release: (resource: R) => Promise<void>,
  body: (resource: R) => Observable<T>,
): Observable<T> {
  return defer(() => from(acquire())).pipe(
    mergeMap((resource) => {
      let done: Promise<void> | undefined;
      const releaseOnce = () => (done ??= release(resource));
      const released = defer(releaseOnce).pipe(ignoreElements());
      const events = concat(defer(() => body(resource)), released).pipe(
        catchError((err) => concat(released, defer(() => Promise.reject(err)))),
      );
      return new Observable<T>((subscriber) => {
        const sub = events.subscribe(subscriber);
        return () => {
          sub.unsubscribe();
          const p = releaseOnce().catch(() => {});
          releasing.add(p);
          void p.then(() => releasing.delete(p));
        };
      });
    }),
  );
}
