import { Observable } from 'rxjs';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError } from '../../errors.ts';
import { ref, type Mor, type VsphereClient } from './VsphereClient.ts';

type Obj = Record<string, unknown>;

/** Where a disk's changed areas are asked for: the VM, the snapshot, the disk's device key. */
export interface CbtDisk {
  vm: Mor;
  snapshot: Mor;
  deviceKey: number;
  capacity: number;
}

/**
 * One QueryChangedDiskAreas call, the page starting at `start`. A fault the server
 * answered (InvalidArgument, FileFault: it does not know `changeId`) stays a VsphereFault
 * as `cause`, so a caller can tell it from a lost connection.
 */
export async function queryChangedAreas(client: VsphereClient, d: CbtDisk, start: number, changeId: string): Promise<unknown> {
  try {
    const [info] = await client.call('QueryChangedDiskAreas', d.vm, { snapshot: ref(d.snapshot), deviceKey: d.deviceKey, startOffset: start, changeId });
    return info;
  } catch (err) {
    throw new HamalError('CBT_QUERY_FAILED', `changed areas of disk ${d.deviceKey} of ${d.vm.value} since ${changeId} are not available: ${(err as Error).message}`, {
      subject: `${d.vm.value}:${d.deviceKey}`,
      cause: err,
      retryable: (err as HamalError).retryable === true,
    });
  }
}

/**
 * QueryChangedDiskAreas over the whole disk, as extents in ascending order: `changeId`
 * `*` gives the allocated areas (a first sync), a changeId of an earlier snapshot the
 * areas written since. Each reply covers [startOffset, startOffset + length); the next
 * call starts where it ended, until the capacity. Cold and lazy: one call per page, the
 * next only after the consumer took the page. `first`: the reply for offset 0, when a
 * probe already asked for it.
 */
export function changedAreas(client: VsphereClient, d: CbtDisk, changeId: string, first?: unknown): Observable<Extent> {
  return new Observable<Extent>((subscriber) => {
    let stopped = false;
    (async () => {
      for (let start = 0; start < d.capacity && !stopped; ) {
        const info = start === 0 && first !== undefined ? first : await queryChangedAreas(client, d, start, changeId);
        const page = changedAreasPage(info, start, d.capacity, `disk ${d.deviceKey} of ${d.vm.value}`);
        for (const e of page.extents) subscriber.next(e);
        if (page.next === null) break;
        start = page.next;
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

/**
 * One QueryChangedDiskAreas reply, checked: the server is not trusted to send numbers, to
 * stay inside the disk or to move forward (a page that does not would loop for ever).
 * `next` is where the next call starts, null when the disk is covered.
 */
export function changedAreasPage(info: unknown, start: number, capacity: number, where: string): { extents: Extent[]; next: number | null } {
  const bad = (why: string) => new HamalError('CBT_BAD_REPLY', `changed areas of ${where}: ${why}`, { subject: where });
  // DiskChangeInfo is the method's required return, startOffset and length its required
  // properties (vSphere Web Services API reference, DiskChangeInfo). A reply without them,
  // or one covering nothing short of the capacity, would end the listing early and leave
  // the rest of the disk's changes unsynced: it is refused, never read as "no more".
  if (typeof info !== 'object' || info === null) throw bad('the reply is not a DiskChangeInfo');
  const i = info as Obj;
  const num = (v: unknown, what: string) => {
    const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d{1,16}$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n) || n < 0) throw bad(`${what} ${JSON.stringify(v)?.slice(0, 40)} is not a whole number of bytes, 0 or more`);
    return n;
  };
  const length = num(i.length, 'length');
  const pageStart = num(i.startOffset, 'startOffset');
  const end = pageStart + length;
  if (pageStart > start || end <= start) throw bad(`the reply covers [${pageStart}, ${end}), which does not move on from ${start}`);
  const raw = i.changedArea === undefined ? [] : Array.isArray(i.changedArea) ? i.changedArea : [i.changedArea];
  const extents: Extent[] = [];
  for (const a of raw as unknown[]) {
    if (typeof a !== 'object' || a === null) throw bad('a changedArea is not an element');
    const offset = num((a as Obj).start, 'changedArea start');
    const len = num((a as Obj).length, 'changedArea length');
    if (offset < pageStart || offset + len > Math.min(end, capacity)) throw bad(`area [${offset}, +${len}) lies outside the page [${pageStart}, ${end}) or the disk (${capacity} bytes)`);
    if (len > 0) extents.push({ offset, length: len });
  }
  return { extents, next: end < capacity ? end : null };
}

/** The UUID part of a changeId (`52 3a ... 9f/17` -> `52 3a ... 9f`): when it differs, tracking was reset. */
export function changeIdEpoch(changeId: string): string {
  const slash = changeId.lastIndexOf('/');
  return slash < 0 ? changeId : changeId.slice(0, slash);
}
