import { promises as fsp, constants as fsconstants } from 'node:fs';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { HamalError } from '../errors.ts';
import { dirsExist, makeDirs, NOFOLLOW_READ, NOFOLLOW_UPDATE, writeNewFile } from '../noFollow.ts';
import type { ChunkId } from './ChunkId.ts';
import { encodeName } from './names.ts';
import { failpoint } from '../failpoints.ts';

export const JOURNAL_FORMAT = 1;
/** A new journal, read and appended to; never through a link. */
const CREATE_RW = fsconstants.O_RDWR | fsconstants.O_CREAT | fsconstants.O_EXCL | fsconstants.O_NOFOLLOW;
const RECORD = 36; // uint32 block index + 32-byte SHA-256 (all zero: a zero block)
const ZERO_ID = Buffer.alloc(32);

/** What a journal belongs to; a journal is only resumed when every field matches. */
export interface JournalHeader {
  format: number;
  repository: string;
  vm: string;
  disk: string;
  capacity: number;
  blockSize: number;
  parent: string | null;
  since: string | null;
  snapshotId: string;
  /** The disk's changeId in that snapshot: what a later snapshot can be diffed against. */
  changeId: string | null;
  /**
   * The repository's generation when the sync that started this journal opened it. A
   * prune since (a higher generation) may have deleted chunks the records name, so they
   * are checked against the repository before they are trusted (resumeJournal).
   */
  generation: number;
}

/** Header fields that may differ when a journal is resumed from another snapshot (see resumeJournal). */
export const SNAPSHOT_FIELDS: ReadonlyArray<keyof JournalHeader> = ['snapshotId', 'changeId'];

export type Recovery =
  | { status: 'resumed'; entries: Map<number, ChunkId | null>; bytes: number; header: JournalHeader }
  | { status: 'none' | 'mismatch' | 'truncated' | 'corrupt'; detail: string };

/**
 * The journal of one disk version in progress (docs/format.md, Journal): every stored
 * block, appended in memory and made durable by `checkpoint()`, which the fsync stream
 * calls every `fsync_period_frequency` seconds.
 *
 *   <hamal_lib_dir>/journals/<repository id>/<vm>/<disk>.journal     header line + records
 *   <hamal_lib_dir>/journals/<repository id>/<vm>/<disk>.checkpoint  {bytes, sha256} of the journal
 *
 * Order at a checkpoint: the store is flushed (the chunks are durable), then the journal
 * is written and fsync'd, then the checkpoint file replaces the old one atomically. A
 * journal shorter than its checkpoint says, or whose bytes hash otherwise, is not trusted.
 */
export class Journal {
  readonly path: string;
  private readonly _handle: fsp.FileHandle;
  private _bytes: number;
  private readonly _hash: Hash;
  private _pending: Buffer[] = [];
  private _pendingRecords = 0;
  private _records: number;

  private constructor(path: string, handle: fsp.FileHandle, bytes: number, hash: Hash, records: number) {
    this.path = path;
    this._handle = handle;
    this._bytes = bytes;
    this._hash = hash;
    this._records = records;
  }

  /** The folder of one VM's journals. */
  static dirFor(libDir: string, repository: string, vm: string): string {
    return join(libDir, 'journals', repository, encodeName(vm));
  }

  static pathFor(libDir: string, header: Pick<JournalHeader, 'repository' | 'vm' | 'disk'>): string {
    return join(Journal.dirFor(libDir, header.repository, header.vm), `${encodeName(header.disk)}.journal`);
  }

  /** Snapshot ids named by the journals of one VM's interrupted syncs (unverified: a hint). */
  static async snapshotIdsOf(libDir: string, repository: string, vm: string): Promise<string[]> {
    const dir = Journal.dirFor(libDir, repository, vm);
    const ids = new Set<string>();
    const real = await dirsExist(libDir, ['journals', repository, encodeName(vm)]).catch(() => false);
    for (const name of real ? await fsp.readdir(dir).catch(() => [] as string[]) : []) {
      if (!name.endsWith('.journal')) continue;
      try {
        const handle = await fsp.open(join(dir, name), NOFOLLOW_READ);
        const head = Buffer.alloc(4096);
        const { bytesRead } = await handle.read(head, 0, head.length, 0).finally(() => handle.close());
        const header = Journal.headerOf(head.subarray(0, bytesRead));
        if (header) ids.add(String(header.snapshotId));
      } catch {
        // an unreadable journal is simply not a hint
      }
    }
    return [...ids];
  }

