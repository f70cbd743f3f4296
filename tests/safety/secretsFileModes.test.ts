// What hamal writes about VMs (log files, per-VM logs, the outbox, state files, local
// snapshot metadata) is 0600 in folders it creates 0700, whatever the umask; folders that
// exist keep the mode the operator gave them.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, tempDir } from '../helpers/disks.ts';
import { LogFile } from '../../src/log/LogFile.ts';
import { VmLog } from '../../src/log/VmLog.ts';
import { FileOutbox } from '../../src/service/Outbox.ts';
import { replaceFile } from '../../src/service/replaceFile.ts';
import { saveLocalMetadata } from '../../src/streams/saveLocalMetadata.ts';

const modeOf = async (path: string) => ((await fsp.stat(path)).mode & 0o777).toString(8);

/** Runs `fn` with umask 0, the worst an operator's shell or unit file can give. */
async function withUmask0<T>(fn: () => Promise<T>): Promise<T> {
  const before = process.umask(0);
  try {
    return await fn();
  } finally {
    process.umask(before);
  }
}

test('under umask 0: log files and their rotations, per-VM logs, outbox, state files and local metadata are 0600 in new 0700 folders', async () => {
  const dir = await tempDir();
  try {
    await withUmask0(async () => {
      // A log file in folders that do not exist yet, rotated twice.
      const logs = join(dir, 'log', 'hamal');
      const file = new LogFile(join(logs, 'hamal-period.log'), { maxBytes: 1024, maxCount: 2 });
      for (let i = 0; i < 40; i++) {
        file.write(`line ${i} ${'x'.repeat(90)}`);
        if (i % 8 === 0) await new Promise((r) => setTimeout(r, 5));
      }
      await file.close();
      const names = (await fsp.readdir(logs)).sort();
      assert.equal(names, ['hamal-period.log', 'hamal-period.log.1', 'hamal-period.log.2']);
      for (const n of names) assert.is(await modeOf(join(logs, n)), '600', n);
      for (const d of [join(dir, 'log'), logs]) assert.is(await modeOf(d), '700', d);

      // A VM's log in a new folder, and in an existing 0755 one (left as it is).
      const vmDir = join(dir, 'vmlogs');
      const existing = join(dir, 'existing');
      await fsp.mkdir(existing);
      await fsp.chmod(existing, 0o755);
      for (const d of [vmDir, existing]) {
        const vmLog = new VmLog(d, 'web');
        vmLog.identify('web', '4211d3c4-aaaa');
        vmLog.note('2026-01-01T00:00:00.000Z INFO    [sync] a line');
        await vmLog.close();
        assert.is(await modeOf(vmLog.path!), '600', vmLog.path);
      }
      assert.is(await modeOf(vmDir), '700');
      assert.is(await modeOf(existing), '755', 'an existing folder keeps its mode');

      const outboxDir = join(dir, 'lib', 'service', 'outbox');
      const outbox = new FileOutbox(outboxDir);
      outbox.save({ taskId: 'task-1', vm: 'web', state: 'failed', error: 'disk d: read failed', at: new Date().toISOString() });
      assert.is(await modeOf(join(outboxDir, 'task-1.json')), '600');
      for (const d of [join(dir, 'lib'), join(dir, 'lib', 'service'), outboxDir]) assert.is(await modeOf(d), '700', d);

      const state = join(dir, 'state', 'service', 'nonces.json');
      await replaceFile(state, '{}');
      await replaceFile(state, '{"n":1}');
      assert.is(await modeOf(state), '600');
      for (const d of [join(dir, 'state'), join(dir, 'state', 'service')]) assert.is(await modeOf(d), '700', d);

      const metaLib = join(dir, 'metalib');
      const meta = await saveLocalMetadata(metaLib, 'web', { createdAt: new Date().toISOString() });
      assert.is(await modeOf(meta), '600');
      for (const d of [metaLib, join(metaLib, 'metadata'), join(metaLib, 'metadata', 'web')]) assert.is(await modeOf(d), '700', d);
    });
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a real sync under umask 000: the VM log and the local snapshot metadata are 0600, the metadata folders 0700, the log folder left as it was', async () => {
  const dir = await tempDir();
  try {
    const logDir = join(dir, 'log');
    await fsp.mkdir(logDir);
    await fsp.chmod(logDir, 0o755);
    const lib = join(dir, 'lib');
    const conf = join(dir, 'hamal.conf');
    await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[sync]\nsave_local_snapshot_metadata = True\n[hamal]\nlog_dir = ${logDir}\n`, { mode: 0o600 });
    const disk = join(dir, 'disk.img');
    await makeImage(disk, 2 * MiB, [[0, pattern(8192, 5)]]);
    const r = await hamal(['--config', conf, 'sync', '--vm', 'web', '--disk', `d=${disk}`, '--target', join(dir, 'repo')], {}, ['sh', '-c', 'umask 000; exec "$0" "$@"']);
    assert.is(r.code, 0, r.stderr);
    const vmLogs = (await fsp.readdir(logDir)).filter((n) => n.startsWith('vm-web_'));
    assert.is(vmLogs.length, 1, String(vmLogs));
    assert.is(await modeOf(join(logDir, vmLogs[0]!)), '600');
    assert.is(await modeOf(logDir), '755', 'an existing log folder keeps its mode');
    const metaDir = join(lib, 'metadata', 'web');
    const metas = await fsp.readdir(metaDir);
    assert.is(metas.length, 1);
    assert.is(await modeOf(join(metaDir, metas[0]!)), '600');
    for (const d of [join(lib, 'metadata'), metaDir]) assert.is(await modeOf(d), '700', d);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test.run();
