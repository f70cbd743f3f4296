import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Virsh } from './Virsh.ts';
import type { DomainDisk } from './domainXml.ts';
import { HamalError } from '../../errors.ts';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/'/g, '&apos;').replace(/"/g, '&quot;');

/** What one backup job reads: each disk, from a checkpoint (incremental) or whole. */
export interface JobDisk {
  disk: DomainDisk;
  /** The checkpoint the disk's dirty bitmap starts from; undefined: a full backup of it. */
  incremental?: string;
}

/**
 * A pull-mode backup job of a running domain (libvirt "Backup XML format" and
 * virDomainBackupBegin): QEMU serves each disk's point-in-time view on an NBD unix socket
 * (export = the disk's target, with `qemu:dirty-bitmap:backup-<target>` for an
 * incremental disk), writes the guest's overwrites to scratch files, and records a new
 * checkpoint atomically with the job's start. The socket and scratch files live in a
 * private 0700 directory owned by the user QEMU runs as (it creates them).
 */
export class BackupJob {
  private constructor(
    private readonly _virsh: Virsh,
    readonly domain: string,
    readonly socket: string,
    private readonly _dir: string,
    /** The checkpoint made with the job. */
    readonly checkpoint: string,
  ) {}

  static async begin(virsh: Virsh, domain: string, disks: JobDisk[], skipped: string[], checkpoint: string, workDir: string, owner: { uid: number; gid: number }): Promise<BackupJob> {
    // The parent only lets QEMU's user pass through (0711) to the one directory it owns.
    const parent = join(workDir, 'libvirt');
    await fsp.mkdir(parent, { recursive: true, mode: 0o711 });
    await fsp.chmod(parent, 0o711);
    const dir = join(parent, randomBytes(6).toString('hex'));
    await fsp.mkdir(dir, { mode: 0o700 });
    // QEMU (libvirt-qemu under qemu:///system) binds the socket and writes the scratch files.
    try {
      await fsp.chown(dir, owner.uid, owner.gid);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw new HamalError('LIBVIRT_LIB_DIR', `cannot give ${dir} to QEMU's user ${owner.uid}:${owner.gid} (hamal runs as root beside libvirtd): ${(err as NodeJS.ErrnoException).code}`, { subject: 'hamal_lib_dir' });
    }
    const socket = join(dir, 'nbd.sock');
    const backup = [
      `<domainbackup mode='pull'>`,
      `<server transport='unix' socket='${esc(socket)}'/>`,
      '<disks>',
      // Per-disk starting points (libvirt 7.6: backupmode, incremental).
      ...disks.map(({ disk, incremental }) =>
        `<disk name='${esc(disk.target)}' backup='yes' type='file' exportname='${esc(disk.target)}' ${incremental ? `backupmode='incremental' incremental='${esc(incremental)}' exportbitmap='backup-${esc(disk.target)}'` : `backupmode='full'`}><scratch file='${esc(join(dir, `${disk.target}.scratch`))}'/></disk>`,
      ),
      ...skipped.map((t) => `<disk name='${esc(t)}' backup='no'/>`),
      '</disks>',
      '</domainbackup>',
    ].join('\n');
    const check = [
      `<domaincheckpoint><name>${esc(checkpoint)}</name><description>hamal sync</description><disks>`,
      ...disks.map(({ disk }) => `<disk name='${esc(disk.target)}' checkpoint='${disk.fullOnly ? 'no' : 'bitmap'}'/>`),
      ...skipped.map((t) => `<disk name='${esc(t)}' checkpoint='no'/>`),
      '</disks></domaincheckpoint>',
    ].join('');
    const xmlDir = join(parent, `${randomBytes(6).toString('hex')}.xml`);
    await fsp.mkdir(xmlDir, { mode: 0o700 });
    try {
      await fsp.writeFile(join(xmlDir, 'backup.xml'), backup, { mode: 0o600 });
      await fsp.writeFile(join(xmlDir, 'checkpoint.xml'), check, { mode: 0o600 });
      await virsh.run(['backup-begin', '--domain', domain, '--backupxml', join(xmlDir, 'backup.xml'), '--checkpointxml', join(xmlDir, 'checkpoint.xml')], `backup of domain ${domain}`);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    } finally {
      await fsp.rm(xmlDir, { recursive: true, force: true });
    }
    // The socket must be QEMU's: hamal connects to nothing another user could have put there.
    const st = await fsp.lstat(socket).catch(() => undefined);
    if (!st?.isSocket() || st.uid !== owner.uid) {
      const job = new BackupJob(virsh, domain, socket, dir, checkpoint);
      await job.end().catch(() => {});
      throw new HamalError('LIBVIRT_SOCKET', `backup of domain ${domain}: ${socket} is not a socket of QEMU's user ${owner.uid}`, { subject: socket });
    }
    return new BackupJob(virsh, domain, socket, dir, checkpoint);
  }

  /** Ends the job (libvirt removes its scratch files and socket) and the directory. */
  async end(): Promise<void> {
    try {
      await this._virsh.run(['domjobabort', '--domain', this.domain], `end of the backup job of domain ${this.domain}`).catch((err: Error) => {
        if (!/no job is active|not active/i.test(err.message)) throw err;
      });
      // The abort returns before libvirt has torn the job down (seen here: domjobinfo
      // still says Backup just after): wait for it, so nothing of the job outlives the sync.
      await BackupJob.waitGone(this._virsh, this.domain, 30_000);
    } finally {
      await fsp.rm(this._dir, { recursive: true, force: true });
    }
  }

  /** Waits until the domain has no backup job; an error naming the domain past `ms`. */
  static async waitGone(virsh: Virsh, domain: string, ms: number): Promise<void> {
    const deadline = Date.now() + ms;
    while (/^Operation:\s+Backup/m.test(await virsh.run(['domjobinfo', '--domain', domain], `job of domain ${domain}`).catch(() => ''))) {
      if (Date.now() > deadline) throw new HamalError('LIBVIRT_JOB_STUCK', `the backup job of domain ${domain} did not end within ${ms / 1000} s of domjobabort`, { subject: domain });
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /**
   * Ends the domain's backup job if an earlier run of hamal left it (its socket lies under
   * `ours`); a job of another tool is refused by name, never broken. True when one was ended.
   */
  static async abortLeftover(virsh: Virsh, domain: string, ours: string): Promise<boolean> {
    const info = await virsh.run(['domjobinfo', '--domain', domain], `job of domain ${domain}`);
    if (!/^Operation:\s+Backup/m.test(info)) return false;
    const xml = await virsh.run(['backup-dumpxml', '--domain', domain], `backup job of domain ${domain}`).catch(() => '');
    const socket = /<server[^>]*socket='([^']*)'/.exec(xml)?.[1] ?? /<server[^>]*socket="([^"]*)"/.exec(xml)?.[1];
    if (!socket?.startsWith(ours + '/')) {
      throw new HamalError('LIBVIRT_BUSY', `domain ${domain} has a backup job hamal did not start${socket ? ` (NBD socket ${socket})` : ''}: end it first (virsh domjobabort ${domain})`, { subject: domain });
    }
    await virsh.run(['domjobabort', '--domain', domain], `end of the backup job of domain ${domain}`);
    await BackupJob.waitGone(virsh, domain, 30_000);
    return true;
  }
}
