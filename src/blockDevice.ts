import { promises as fsp } from 'node:fs';

/**
 * Block devices, as Linux describes them in /proc and /sys: their number, size, mounts and
 * holders. For a restore that must not write a device in use, and a local disk's size.
 */

/** `MAJ:MIN` of a device number, as glibc's major()/minor() split it. */
export function majorMinor(rdev: number): string {
  const d = BigInt(rdev);
  const major = ((d & 0xfff00n) >> 8n) | ((d & 0xfffff00000000000n) >> 32n);
  const minor = (d & 0xffn) | ((d & 0xffffff00000n) >> 12n);
  return `${major}:${minor}`;
}

/**
 * Where the device is in use in this mount namespace: "mounted on /mnt" or "used as
 * swap"; null when neither. (O_EXCL at open catches the holders this cannot see.)
 */
export async function blockDeviceInUse(path: string, rdev: number): Promise<string | null> {
  const dev = majorMinor(rdev);
  const resolved = await fsp.realpath(path);
  const mounts = (await readProc('/proc/self/mountinfo')).flatMap((line) => {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT ... - FSTYPE SOURCE OPTIONS
    const f = line.split(' ');
    const source = f[f.indexOf('-', 6) + 2];
    return f[2] === dev || (source !== undefined && [path, resolved].includes(unescapeProc(source))) ? [unescapeProc(f[4] ?? '')] : [];
  });
  if (mounts.length) return `mounted on ${[...new Set(mounts)].join(', ')}`;
  for (const line of (await readProc('/proc/swaps')).slice(1)) {
    const name = unescapeProc(line.split(/\s+/)[0] ?? '');
    const st = name ? await fsp.stat(name).catch(() => null) : null;
    if (st?.isBlockDevice() && st.rdev === rdev) return 'used as swap';
  }
  return null;
}

/** Size in bytes from /sys/dev/block/MAJ:MIN/size (512-byte sectors); null when unreadable. */
export async function blockDeviceSize(dev: string): Promise<number | null> {
  const text = await fsp.readFile(`/sys/dev/block/${dev}/size`, 'utf8').catch(() => '');
  return /^\d+\s*$/.test(text) ? Number(text) * 512 : null;
}

/** Devices stacked on this one (device-mapper, md, bcache): /sys/dev/block/MAJ:MIN/holders. */
export async function blockDeviceHolders(dev: string): Promise<string[]> {
  return fsp.readdir(`/sys/dev/block/${dev}/holders`).catch(() => []);
}

/** The lines of a /proc table; none where there is no /proc. */
async function readProc(file: string): Promise<string[]> {
  const text = await fsp.readFile(file, 'utf8').catch(() => '');
  return text.split('\n').filter((line) => line !== '');
}

/** /proc writes space, tab, newline and backslash in paths as octal escapes (\040). */
function unescapeProc(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}
