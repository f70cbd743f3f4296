import { Rbd, type CephAccess } from '../../ceph/Rbd.ts';
import { RbdDiffWriter } from '../../ceph/RbdDiffWriter.ts';
import { NotFoundError, UsageError } from '../../errors.ts';
import { isVersionId } from '../../repo/VersionId.ts';
import { log as rootLog } from '../../log/Logger.ts';
import type { RawImageOptions } from './RawImage.ts';

const log = rootLog.child('restore');

/** Whether `out` names an RBD image (`rbd:POOL/IMAGE...`) rather than a path. */
export function isRbdUrl(out: string): boolean {
  return out.startsWith('rbd:');
}

export interface RbdImageOptions extends RawImageOptions {
  /** The version written: the image gets the snapshot `hamal-VERSION` when it holds it. */
  version: string;
  /** The version the image holds (`--from`): its snapshot `hamal-FROM` must be there. */
  from: string | null;
}

/** The snapshot that marks an image as holding `version`. */
export const versionSnap = (version: string) => `hamal-${version}`;

/**
 * An RBD image written by `rbd import-diff` from a generated `rbd diff v1` stream: Ceph,
 * not the operator's word, checks the base of a replica step. The image carries a
 * snapshot `hamal-VERSION` of the version it was last moved to; a step `--from OLD`
 * starts from `hamal-OLD` (import-diff refuses the stream if the image lacks it), takes
 * `hamal-NEW` once every block is written, then removes the older `hamal-` snapshots.
 * A step cut short leaves no new snapshot, so it is run again from the same `--from`.
 *
 * URL: `rbd:POOL/IMAGE[:id=USER][:conf=PATH][:keyring=PATH]` (qemu's rbd filename
 * syntax; Ceph's defaults: client.admin, /etc/ceph/ceph.conf,
 * /etc/ceph/ceph.client.USER.keyring). A missing image is created; one that exists is
 * written only with --force (whole) or --from.
 */
export class RbdImage {
  private _failed: unknown;

  private constructor(
    readonly path: string,
    /** false: the image was created now and reads as zeros, so zero blocks are skipped. */
    readonly inPlace: boolean,
    private readonly _rbd: Rbd,
    private readonly _spec: string,
    private readonly _toSnap: string,
    /** The image's hamal- snapshots before this restore: they go once it holds the new version. */
    private readonly _older: string[],
    private readonly _writer: RbdDiffWriter,
    private readonly _importer: { done: Promise<void>; kill: () => void },
  ) {
    _importer.done.catch((err: unknown) => (this._failed ??= err));
  }

  static async open(url: string, capacity: number, options: RbdImageOptions): Promise<RbdImage> {
    const { spec, access } = parseRbdUrl(url);
    const rbd = new Rbd(access);
    // One call says both whether the image exists and which versions it records.
    const snaps = await rbd.snapshots(spec).then(
      (list) => list.map((s) => s.name),
      (err: unknown) => (err instanceof NotFoundError && err.code === 'RBD_IMAGE_NOT_FOUND' ? null : Promise.reject(err)),
    );
    if (snaps === null && options.replica) throw new UsageError('REPLICA_MISSING', `rbd image ${spec} does not exist, so it holds no version: restore without --from to create it`, { subject: spec });
    if (snaps !== null && !options.force && !options.replica) {
      throw new UsageError('OUTPUT_EXISTS', `rbd image ${spec} exists: writing it destroys what it holds; use --force to write it whole, or --from VERSION when it holds that version`, { subject: spec });
    }
    const ours = snaps?.filter(isOurs) ?? [];
    if (snaps !== null) await checkSnapshots(rbd, spec, ours, options);
    else await rbd.create(spec, capacity);
    const toSnap = versionSnap(options.version);
    const importer = rbd.stream(['import-diff', '--no-progress', '-', spec], `rbd import-diff into ${spec}`);
    const writer = new RbdDiffWriter(importer.stdin, { fromSnap: options.from === null ? null : versionSnap(options.from), toSnap, size: capacity });
    return new RbdImage(url, snaps !== null, rbd, spec, toSnap, ours.filter((n) => n !== toSnap), writer, importer);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    this._check();
    return this._writer.data(offset, data);
  }

