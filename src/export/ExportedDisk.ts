import type { ExportExtent, ExportPiece, NbdExport } from './NbdExport.ts';
import type { VersionImage } from './VersionImage.ts';
import type { Overlay } from './Overlay.ts';

/**
 * One stored version as an NBD export: read-only, or with a copy-on-write overlay that
 * takes every write (the repository is never written). Blocks the overlay holds are
 * read from it, all others from the version.
 */
export class ExportedDisk implements NbdExport {
  readonly writable: boolean;
  readonly preferredBlockSize: number;
  private _zeros: Buffer | null = null;

  constructor(
    readonly image: VersionImage,
    readonly overlay: Overlay | null = null,
  ) {
    this.writable = overlay !== null;
    // The largest power of two dividing the block size: aligned writes need no copy-in.
    this.preferredBlockSize = Math.min(image.blockSize & -image.blockSize, 32 * 1024 * 1024);
  }

  get size(): number {
    return this.image.size;
  }

  async read(offset: number, length: number): Promise<ExportPiece[]> {
    if (!this.overlay) return this.image.read(offset, length);
    const parts = await Promise.all(this._runs(offset, length).map((r) => (r.held ? this._readOverlay(r.offset, r.length) : this.image.read(r.offset, r.length))));
    return parts.flat();
  }

  extents(offset: number, length: number): ExportExtent[] {
    const held = this.overlay;
    return this.image.extents(offset, length, held ? (i) => held.holds(i) : undefined);
  }

  cache(offset: number, length: number): Promise<void> {
    const held = this.overlay;
    return this.image.warm(offset, length, held ? (i) => held.holds(i) : undefined);
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.overlay!.write(offset, data, (i) => this.image.block(i));
  }

  /**
   * Zeros, one block at a time: a block the range covers whole is written whole, so its
   * version block is never fetched (a corrupt or far-away chunk cannot fail it). Real
   * zeros land in the overlay: Node cannot punch holes.
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    const bs = this.image.blockSize;
    this._zeros ??= Buffer.alloc(bs);
    for (let at = offset; at < offset + length; ) {
      const end = Math.min(offset + length, (Math.floor(at / bs) + 1) * bs);
      await this.write(at, this._zeros.subarray(0, end - at));
      at = end;
    }
  }

  /** Trimmed ranges keep their bytes: the spec lets a server discard nothing. */
  async trim(): Promise<void> {}

  flush(): Promise<void> {
    return this.overlay!.flush();
  }

  private async _readOverlay(offset: number, length: number): Promise<ExportPiece[]> {
    return [{ offset, length, data: await this.overlay!.read(offset, length) }];
  }

  /** [offset, offset + length) cut where the overlay starts or stops holding blocks. */
  private _runs(offset: number, length: number): Array<{ offset: number; length: number; held: boolean }> {
    const bs = this.image.blockSize;
    const runs: Array<{ offset: number; length: number; held: boolean }> = [];
    for (let at = offset; at < offset + length; ) {
      const i = Math.floor(at / bs);
      const end = Math.min(offset + length, (i + 1) * bs);
      const held = this.overlay!.holds(i);
      const last = runs[runs.length - 1];
      if (last && last.held === held) last.length += end - at;
      else runs.push({ offset: at, length: end - at, held });
      at = end;
    }
    return runs;
  }
}
