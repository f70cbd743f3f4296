import { RawImage, type RawImageOptions } from './RawImage.ts';
import { NbdImage, isNbdUrl } from './NbdImage.ts';

/** Where a restore writes one version: a raw image file, a block device, an NBD export. */
export interface RestoreOutput {
  /** What the operator named, for messages. */
  readonly path: string;
  /** Written where it is: ranges not written keep their bytes (the caller writes zeros). */
  readonly inPlace: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes what was written durable (and a new file visible). */
  commit(): Promise<void>;
  /** After a failure: closes; a new file's partial image goes. */
  abandon(): Promise<void>;
}

/** Opens `out`: `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST:PORT/EXPORT` an NBD export, else a path. */
export function openRestoreOutput(out: string, capacity: number, options: RawImageOptions = {}): Promise<RestoreOutput> {
  return isNbdUrl(out) ? NbdImage.open(out, capacity, options) : RawImage.open(out, capacity, options);
}
