import { promises as fsp } from 'node:fs';
import { createHash } from 'node:crypto';
import { defer, from, mergeMap, of, type Observable } from 'rxjs';
import type { DiskInfo, Snapshot, Source } from '../Source.ts';
import type { ChangeId } from '../ChangeId.ts';
import type { Extent } from '../../streams/Extent.ts';
import { HamalError, UsageError } from '../../errors.ts';
import { allocatedExtents } from './allocatedExtents.ts';
import { openDisk, type LocalDisk } from './LocalDisk.ts';

export interface LocalSourceOptions {
  /** VM name -> its disks. */
  vms: Record<string, readonly LocalDisk[]>;
  /**
   * Find holes with `qemu-img map` instead of reading them. Off costs a read of every
   * byte of a sparse image (at page-cache speed for holes).
   * @default true
   */
  detectHoles?: boolean;
}

/**
 * The reference Source: a "VM" is a named set of raw images or block devices. It has no
 * change tracking (every ChangeId is null), so every sync reads all allocated areas and
 * the pipeline finds changes by comparing block hashes with the parent version.
 *
 * There is no platform snapshot: the files are read live, so they must not be written
 * while a sync runs (stop the VM, or point at an LVM/ZFS/reflink snapshot).
 */
export class LocalSource implements Source {
  readonly platform = 'local';
  private readonly _options: LocalSourceOptions;

  constructor(options: LocalSourceOptions) {
    this._options = options;
  }

  async snapshot(vm: string): Promise<Snapshot> {
    const disks = this._options.vms[vm];
    if (!disks) throw new UsageError('VM_NOT_FOUND', `local source has no VM named ${vm}`, { subject: vm });
    const seen = new Set<string>();
    for (const d of disks) {
      if (seen.has(d.id)) throw new UsageError('BAD_DISK', `VM ${vm} has two disks with id ${d.id}`, { subject: d.id });
      seen.add(d.id);
    }
    const opened: Array<{ info: DiskInfo; path: string; handle: fsp.FileHandle }> = [];
    try {
      for (const d of disks) {
        const { handle, capacity } = await openDisk(d);
        opened.push({ info: { id: d.id, label: d.path, capacity, changeId: null }, path: d.path, handle });
      }
    } catch (err) {
      await Promise.all(opened.map((o) => o.handle.close()));
      throw err;
    }
    // The "snapshot" id stands for the files' state: equal ids, unchanged files, so the
    // journal of an interrupted sync may be resumed. Block devices show no mtime change.
    const state = await Promise.all(
      opened.map(async (o) => {
        const st = await o.handle.stat({ bigint: true });
        return [o.info.id, o.path, String(st.dev), String(st.ino), o.info.capacity, String(st.mtimeNs)];
      }),
    );
    const id = `local-${createHash('sha256').update(JSON.stringify(state)).digest('hex').slice(0, 16)}`;
    return new LocalSnapshot(vm, id, opened, this._options.detectHoles ?? true);
  }
}

class LocalSnapshot implements Snapshot {
  readonly platform = 'local';
  readonly vm: { id: string; name: string };
  readonly id: string;
  readonly disks: readonly DiskInfo[];
  private readonly _open: Map<string, { path: string; handle: fsp.FileHandle }>;
  private readonly _detectHoles: boolean;
  private _released = false;

  constructor(
    vm: string,
    id: string,
    opened: Array<{ info: DiskInfo; path: string; handle: fsp.FileHandle }>,
    detectHoles: boolean,
  ) {
    this.vm = { id: vm, name: vm };
    this.id = id;
    this.disks = opened.map((o) => o.info);
    this._open = new Map(opened.map((o) => [o.info.id, { path: o.path, handle: o.handle }]));
    this._detectHoles = detectHoles;
  }

  changes(disk: DiskInfo, _since: ChangeId | null): Observable<Extent> {
    const whole: Extent = { offset: 0, length: disk.capacity };
    if (!this._detectHoles || disk.capacity === 0) return of(whole);
    const { path } = this._disk(disk);
    return defer(() => from(allocatedExtents(path, disk.capacity))).pipe(
      mergeMap((extents) => from(extents ?? [whole])),
    );
  }

  async read(disk: DiskInfo, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const { path, handle } = this._disk(disk);
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      throw new HamalError('DISK_READ_FAILED', `disk ${disk.id}: read of ${path} at offset ${offset + done} failed`, {
        subject: path,
        cause: err,
      });
    }
    if (done < length) {
      throw new HamalError(
        'DISK_SHRANK',
        `disk ${disk.id}: ${path} ended at ${offset + done}, before its capacity ${disk.capacity} when the sync started`,
        { subject: path },
      );
    }
    return buf;
  }

  private _disk(disk: DiskInfo) {
    const d = this._open.get(disk.id);
    if (!d || this._released) throw new HamalError('DISK_CLOSED', `disk ${disk.id} is not open in snapshot ${this.id}`);
    return d;
  }

  async release(): Promise<void> {
    if (this._released) return;
    this._released = true;
    await Promise.all([...this._open.values()].map((d) => d.handle.close()));
  }
}
