import { Observable } from 'rxjs';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { ref, type Mor, type VsphereClient } from './VsphereClient.ts';

type Obj = Record<string, unknown>;

/**
 * QueryChangedDiskAreas over the whole disk, as extents in ascending order: `changeId`
 * `*` gives the allocated areas (a first sync), a changeId of an earlier snapshot the
 * areas written since. Each reply covers [startOffset, startOffset + length); the next
 * call starts where it ended, until the capacity. Cold and lazy: one call per page, the
 * next only after the consumer took the page.
 */
export function changedAreas(client: VsphereClient, vm: Mor, snapshot: Mor, deviceKey: number, capacity: number, changeId: string): Observable<Extent> {
  return new Observable<Extent>((subscriber) => {
    let stopped = false;
    (async () => {
      for (let start = 0; start < capacity && !stopped; ) {
        let info: Obj;
        try {
          [info] = (await client.call('QueryChangedDiskAreas', vm, { snapshot: ref(snapshot), deviceKey, startOffset: start, changeId })) as Obj[];
        } catch (err) {
          throw new HamalError('CBT_QUERY_FAILED', `changed areas of disk ${deviceKey} of ${vm.value} since ${changeId} are not available: ${(err as Error).message}`, {
            subject: `${vm.value}:${deviceKey}`,
            cause: err,
          });
        }
        const areas = (info?.changedArea as Obj[] | undefined) ?? [];
        for (const a of areas) subscriber.next({ offset: Number(a.start), length: Number(a.length) });
        const length = Number(info?.length ?? 0);
        if (!(length > 0)) break;
        start = Number(info.startOffset) + length;
      }
    })().then(
      () => subscriber.complete(),
      (err) => subscriber.error(err),
    );
    return () => {
      stopped = true;
    };
  });
}

/** The UUID part of a changeId (`52 3a ... 9f/17` -> `52 3a ... 9f`): when it differs, tracking was reset. */
export function changeIdEpoch(changeId: string): string {
  const slash = changeId.lastIndexOf('/');
  return slash < 0 ? changeId : changeId.slice(0, slash);
}
