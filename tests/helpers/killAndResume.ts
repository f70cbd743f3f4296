// Kill-and-resume scenario shared by the directory and S3 tests.
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { LocalSource, Repository, restoreDisk, runVmSync, type Snapshot, type Source } from '../../mod.ts';
import { Journal, JOURNAL_FORMAT, type JournalHeader } from '../../src/repo/Journal.ts';
import { makeImage, pattern, sha256File, tempDir } from './disks.ts';
import { UNDER_DENO } from './cli.ts';

const CHILD = fileURLToPath(new URL(`./slowSyncChild.${UNDER_DENO ? 'ts' : 'js'}`, import.meta.url));
const BS = 64 * 1024;

/** Wraps a source so a test can count which offsets were read. */
export class CountingSource implements Source {
  readonly platform = 'local';
  readonly reads: number[] = [];
  constructor(private readonly inner: Source) {}
  async snapshot(vm: string): Promise<Snapshot> {
    const snap = await this.inner.snapshot(vm);
    const reads = this.reads;
    return Object.assign(Object.create(snap), {
      read: (disk: Parameters<Snapshot['read']>[0], offset: number, length: number) => {
        reads.push(offset);
        return snap.read(disk, offset, length);
      },
    });
  }
}

/**
 * Runs a sync in a child process, SIGKILLs it after a checkpoint covering at least half
 * the blocks, then resumes in this process: no checkpointed block may be read again.
 */
export async function killAndResume(target: string, openRepo: () => Promise<Repository>) {
  const dir = await tempDir();
  const image = join(dir, 'd.img');
  await makeImage(image, 64 * BS, [[0, pattern(64 * BS, 5)]]);
  const libDir = join(dir, 'lib');
  const child = spawn(process.execPath, [...(UNDER_DENO ? ['run', '--allow-all'] : []), CHILD, image, target, libDir, String(BS), '25'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let killedAt = 0;
  for await (const line of createInterface({ input: child.stdout! })) {
    const e = JSON.parse(line);
    assert.is.not(e.type, 'finished', 'the sync ended before it could be killed');
    if (e.type === 'checkpoint' && e.records >= 32) {
      child.kill('SIGKILL');
      killedAt = e.records;
      break;
    }
  }
  await new Promise((r) => child.once('close', r));
  assert.is(child.signalCode, 'SIGKILL');

  const repo = await openRepo();
  assert.equal(await repo.listVersions('vm', 'd'), [], 'no version is visible after a kill');
  const header: JournalHeader = { format: JOURNAL_FORMAT, repository: repo.config.id, vm: 'vm', disk: 'd', capacity: 64 * BS, blockSize: BS, parent: null, since: null, snapshotId: (await new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } }).snapshot('vm').then(async (s) => { await s.release(); return s.id; })), changeId: null, generation: repo.openGeneration };
  const recovery = await Journal.recover(Journal.pathFor(libDir, header), header);
  assert.is(recovery.status, 'resumed');
  const covered = recovery.status === 'resumed' ? recovery.entries : new Map();
  assert.ok(covered.size >= killedAt && covered.size >= 32, `covered ${covered.size}`);

  const source = new CountingSource(new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } }));
  const result = await runVmSync(source, 'vm', repo, { journalDir: libDir });
  assert.equal(result.failed, []);
  const reread = source.reads.filter((offset) => covered.has(offset / BS));
  assert.equal(reread, [], 'checkpointed blocks read again');
  assert.is(source.reads.length, 64 - covered.size);
  assert.is(result.versions[0]!.stats.resumedBytes, covered.size * BS);
  const out = join(dir, 'out.img');
  await restoreDisk(repo, result.versions[0]!, out);
  assert.is(await sha256File(out), await sha256File(image));
  await fsp.rm(dir, { recursive: true });
}

