import type { SyncEvent } from '../streams/SyncEvent.ts';
import { log } from './Logger.ts';

/** One log line per sync event worth one (blocks only at debug level). */
export function logSyncEvent(e: SyncEvent): void {
  const sub = log.child('sync');
  if (e.type === 'snapshot') {
    sub.info(`VM ${e.vmInfo.name} (${e.vmInfo.id}): snapshot ${e.snapshotId}`, { disks: e.disks.map((d) => `${d.id}:${d.capacity}`).join(',') });
  } else if (e.type === 'disk-start') {
    sub.verbose(`disk ${e.disk}: ${e.incremental ? 'incremental' : 'full'} sync started`, { capacity: e.capacity, parent: e.parent ?? undefined });
    for (const note of e.notes) sub.warn(`disk ${e.disk}: ${note}`);
    if (e.resumedBlocks) sub.info(`disk ${e.disk}: resuming an interrupted sync, ${e.resumedBlocks} block(s) taken from its journal`);
  } else if (e.type === 'block') {
    if (e.note) sub.warn(`disk ${e.disk}: ${e.note}`);
    if (sub.enabled('debug')) sub.debug(`disk ${e.disk}: block ${e.index}`, { offset: e.offset, bytes: e.bytes, stored: e.stored });
  } else if (e.type === 'metadata') {
    sub.verbose(`VM ${e.vm}: metadata saved`, { key: e.key, path: e.path });
  } else if (e.type === 'checkpoint') {
    sub.debug(`disk ${e.disk}: checkpoint`, { blocks: e.records });
  } else if (e.type === 'disk-done') {
    const s = e.manifest.stats;
    sub.info(`disk ${e.disk}: version ${e.manifest.version} committed`, {
      read: s.readBytes,
      parentRead: s.parentReadBytes || undefined,
      changed: s.changedBytes,
      stored: s.storedBytes,
      written: s.writtenBytes,
      ms: s.durationMs,
      changeId: e.manifest.source.changeId ?? undefined,
      parent: e.manifest.parent ?? undefined,
    });
  }
}

