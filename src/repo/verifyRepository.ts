import { from, lastValueFrom, mergeMap, defaultIfEmpty, ignoreElements } from 'rxjs';
import { IntegrityError, NotFoundError, describeError } from '../errors.ts';
import type { Repository } from './Repository.ts';
import { chunkKey, type ChunkId } from './ChunkId.ts';

export interface VerifyOptions {
  /** Only this VM's versions. */
  vm?: string;
  /** Read every chunk and check that it hashes to its name; otherwise only that it exists with the right size. */
  deep?: boolean;
  /**
   * Chunks checked at once. With `deep`, each holds one block in memory.
   * @default 8
   */
  concurrency?: number;
  /** After each chunk checked: how many so far, of how many. */
  onChunk?: (checked: number, total: number) => void;
}

export interface VerifyProblem {
  kind: 'missing' | 'corrupt' | 'wrong-size' | 'manifest';
  /** The chunk or manifest key at fault. */
  key: string;
  /** `vm/disk@version` of the versions that need it (the first few). */
  versions: string[];
  detail: string;
}

export interface VerifyReport {
  versions: number;
  chunks: number;
  problems: VerifyProblem[];
}

/** Checks that every version can be restored: each chunk it names exists (and, deep, is intact). */
export async function verifyRepository(repo: Repository, options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { versions: 0, chunks: 0, problems: [] };
  // chunk -> each size versions expect of it, with (the first few of) those versions: a
  // chunk shared by versions that disagree on its size fails the ones it does not fit.
  const wanted = new Map<ChunkId, Map<number, string[]>>();
  for (const vm of options.vm ? [options.vm] : await repo.listVms()) {
    for (const disk of await repo.listDisks(vm)) {
      for (const version of await repo.listVersions(vm, disk)) {
        const name = `${vm}/${disk}@${version}`;
        let manifest;
        try {
          manifest = await repo.readManifest(vm, disk, version);
        } catch (err) {
          report.problems.push({ kind: 'manifest', key: name, versions: [name], detail: describeError(err) });
          continue;
        }
        report.versions++;
        manifest.blocks.forEach((id, i) => {
          if (id === null) return;
          const size = Math.min(manifest.blockSize, manifest.capacity - i * manifest.blockSize);
          let sizes = wanted.get(id);
          if (!sizes) wanted.set(id, (sizes = new Map()));
          const versions = sizes.get(size);
          if (!versions) sizes.set(size, [name]);
          else if (versions.length < 3 && !versions.includes(name)) versions.push(name);
        });
      }
    }
  }
  // A link or special file under vms/ may hide versions: they were not verified.
  for (const key of repo.store.skipped?.() ?? []) {
    if (key.startsWith('vms/')) report.problems.push({ kind: 'manifest', key, versions: [], detail: 'a link or special file, not an object hamal wrote: what it hides was not verified' });
  }
  report.chunks = wanted.size;
  let checked = 0;
  await lastValueFrom(
    from(wanted).pipe(
      mergeMap(async ([id, sizes]) => {
        const key = chunkKey(id);
        const all = [...new Set([...sizes.values()].flat())].slice(0, 3);
        // The stored size says something of the block's only in format 1 (format 2: compressed, sealed).
        const wrongSize = (size: number | null) => {
          if (size === null) return;
          for (const [want, versions] of sizes) {
            if (size !== want) report.problems.push({ kind: 'wrong-size', key, versions, detail: `${size} bytes, expected ${want}` });
          }
        };
        try {
          if (options.deep) wrongSize((await repo.readChunk(id)).length);
          else {
            const head = await repo.store.head(key);
            if (!head) report.problems.push({ kind: 'missing', key, versions: all, detail: 'does not exist' });
            else wrongSize(repo.config.format === 1 ? head.size : null);
          }
        } catch (err) {
          if (err instanceof NotFoundError) report.problems.push({ kind: 'missing', key, versions: all, detail: 'does not exist' });
          else if (err instanceof IntegrityError) report.problems.push({ kind: 'corrupt', key, versions: all, detail: corruption(err, key) });
          else throw err;
        }
        options.onChunk?.(++checked, wanted.size);
      }, options.concurrency ?? 8),
      ignoreElements(),
      defaultIfEmpty(undefined),
    ),
  );
  report.problems.sort((a, b) => a.key.localeCompare(b.key));
  return report;
}

/** What is wrong with a chunk, without repeating its key (the report names it). */
function corruption(err: IntegrityError, key: string): string {
  if (err.message.startsWith(`chunk ${key}: `)) return err.message.slice(`chunk ${key}: `.length);
  if (err.code === 'CHUNK_CORRUPT') return 'content does not match its hash';
  // The store's own words: not a regular file, larger than a chunk can be, a link in the way.
  return err.message;
}
