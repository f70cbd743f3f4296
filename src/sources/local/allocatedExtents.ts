import { execFile } from 'node:child_process';
import type { Extent } from '../../streams/Extent.ts';
import { childEnv } from '../../childEnv.ts';
import { log } from '../../log/Logger.ts';

/** Said once per process: every local disk would say it again. */
let missingSaid = false;

/**
 * The areas of a raw file that may hold data, from `qemu-img map` (qemu-utils), which
 * finds holes with SEEK_DATA/SEEK_HOLE without reading them; Node has no way to seek to
 * data. `null` when qemu-img is missing or fails: the caller then reads everything and
 * finds zero blocks by their content, which is correct, only slower on sparse images; a
 * warning says so, since a 1 TiB thin image then reads 1 TiB.
 */
export function allocatedExtents(path: string, capacity: number): Promise<Extent[] | null> {
  return new Promise((resolve) => {
    execFile(
      'qemu-img',
      ['map', '--output=json', '-f', 'raw', path],
      { maxBuffer: 256 << 20, env: childEnv() },
      (err, stdout, stderr) => {
        if (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            if (!missingSaid) log.warn('qemu-img is not installed: holes in local images are read in full and found zero by their content (install qemu-utils to skip them)');
            missingSaid = true;
          } else log.warn(`qemu-img map of ${path} failed: all of it is read (${firstLine(String(stderr).trim() || err.message)})`, { path });
          return resolve(null);
        }
        try {
          const entries = JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
          const extents: Extent[] = [];
          for (const e of entries) {
            if (!e.data || e.zero) continue;
            const last = extents[extents.length - 1];
            if (last && last.offset + last.length === e.start) {
              extents[extents.length - 1] = { offset: last.offset, length: last.length + e.length };
            } else extents.push({ offset: e.start, length: e.length });
          }
          const covered = entries.reduce((n, e) => n + e.length, 0);
          if (covered < capacity) log.warn(`qemu-img map of ${path} covers ${covered} of its ${capacity} bytes: all of it is read`, { path });
          resolve(covered >= capacity ? extents : null);
        } catch (e) {
          log.warn(`qemu-img map of ${path} printed no map: all of it is read (${firstLine((e as Error).message)})`, { path });
          resolve(null);
        }
      },
    );
  });
}

function firstLine(s: string): string {
  return s.split('\n', 1)[0]!.slice(0, 200);
}
