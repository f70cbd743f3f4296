import type { DiskInfo, Snapshot } from '../sources/Source.ts';
import type { Repository } from '../repo/Repository.ts';
import type { ChunkId } from '../repo/ChunkId.ts';
import type { BlockRef } from './BlockRef.ts';
import type { Extent } from './Extent.ts';
import type { Slots } from './Slots.ts';
import { sleepForRead } from './releaseCpu.ts';
import { HamalError, IntegrityError } from '../errors.ts';
import { oneLine } from '../log/oneLine.ts';
import { copyBytes } from '../copyBytes.ts';

/** Parts of a block closer than this are read as one: reading the gap costs less than another request. */
export const MERGE_GAP = 64 * 1024;
/** Parts are read in whole pages: sector- and page-based backends (O_DIRECT, NBD servers) read them as they are. */
export const READ_ALIGN = 4096;

export interface BlockReaderOptions {
  readonly snapshot: Snapshot;
  readonly disk: DiskInfo;
  readonly repo: Repository;
  /**
   * Incremental: the parent's block map, whose chunks hold what the extents leave out.
   * Full: null, what they leave out is zero.
   */
  readonly base: ReadonlyArray<ChunkId | null> | null;
  /** DiskSyncOptions.patchBelow. */
  readonly patchBelow: number;
  readonly readers: Slots;
  readonly msPerMb: number;
  /** Aborted when the sync stops: reads in flight skip their CPU-release pause. */
  readonly stopping: AbortSignal;
}

export interface BlockRead {
  /** The block's bytes: a view of the buffer given, or the source's own. */
  readonly data: Buffer;
  /** Bytes read from the source. */
  readonly sourceBytes: number;
  /** Bytes of the parent's chunk read from the repository to patch the changed parts onto. */
  readonly baseBytes: number;
  /** Why the block was read whole although it could have been patched (the parent's chunk failed). */
  readonly note?: string;
}

/**
 * Reads one block of a disk for a sync: whole from the source, or, when the source's
 * extents cover little of it, only those parts, written over its base (the parent's chunk
 * from the repository, or zeros in a full sync). Source reads hold a reader slot.
 */
export class BlockReader {
  constructor(private readonly o: BlockReaderOptions) {
    if (!(o.patchBelow >= 0 && o.patchBelow <= 1)) throw new RangeError(`patchBelow must be a fraction from 0 to 1, got ${o.patchBelow}`);
  }

  /** `buf` must hold a block plus the repository's chunk envelope (the base is read into it). */
  async read(ref: BlockRef, buf: Buffer): Promise<BlockRead> {
    const { ranges, baseBytes, note } = await this.base(ref, buf);
    return this.o.readers.use(async () => {
      const { snapshot, disk } = this.o;
      const data = ranges ? await this.readParts(ref, ranges, buf) : this.exact(await snapshot.read(disk, ref.offset, ref.length, buf), ref.offset, ref.length);
      const sourceBytes = ranges ? totalLength(ranges) : ref.length;
      await sleepForRead(sourceBytes, this.o.msPerMb, this.o.stopping);
      return { data, sourceBytes, baseBytes, note };
    });
  }

  /** The ranges to read when the block is patched, with its base in `buf`; null ranges: read it whole. */
  private async base(ref: BlockRef, buf: Buffer): Promise<{ ranges: Extent[] | null; baseBytes: number; note?: string }> {
    const ranges = this.partsToRead(ref);
    if (!ranges) return { ranges, baseBytes: 0 };
    try {
      return { ranges, baseBytes: await this.readBase(ref, buf) };
    } catch (err) {
      // The source has every byte: a missing or damaged parent chunk must not fail this sync.
      return { ranges: null, baseBytes: 0, note: `block ${ref.index}: read whole from the source, the parent's chunk could not be read: ${oneLine((err as Error).message)}` };
    }
  }

  /** Reads each range over the base in `buf`; returns the block. */
  private async readParts(ref: BlockRef, ranges: Extent[], buf: Buffer): Promise<Buffer> {
    const data = buf.subarray(0, ref.length);
    for (const part of ranges) {
      const at = part.offset - ref.offset;
      const into = data.subarray(at, at + part.length);
      const got = this.exact(await this.o.snapshot.read(this.o.disk, part.offset, part.length, into), part.offset, part.length);
      placeIn(into, got);
    }
    return data;
  }

  /** A read that returned another length would leave stale bytes in a patched block: never taken. */
  private exact(got: Buffer, offset: number, length: number): Buffer {
    if (got.length === length) return got;
    throw new HamalError('SHORT_READ', `disk ${this.o.disk.label}: the source returned ${got.length} bytes for ${length} at offset ${offset}`, { subject: this.o.disk.label });
  }

  /**
   * The ranges to read from the source when patching pays: the block's parts widened to
   * READ_ALIGN (within the block) with gaps under MERGE_GAP filled, if they total less than
   * patchBelow of the block (a full sync, whose base costs nothing, patches whatever they
   * leave out). null: read it whole.
   */
  partsToRead(ref: BlockRef): Extent[] | null {
    if (!ref.parts || this.o.patchBelow <= 0) return null;
    const end = ref.offset + ref.length;
    const ranges: Array<{ offset: number; length: number }> = [];
    for (const p of ref.parts) {
      const start = Math.max(ref.offset, Math.floor(p.offset / READ_ALIGN) * READ_ALIGN);
      const stop = Math.min(end, Math.ceil((p.offset + p.length) / READ_ALIGN) * READ_ALIGN);
      const last = ranges[ranges.length - 1];
      if (last && start - (last.offset + last.length) < MERGE_GAP) last.length = Math.max(last.length, stop - last.offset);
      else ranges.push({ offset: start, length: stop - start });
    }
    const bytes = totalLength(ranges);
    const worth = this.o.base === null ? bytes < ref.length : bytes < this.o.patchBelow * ref.length;
    return worth ? ranges : null;
  }

  /** Fills buf[0, ref.length) with the block's base; returns the bytes read from the repository. */
  private async readBase(ref: BlockRef, buf: Buffer): Promise<number> {
    const id = this.o.base?.[ref.index] ?? null;
    if (id === null) {
      buf.fill(0, 0, ref.length);
      return 0;
    }
    const chunk = await this.o.repo.readChunk(id, true, buf);
    if (chunk.length !== ref.length) {
      throw new IntegrityError('CHUNK_SIZE', `chunk ${id} of block ${ref.index} holds ${chunk.length} bytes, the block ${ref.length}`, { subject: id });
    }
    placeIn(buf, chunk);
    return ref.length;
  }
}

function totalLength(ranges: Extent[]): number {
  return ranges.reduce((sum, r) => sum + r.length, 0);
}

/** Puts `got` at the start of `target`; a reader that filled `target` itself is not copied over. */
function placeIn(target: Buffer, got: Buffer): void {
  if (got.buffer !== target.buffer || got.byteOffset !== target.byteOffset) copyBytes(got, target);
}
