import { execFile } from 'node:child_process';
import type { Extent } from '../../streams/Extent.ts';
import { childEnv } from '../../childEnv.ts';

/**
 * The areas of a raw file that may hold data, from `qemu-img map` (qemu-utils), which
 * finds holes with SEEK_DATA/SEEK_HOLE without reading them; Node has no way to seek to
 * data. `null` when qemu-img is missing or fails: the caller then reads everything and
 * finds zero blocks by their content, which is correct, only slower on sparse images.
 */
export function allocatedExtents(path: string, capacity: number): Promise<Extent[] | null> {
  return new Promise((resolve) => {
    execFile(
      'qemu-img',
      ['map', '--output=json', '-f', 'raw', path],
      { maxBuffer: 256 << 20, env: childEnv() },
      (err, stdout) => {
        if (err) return resolve(null);
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
          resolve(covered >= capacity ? extents : null);
        } catch {
          resolve(null);
        }
      },
    );
  });
}
