import { HamalError } from '../../errors.ts';

/**
 * One extent line of a descriptor (VMware, Virtual Disk Format 1.1, "Extent
 * Descriptions"): `RW 2097152 VMFS "x-flat.vmdk"`, `RW 4192256 FLAT "x-f001.vmdk" 0`,
 * `RW 1024 ZERO`.
 */
export interface VmdkExtent {
  access: 'RW' | 'RDONLY' | 'NOACCESS';
  /** Size in 512-byte sectors. */
  sectors: number;
  /** FLAT, VMFS, ZERO, SPARSE, VMFSSPARSE, SESPARSE, VMFSRDM, VMFSRAW... as written, upper case. */
  type: string;
  /** The extent's file, relative to the descriptor's folder; absent for ZERO. */
  file?: string;
  /** FLAT only: where the extent's data starts in its file, in sectors. */
  offset: number;
}

/** A VMDK text descriptor: what the file a VirtualDisk's backing names holds on ESXi. */
export interface VmdkDescriptor {
  createType: string;
  /** `ffffffff` for a disk with no parent; otherwise the CID of the parent it is a delta of. */
  parentCID: string;
  parentFileNameHint?: string;
  extents: VmdkExtent[];
}

/** The spec's "no parent" CID. */
export const NO_PARENT = 'ffffffff';

/** Descriptors are a few hundred bytes; anything this long is not one. */
export const MAX_DESCRIPTOR_BYTES = 64 * 1024;

const EXTENT = /^(RW|RDONLY|NOACCESS)\s+(\d{1,12})\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d{1,12}))?)?\s*$/;

/**
 * Parses a descriptor. `name` (its datastore path) names it in errors. Binary files are
 * refused by their magic: a hosted sparse disk (`KDMV`, descriptor embedded) or an ESX
 * sparse extent (`COWD`) is data, not a descriptor.
 */
export function parseVmdkDescriptor(bytes: Buffer, name: string): VmdkDescriptor {
  const bad = (why: string) => new HamalError('VMDK_BAD_DESCRIPTOR', `${name} is not a VMDK descriptor hamal can read: ${why}`, { subject: name });
  const magic = bytes.subarray(0, 4).toString('latin1');
  if (magic === 'KDMV') throw bad('it is a hosted sparse disk (monolithicSparse or twoGbMaxExtentSparse), not a descriptor with flat extents');
  if (magic === 'COWD') throw bad('it is an ESX sparse extent (vmfsSparse), not a descriptor');
  if (bytes.length > MAX_DESCRIPTOR_BYTES) throw bad(`it is ${bytes.length} bytes long, not a descriptor of at most ${MAX_DESCRIPTOR_BYTES}`);
  if (bytes.includes(0)) throw bad('it holds binary data');
  const fields = new Map<string, string>();
  const extents: VmdkExtent[] = [];
  for (const raw of bytes.toString('utf8').split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const ext = EXTENT.exec(line);
    if (ext) {
      const type = ext[3]!.toUpperCase();
      if (type !== 'ZERO' && ext[4] === undefined) throw bad(`extent "${line}" names no file`);
      extents.push({ access: ext[1] as VmdkExtent['access'], sectors: Number(ext[2]), type, file: ext[4], offset: ext[5] === undefined ? 0 : Number(ext[5]) });
      continue;
    }
    const kv = /^([A-Za-z][\w.]*)\s*=\s*"?([^"]*)"?\s*$/.exec(line);
    if (kv) fields.set(kv[1]!, kv[2]!);
    // Any casing: a dropped extent line would shift every later one.
    else if (/^(RW|RDONLY|NOACCESS)\b/i.test(line)) throw bad(`extent line "${line.slice(0, 120)}" is malformed`);
  }
  const createType = fields.get('createType');
  if (!createType) throw bad('it has no createType');
  if (!extents.length) throw bad('it names no extent');
  return { createType, parentCID: (fields.get('parentCID') ?? NO_PARENT).toLowerCase(), parentFileNameHint: fields.get('parentFileNameHint'), extents };
}
