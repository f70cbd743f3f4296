// Loop devices over files in a test's own folder, and mounts of them: attached or mounted
// for one function only, and always detached or unmounted after it, also when it throws.
// Only the device losetup attached for us is ever touched.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Whether loop devices can be attached here (losetup installed, /dev/loop-control usable). */
export async function loopDevicesAvailable(): Promise<boolean> {
  try {
    await run('losetup', ['--find']);
    return true;
  } catch {
    return false;
  }
}

/** Runs `fn` with `file` attached as a loop device (e.g. /dev/loop3). */
export async function withLoopDevice<T>(file: string, fn: (device: string) => Promise<T>): Promise<T> {
  const { stdout } = await run('losetup', ['--find', '--show', file]);
  const device = stdout.trim();
  try {
    return await fn(device);
  } finally {
    await run('losetup', ['--detach', device]);
  }
}

/** Runs `fn` while `device` (one of ours, already formatted) is mounted on `dir`. */
export async function withMount<T>(device: string, dir: string, fn: () => Promise<T>): Promise<T> {
  await run('mount', [device, dir]);
  try {
    return await fn();
  } finally {
    await run('umount', [dir]);
  }
}

/** Formats `device` as ext4 (quietly, no lazy init: nothing writes behind the test's back). */
export async function mkfsExt4(device: string): Promise<void> {
  await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', device]);
}
