import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Virsh } from './Virsh.ts';
import type { DomainDisk } from './domainXml.ts';

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
  ) {}

  static async begin(virsh: Virsh, domain: string, disks: JobDisk[], skipped: DomainDisk[], checkpoint: string, workDir: string, owner?: { uid: number; gid: number }): Promise<BackupJob> {
    // The parent only lets QEMU's user pass through (0711) to the one directory it owns.
    const parent = join(workDir, 'libvirt');
    await fsp.mkdir(parent, { recursive: true, mode: 0o711 });
    await fsp.chmod(parent, 0o711);
    const dir = join(parent, randomBytes(6).toString('hex'));
    await fsp.mkdir(dir, { mode: 0o700 });
    // QEMU (libvirt-qemu under qemu:///system) binds the socket and writes the scratch files.
    if (owner) await fsp.chown(dir, owner.uid, owner.gid).catch(() => {});
    const socket = join(dir, 'nbd.sock');
    const backup = [
      `<domainbackup mode='pull'>`,
      `<server transport='unix' socket='${esc(socket)}'/>`,
      '<disks>',
      // Per-disk starting points (libvirt 7.6: backupmode, incremental).
      ...disks.map(({ disk, incremental }) =>
        `<disk name='${esc(disk.target)}' backup='yes' type='file' ${incremental ? `backupmode='incremental' incremental='${esc(incremental)}'` : `backupmode='full'`}><scratch file='${esc(join(dir, `${disk.target}.scratch`))}'/></disk>`,
      ),
      ...skipped.map((d) => `<disk name='${esc(d.target)}' backup='no'/>`),
      '</disks>',
      '</domainbackup>',
    ].join('\n');
    const check = [
      `<domaincheckpoint><name>${esc(checkpoint)}</name><description>hamal sync</description><disks>`,
      ...disks.map(({ disk }) => `<disk name='${esc(disk.target)}' checkpoint='bitmap'/>`),
      ...skipped.map((d) => `<disk name='${esc(d.target)}' checkpoint='no'/>`),
      '</disks></domaincheckpoint>',
    ].join('');
    const xmlDir = join(parent, `${randomBytes(6).toString('hex')}.xml`);
    await fsp.mkdir(xmlDir, { mode: 0o700 });
    try {
      await fsp.writeFile(join(xmlDir, 'backup.xml'), backup, { mode: 0o600 });
      await fsp.writeFile(join(xmlDir, 'checkpoint.xml'), check, { mode: 0o600 });
      await virsh.run(['backup-begin', domain, join(xmlDir, 'backup.xml'), join(xmlDir, 'checkpoint.xml')], `backup of domain ${domain}`);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    } finally {
      await fsp.rm(xmlDir, { recursive: true, force: true });
    }
    return new BackupJob(virsh, domain, socket, dir);
  }

  /** Ends the job (libvirt removes its scratch files and socket) and the directory. */
  async end(): Promise<void> {
    await BackupJob.abort(this._virsh, this.domain).finally(() => fsp.rm(this._dir, { recursive: true, force: true }));
  }

  /** Ends the domain's backup job if it has one (a killed run's): domjobabort. */
  static async abort(virsh: Virsh, domain: string): Promise<boolean> {
    const info = await virsh.run(['domjobinfo', domain], `job of domain ${domain}`).catch(() => '');
    if (!/^Operation:\s+Backup/m.test(info)) return false;
    await virsh.run(['domjobabort', domain], `end of the backup job of domain ${domain}`);
    return true;
  }
}