  /** Zeros as a `z` record: Ceph discards the range instead of storing zero bytes. */
  zero(offset: number, length: number): Promise<void> {
    this._check();
    return this._writer.zero(offset, length);
  }

  /** Ends the stream; import-diff flushes and takes the snapshot; older ones go. */
  async commit(): Promise<void> {
    this._check();
    await this._writer.end();
    await this._importer.done;
    for (const name of this._older) {
      await this._rbd.removeSnapshot(this._spec, name).catch((err: unknown) => log.warn(`rbd image ${this._spec} now holds ${this._toSnap}; could not remove the older snapshot ${name}: ${(err as Error).message}`));
    }
  }

  /** Cuts the stream (no `e`: no new snapshot) and waits for rbd to end. */
  async abandon(): Promise<void> {
    await this._writer.cut();
    const gone = await Promise.race([this._importer.done.then(() => true, () => true), new Promise<false>((r) => setTimeout(() => r(false), 30_000).unref())]);
    if (!gone) this._importer.kill();
  }

  /** rbd exited early (the from snapshot refused, the cluster gone): no more writes. */
  private _check(): void {
    if (this._failed !== undefined) throw this._failed;
  }
}

const isOurs = (name: string) => name.startsWith('hamal-') && isVersionId(name.slice(6));

/**
 * Before anything is written: the image must hold the `--from` version's snapshot, and
 * must not already hold the version being written (import-diff would refuse at the end).
 */
async function checkSnapshots(rbd: Rbd, spec: string, ours: string[], options: RbdImageOptions): Promise<void> {
  const holds = ours.length ? `it has ${ours.join(', ')}` : 'it has no hamal- snapshot';
  const to = versionSnap(options.version);
  if (options.from !== null && !ours.includes(versionSnap(options.from))) {
    throw new UsageError('REPLICA_BASE_MISSING', `rbd image ${spec} has no snapshot ${versionSnap(options.from)}, so it does not hold version ${options.from} (${holds}): give that version as --from, or --force to write it whole`, { subject: spec });
  }
  if (ours.includes(to)) {
    if (!options.force) throw new UsageError('REPLICA_AT_VERSION', `rbd image ${spec} already has snapshot ${to}: it was moved to version ${options.version} before; --force writes it whole again`, { subject: spec });
    await rbd.removeSnapshot(spec, to);
  }
}

/** `rbd:POOL[/NAMESPACE]/IMAGE[:key=value...]`, keys id, conf, keyring (nothing else). */
export function parseRbdUrl(url: string): { spec: string; access: CephAccess } {
  const [spec, ...opts] = url.slice('rbd:'.length).split(':');
  const bad = (why: string) => new UsageError('BAD_OUTPUT', `${url}: ${why} (rbd:POOL/IMAGE followed by options id, conf, keyring as :NAME=VALUE)`, { subject: url });
  if (!spec || !/^[^/@\s]+(\/[^/@\s]+){1,2}$/.test(spec)) throw bad('not POOL/IMAGE (no snapshot: a restore writes the image itself)');
  const kv = new Map<string, string>();
  for (const o of opts) {
    const eq = o.indexOf('=');
    const key = o.slice(0, eq);
    if (eq <= 0 || !['id', 'conf', 'keyring'].includes(key)) throw bad(`unknown option ${JSON.stringify(o.split('=')[0])}`);
    if (kv.has(key)) throw bad(`${key} given twice`);
    kv.set(key, o.slice(eq + 1));
  }
  const user = (kv.get('id') ?? 'admin').replace(/^client\./, '');
  if (!/^[\w.-]+$/.test(user)) throw bad(`id ${JSON.stringify(user)} is not a Ceph client name`);
  return { spec, access: { user, conf: kv.get('conf') ?? '/etc/ceph/ceph.conf', keyring: kv.get('keyring') ?? `/etc/ceph/ceph.client.${user}.keyring` } };
}
