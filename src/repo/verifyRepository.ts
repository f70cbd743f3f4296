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
  // chunk -> expected size and the versions that reference it
  const wanted = new Map<ChunkId, { size: number; versions: string[] }>();
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
          const w = wanted.get(id);
          if (!w) wanted.set(id, { size, versions: [name] });
          else if (w.versions.length < 3 && !w.versions.includes(name)) w.versions.push(name);
        });
      }
    }
  }
  report.chunks = wanted.size;
  let checked = 0;
  await lastValueFrom(
    from(wanted).pipe(
      mergeMap(async ([id, w]) => {
        const key = chunkKey(id);
        try {
          if (options.deep) {
            const data = await repo.readChunk(id);
            if (data.length !== w.size) {
              report.problems.push({ kind: 'wrong-size', key, versions: w.versions, detail: `${data.length} bytes, expected ${w.size}` });
            }
          } else {
            const head = await repo.store.head(key);
            if (!head) report.problems.push({ kind: 'missing', key, versions: w.versions, detail: 'does not exist' });
            // Format 2 stores chunks compressed and/or sealed: their size says nothing of the block's.
            else if (repo.config.format === 1 && head.size !== w.size) {
              report.problems.push({ kind: 'wrong-size', key, versions: w.versions, detail: `${head.size} bytes, expected ${w.size}` });
            }
          }
        } catch (err) {
          if (err instanceof NotFoundError) report.problems.push({ kind: 'missing', key, versions: w.versions, detail: 'does not exist' });
          else if (err instanceof IntegrityError) {
            const why = err.message.startsWith(`chunk ${key}: `) ? err.message.slice(`chunk ${key}: `.length) : 'content does not match its hash';
            report.problems.push({ kind: 'corrupt', key, versions: w.versions, detail: why });
          }
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
