import { HamalError } from '../../errors.ts';
import type { VsphereClient } from './VsphereClient.ts';
import { DatastoreFile } from './DatastoreFile.ts';
import { MAX_DESCRIPTOR_BYTES, NO_PARENT, parseVmdkDescriptor, type VmdkDescriptor } from './VmdkDescriptor.ts';
import type { VmDisk } from './inventory.ts';
import { objectProps } from './inventory.ts';

/** Datastore types whose files `/folder` serves as they are (vSphere API: DatastoreSummary.type). */
const FILE_DATASTORES = new Set(['VMFS', 'NFS', 'NFS41', 'NFSV41']);

/** Extent types whose bytes are the disk's bytes, in order (VMDK spec, "Extent Descriptions"). */
const FLAT_EXTENTS = new Set(['FLAT', 'VMFS']);

/** A part of the disk: `length` bytes at `start`, from `file` at `fileOffset`, or zeros. */
interface Segment {
  start: number;
  length: number;
  file: DatastoreFile | null;
  fileOffset: number;
}

const SECTOR = 512;

/**
 * A snapshot's disk read over `/folder`, the `https` transport: the backing's file is a
 * descriptor (VMware's Virtual Disk Format), the data lies in the flat extents it names.
 * Only what reads byte-exact that way is opened: a disk of flat extents (thick or thin)
 * with no parent, on a datastore of plain files. A delta (the VM had snapshots before
 * ours, a linked clone), a sparse or SEsparse extent, an RDM, vSAN or vVol is refused
 * naming the disk, since reading its base alone would store data that is not the disk's.
 */
export class FlatDisk {
  private constructor(
    readonly name: string,
    private readonly _segments: Segment[],
  ) {}

  static async open(client: VsphereClient, datacenter: string, disk: VmDisk): Promise<FlatDisk> {
    const refuse = (why: string) =>
      new HamalError('VMDK_NOT_FLAT', `disk ${disk.label} (${disk.fileName}) cannot be read over https: ${why}; read it with transport "nbd" (VMware's VDDK)`, { subject: disk.fileName });
    if (disk.parentFileName) throw refuse(`its snapshot backing is a delta of ${disk.parentFileName} (the VM had snapshots before this sync, or it is a linked clone)`);
    if (disk.backingType && disk.backingType !== 'VirtualDiskFlatVer2BackingInfo') throw refuse(`its backing is a ${disk.backingType}`);
    if (disk.datastore) {
      const ds = await objectProps(client, { type: 'Datastore', value: disk.datastore }, ['name', 'summary.type']);
      const type = String(ds['summary.type'] ?? '');
      if (!FILE_DATASTORES.has(type.toUpperCase())) throw refuse(`datastore ${String(ds.name)} is of type ${type || 'unknown'}, whose disks /folder does not serve as files`);
    }
    const descriptorFile = new DatastoreFile(client, datacenter, disk.fileName);
    const descriptor = parseVmdkDescriptor(await descriptorFile.head(MAX_DESCRIPTOR_BYTES), disk.fileName);
    return new FlatDisk(disk.fileName, segmentsOf(descriptor, descriptorFile, disk.capacity, refuse));
  }

  /** Exactly `length` bytes at `offset`, into `into` when given; `max` bytes per request at most. */
  async read(offset: number, length: number, into: Buffer, max: number): Promise<Buffer> {
    const last = this._segments[this._segments.length - 1];
    if (offset < 0 || !last || offset + length > last.start + last.length) {
      throw new HamalError('DATASTORE_READ_FAILED', `read of ${this.name}: ${length} bytes at ${offset} lie past its extents`, { subject: this.name });
    }
    const out = into.subarray(0, length);
    for (const s of this._segments) {
      const from = Math.max(offset, s.start);
      const to = Math.min(offset + length, s.start + s.length);
      if (from >= to) continue;
      const part = out.subarray(from - offset, to - offset);
      if (!s.file) {
        part.fill(0);
        continue;
      }
      for (let at = 0; at < part.length; at += max) {
        const n = Math.min(max, part.length - at);
        await s.file.read(s.fileOffset + (from - s.start) + at, n, part.subarray(at, at + n));
      }
    }
    return out;
  }
}

/** The descriptor's extents as parts of the disk, or why they cannot be read as its bytes. */
function segmentsOf(d: VmdkDescriptor, descriptor: DatastoreFile, capacity: number, refuse: (why: string) => Error): Segment[] {
  if (d.parentCID !== NO_PARENT) throw refuse(`its descriptor (createType ${d.createType}) is a delta of ${d.parentFileNameHint ?? `parent CID ${d.parentCID}`}`);
  const segments: Segment[] = [];
  let start = 0;
  for (const e of d.extents) {
    if (e.type !== 'ZERO' && !FLAT_EXTENTS.has(e.type)) throw refuse(`extent ${e.file ?? ''} is of type ${e.type} (createType ${d.createType})`);
    if (e.access === 'NOACCESS') throw refuse(`extent ${e.file ?? ''} is marked NOACCESS`);
    if (e.file !== undefined && !isExtentName(e.file, descriptor.name)) throw refuse(`extent "${e.file}" is not a file beside the descriptor`);
    const length = e.sectors * SECTOR;
    segments.push({ start, length, file: e.file === undefined || e.type === 'ZERO' ? null : new DatastoreFile(descriptor.client, descriptor.datacenter, descriptor.sibling(e.file)), fileOffset: e.offset * SECTOR });
    start += length;
  }
  // Less would leave part of the disk unread; more is not the disk vSphere describes.
  if (start < capacity || start - capacity >= 1024) throw refuse(`its extents cover ${start} bytes, not its capacity of ${capacity}`);
  return segments;
}

/**
 * An extent file ESXi would write: a plain name in the descriptor's folder (or below it),
 * not a folder, not a way out of it, not the descriptor itself (whose text is no data).
 */
function isExtentName(file: string, descriptor: string): boolean {
  const parts = file.split('/');
  const last = parts[parts.length - 1]!;
  return !file.startsWith('/') && !file.includes('\\') && !parts.some((p) => p === '..' || p === '.' || p === '') && last !== descriptor.replace(/^.*[\]/]\s*/, '');
}
