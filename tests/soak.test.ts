// A soak: the service runs 500 sync cycles of a changing disk (tests/helpers/soakChild.ts,
// shortened timers, real HTTP to the control-plane stand-in, real journals, logs and
// repository) in a child process; heap, RSS and open descriptors must be flat from the
// 50th cycle to the 500th, and the last version must restore to the disk as it is.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hamal } from './helpers/cli.ts';
import { sha256File, tempDir } from './helpers/disks.ts';

const CHILD = fileURLToPath(new URL('./helpers/soakChild.js', import.meta.url));

test('500 cycles of the service: every task succeeds; heap, RSS and file descriptors stay flat', async () => {
  const dir = await tempDir('hamal-soak-');
  const child = spawn(process.execPath, ['--expose-gc', CHILD, dir, '500', '50'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const code = await new Promise((r) => child.on('close', r));
  assert.is(code, 0, out);
  const r = JSON.parse(out);
  process.stderr.write(`soak: ${JSON.stringify(r)}\n`);
  assert.is(r.cycles, 500);
  assert.equal(r.states, { succeeded: 500 });
  assert.ok(r.seconds < 300, `${r.seconds} s`);
  assert.ok(r.end.fds - r.warm.fds <= 2, `open descriptors ${r.warm.fds} -> ${r.end.fds}`);
  assert.ok(r.end.handles - r.warm.handles <= 2, `active handles ${r.warm.handles} -> ${r.end.handles}`);
  // 450 cycles: a leak of 12 KiB of heap or 1 block buffer per 50 cycles fails this.
  assert.ok(r.end.heapMiB - r.warm.heapMiB < 5, `heap ${r.warm.heapMiB.toFixed(1)} -> ${r.end.heapMiB.toFixed(1)} MiB`);
  assert.ok(r.end.buffersMiB - r.warm.buffersMiB < 8, `buffers ${r.warm.buffersMiB.toFixed(1)} -> ${r.end.buffersMiB.toFixed(1)} MiB`);
  assert.ok(r.end.rssMiB - r.warm.rssMiB < 40, `RSS ${r.warm.rssMiB.toFixed(1)} -> ${r.end.rssMiB.toFixed(1)} MiB`);
  const restored = join(dir, 'out.img');
  const res = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'soak-vm', '--disk', 'd', '--out', restored]);
  assert.is(res.code, 0, res.stderr);
  assert.is(await sha256File(restored), await sha256File(join(dir, 'disk.img')));
  await fsp.rm(dir, { recursive: true, force: true });
});

test.run();
