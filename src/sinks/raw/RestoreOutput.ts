import { RawImage, type RawImageOptions } from './RawImage.ts';
import { NbdImage, isNbdUrl } from './NbdImage.ts';
import { RbdImage, isRbdUrl } from './RbdImage.ts';

/** Where a restore writes one version: a raw image file, a block device, an NBD export, an RBD image. */
export interface RestoreOutput {
  /** What the operator named, for messages. */
  readonly path: string;
  /** Written where it is: ranges not written keep their bytes (the caller writes zeros). */
  readonly inPlace: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Zeros, where the output has a cheaper way than writing them (RBD: a discard). */
  zero?(offset: number, length: number): Promise<void>;
  /** Makes what was written durable (and a new file visible). */
  commit(): Promise<void>;
  /** After a failure: closes; a new file's partial image goes. */
  abandon(): Promise<void>;
}

export interface RestoreOutputOptions extends RawImageOptions {
  /** The version written, and the one the output holds (`--from`), for outputs that record it (RBD snapshots). */
  version: string;
  from: string | null;
}

/**
 * Opens `out`: `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST:PORT/EXPORT` an NBD export,
 * `rbd:POOL/IMAGE[:id=..][:conf=..][:keyring=..]` an RBD image, else a path.
 */
export function openRestoreOutput(out: string, capacity: number, options: RestoreOutputOptions): Promise<RestoreOutput> {
  if (isNbdUrl(out)) return NbdImage.open(out, capacity, options);
  if (isRbdUrl(out)) return RbdImage.open(out, capacity, options);
  return RawImage.open(out, capacity, options);
}