  /**
   * Reads the journal left at `path` by an interrupted sync and says whether it can be
   * resumed: its header equals `expected` except for the fields in `loose`.
   */
  static async recover(path: string, expected: JournalHeader, loose: ReadonlyArray<keyof JournalHeader> = []): Promise<Recovery> {
    let ckpt: { bytes: number; sha256: string };
    let data: Buffer;
    try {
      ckpt = JSON.parse((await readRegular(checkpointPath(path))).toString('utf8'));
    } catch (err) {
      const none = (err as NodeJS.ErrnoException).code === 'ENOENT';
      return { status: none ? 'none' : 'corrupt', detail: none ? 'no checkpoint' : 'checkpoint file unreadable' };
    }
    try {
      data = await readRegular(path);
    } catch {
      return { status: 'truncated', detail: 'journal missing' };
    }
    if (!ckpt || typeof ckpt !== 'object' || !Number.isSafeInteger(ckpt.bytes) || ckpt.bytes < 0 || typeof ckpt.sha256 !== 'string') {
      return { status: 'corrupt', detail: 'bad checkpoint file' };
    }
    if (data.length < ckpt.bytes) return { status: 'truncated', detail: `journal has ${data.length} bytes, its checkpoint covers ${ckpt.bytes}` };
    const covered = data.subarray(0, ckpt.bytes);
    if (createHash('sha256').update(covered).digest('hex') !== ckpt.sha256) {
      return { status: 'corrupt', detail: 'journal does not match its checkpoint hash' };
    }
    const parsed = Journal.parse(covered, expected, loose);
    return parsed.status === 'resumed' ? { ...parsed, bytes: ckpt.bytes } : parsed;
  }

  /**
   * Reads journal bytes (header line + records) that are known to be whole: the
   * checkpointed part of a journal file, or a partial index from the repository.
   */
  static parse(covered: Buffer, expected: JournalHeader, loose: ReadonlyArray<keyof JournalHeader> = []): Recovery {
    const nl = covered.indexOf(10);
    if (nl < 0) return { status: 'corrupt', detail: 'no journal header' };
    const header = Journal.headerOf(covered.subarray(0, nl));
    if (!header) return { status: 'corrupt', detail: 'bad journal header' };
    for (const k of Object.keys(expected) as Array<keyof JournalHeader>) {
      if (header[k] !== expected[k] && !loose.includes(k)) {
        return { status: 'mismatch', detail: `${k} was ${JSON.stringify(header[k])}, now ${JSON.stringify(expected[k])}` };
      }
    }
    const body = covered.subarray(nl + 1);
    if (body.length % RECORD !== 0) return { status: 'corrupt', detail: 'partial record inside the checkpoint' };
    const entries = new Map<number, ChunkId | null>();
    const blocks = Math.ceil(expected.capacity / expected.blockSize);
    for (let at = 0; at < body.length; at += RECORD) {
      const index = body.readUInt32BE(at);
      if (index >= blocks) return { status: 'corrupt', detail: `record for block ${index} beyond the disk` };
      const id = body.subarray(at + 4, at + RECORD);
      entries.set(index, id.equals(ZERO_ID) ? null : id.toString('hex'));
    }
    return { status: 'resumed', entries, bytes: covered.length, header };
  }

  /** The header of journal bytes, or null when they have none that parses. */
  static headerOf(bytes: Buffer): JournalHeader | null {
    const nl = bytes.indexOf(10);
    try {
      const h = JSON.parse(bytes.subarray(0, nl < 0 ? bytes.length : nl).toString('utf8'));
      return typeof h === 'object' && h !== null ? h : null;
    } catch {
      return null;
    }
  }

