import { defer, Observable, type Subscription } from 'rxjs';

/**
 * Releases under way after an unsubscription: a process that stops on a signal awaits
 * them (snapshots removed, locks dropped) before it exits.
 */
export const releasing = new Set<Promise<void>>();

/** Adds `p` to `releasing` until it settles. */
export function trackRelease(p: Promise<void>): void {
  releasing.add(p);
  const done = () => void releasing.delete(p);
  p.then(done, done);
}

/**
 * Settles once every release under way has ended, including those they started: what an
 * embedder that unsubscribed from syncVm awaits before it exits.
 */
export async function releasesSettled(): Promise<void> {
  while (releasing.size) await Promise.allSettled([...releasing]);
}

/** The releases added to `releasing` since `before` was taken. */
function startedSince(before: ReadonlySet<Promise<void>>): Promise<void>[] {
  return [...releasing].filter((p) => !before.has(p));
}

/**
 * RxJS's `using` for resources whose release is asynchronous (a platform snapshot, a
 * repository lock): acquires, runs `body`, and releases once on completion, on error
 * (then rethrows) and on unsubscription alike. Completion and errors wait for the release.
 * Releases the body started as it stopped (a nested resource, a last checkpoint) end
 * before this one starts: a lock outlives the snapshot taken under it. Unsubscribed while
 * acquiring, the resource is released as soon as it is acquired.
 */
export function usingResource<R, T>(
  acquire: () => Promise<R>,
  release: (resource: R) => Promise<void>,
  body: (resource: R) => Observable<T>,
): Observable<T> {
  return new Observable<T>((subscriber) => {
    let closed = false;
    let inner: Subscription | undefined;
    let releaseOnce: () => Promise<void> = async () => {};
    const acquired = Promise.resolve().then(acquire);
    // Called as the body stops: its teardown runs synchronously after, so a microtask later
    // the releases it started are in `releasing`. Tracked too: a subscriber that unsubscribed
    // meanwhile (serve's stop) no longer waits for this stream, a process exit must.
    const releaseAfterBody = (then: (err?: unknown) => void) => {
      const before = new Set(releasing);
      const p = Promise.resolve()
        .then(() => Promise.allSettled(startedSince(before)))
        .then(() => releaseOnce())
        .then(() => then(), (err: unknown) => then(err));
      before.add(p); // not waiting for itself
      trackRelease(p);
    };
    acquired.then(
      (resource) => {
        let done: Promise<void> | undefined;
        releaseOnce = () => (done ??= release(resource));
        if (closed) return;
        inner = defer(() => body(resource)).subscribe({
          next: (value) => subscriber.next(value),
          complete: () => releaseAfterBody((err) => (err === undefined ? subscriber.complete() : subscriber.error(err))),
          error: (bodyErr) => releaseAfterBody((err) => subscriber.error(err ?? bodyErr)),
        });
      },
      (err) => subscriber.error(err),
    );
    return () => {
      closed = true;
      const before = new Set(releasing);
      inner?.unsubscribe();
      const started = startedSince(before);
      trackRelease(acquired.then(() => Promise.allSettled(started)).then(() => releaseOnce()).catch(() => {}));
    };
  });
}