  /** The bytes the last checkpoint made durable: what a partial index in the repository holds. */
  async checkpointed(): Promise<Buffer> {
    await this._checkpointing.catch(() => {});
    const bytes = this._bytes;
    const data = Buffer.alloc(bytes);
    let done = 0;
    while (done < bytes) {
      const { bytesRead } = await this._handle.read(data, done, bytes - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return data.subarray(0, done);
  }


  /**
   * Starts a journal at `path`: a new one with `header`, or (with `resume`) the recovered
   * one, cut back to its checkpointed bytes.
   */
  static async open(path: string, header: JournalHeader, resume?: { bytes: number }): Promise<Journal> {
    const fail = (err: unknown) =>
      new HamalError('JOURNAL_WRITE_FAILED', `cannot write journal ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`, {
        subject: path,
        cause: err,
      });
    try {
      await Journal._makeDir(path);
      if (resume) {
        const handle = await fsp.open(path, NOFOLLOW_UPDATE);
        await handle.truncate(resume.bytes);
        const data = Buffer.alloc(resume.bytes);
        await handle.read(data, 0, resume.bytes, 0);
        const records = (resume.bytes - data.indexOf(10) - 1) / RECORD;
        return new Journal(path, handle, resume.bytes, createHash('sha256').update(data), records);
      }
      await fsp.rm(checkpointPath(path), { force: true });
      await fsp.rm(path, { force: true });
      const handle = await fsp.open(path, CREATE_RW, 0o600);
      const journal = new Journal(path, handle, 0, createHash('sha256'), 0);
      journal._pending.push(Buffer.from(JSON.stringify(header) + '\n'));
      await journal.checkpoint();
      return journal;
    } catch (err) {
      throw err instanceof HamalError ? err : fail(err);
    }
  }

  /**
   * Makes the folders of a journal: 0700, none of them a link (the lib dir itself may
   * be one). Folders are never removed again: a sibling disk may be about to create its
   * journal in the same one (removing an empty VM folder raced with that).
   */
  private static async _makeDir(path: string): Promise<void> {
    const vmDir = dirname(path);
    const repoDir = dirname(vmDir);
    const libDir = dirname(dirname(repoDir));
    await fsp.mkdir(libDir, { recursive: true, mode: 0o700 });
    await makeDirs(libDir, ['journals', basename(repoDir), basename(vmDir)], 0o700);
  }

  /** Records a stored block; durable at the next checkpoint. */
  record(index: number, id: ChunkId | null): void {
    const rec = Buffer.allocUnsafe(RECORD);
    rec.writeUInt32BE(index, 0);
    if (id === null) ZERO_ID.copy(rec, 4);
    else rec.write(id, 4, 32, 'hex');
    this._pending.push(rec);
    this._pendingRecords++;
  }

  /** Blocks recorded and checkpointed, in this run and the runs it resumes. */
  get records(): number {
    return this._records;
  }

  /**
   * Makes every block recorded so far durable. `flushStore` runs after the batch is taken
   * and before it is written: it must make the chunks of those blocks durable.
   */
  checkpoint(flushStore?: () => Promise<void>): Promise<void> {
    // One at a time: the timer's checkpoint and the last one at a stop may meet.
    const next = this._checkpointing.catch(() => {}).then(() => this._checkpoint(flushStore));
    this._checkpointing = next;
    return next;
  }

  private _checkpointing: Promise<void> = Promise.resolve();

  private async _checkpoint(flushStore?: () => Promise<void>): Promise<void> {
    const batch = this._pending;
    const records = this._pendingRecords;
    this._pending = [];
    this._pendingRecords = 0;
    await flushStore?.();
    try {
      failpoint('journal.write');
      if (batch.length) {
        const data = Buffer.concat(batch);
        let done = 0;
        while (done < data.length) done += (await this._handle.write(data, done, data.length - done, this._bytes + done)).bytesWritten;
        this._hash.update(data);
        this._bytes += data.length;
        this._records += records;
      }
      await this._handle.datasync();
      const ckpt = checkpointPath(this.path);
      // A name of its own: two syncs of one disk (a careless operator) must not collide here.
      const tmp = `${ckpt}.${randomBytes(4).toString('hex')}.tmp`;
      await writeNewFile(tmp, JSON.stringify({ format: JOURNAL_FORMAT, bytes: this._bytes, records: this._records, sha256: this._hash.copy().digest('hex'), at: new Date().toISOString() }));
      await fsp.rename(tmp, ckpt);
      const dir = await fsp.open(dirname(this.path), 'r');
      await dir.sync().finally(() => dir.close());
    } catch (err) {
      throw new HamalError('JOURNAL_WRITE_FAILED', `cannot write journal ${this.path}: ${(err as NodeJS.ErrnoException).code ?? err}`, {
        subject: this.path,
        cause: err,
      });
    }
  }

  async close(): Promise<void> {
    await this._handle.close().catch(() => {});
  }

  /** The version is committed: the journal is no longer needed (its folder stays: see _makeDir). */
  async remove(): Promise<void> {
    await this.close();
    await fsp.rm(checkpointPath(this.path), { force: true });
    await fsp.rm(this.path, { force: true });
  }
}

function checkpointPath(journal: string): string {
  return journal.replace(/\.journal$/, '.checkpoint');
}

/** A whole file that must be a regular file, read without following a link. */
async function readRegular(path: string): Promise<Buffer> {
  const handle = await fsp.open(path, NOFOLLOW_READ);
  try {
    if (!(await handle.stat()).isFile()) throw Object.assign(new Error(`${path} is not a regular file`), { code: 'EINVAL' });
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}
