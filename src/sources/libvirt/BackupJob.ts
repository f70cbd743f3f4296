import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import { XMLParser } from 'fast-xml-parser';
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

/** A backup job an earlier run left running: what it serves, from where. */
export interface LeftoverJob {
  job: BackupJob;
  /** Each disk the job exports: the checkpoint it reads changes since, or null (full). */
  disks: Map<string, string | null>;
  /** Whether its socket is still QEMU's, so it can be read again; else it is only ended. */
  reusable: boolean;
}

/** A short name for a domain's directories: unix socket paths under them must stay short. */
export function jobKey(uuid: string): string {
  return createHash('sha256').update(uuid).digest('hex').slice(0, 12);
}

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', isArray: (name) => name === 'disk' });

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
    /** The job's private directory: socket and scratch files. */
    readonly dir: string,
    /** The checkpoint made with the job. */
    readonly checkpoint: string,
  ) {}

  /**
   * Starts the job. Its directory is `<key>.<checkpoint>` (jobKey: of the domain's UUID), so
   * a later run knows which checkpoint a leftover job made and which directories are its.
   */
  static async begin(virsh: Virsh, domain: string, key: string, disks: JobDisk[], skipped: string[], checkpoint: string, workDir: string, owner: { uid: number; gid: number }): Promise<BackupJob> {
    // The parent only lets QEMU's user pass through (0711) to the one directory it owns.
    const parent = join(workDir, 'libvirt');
    await fsp.mkdir(parent, { recursive: true, mode: 0o711 });
    await fsp.chmod(parent, 0o711);
    const dir = join(parent, `${key}.${checkpoint}`);
    await fsp.mkdir(dir, { mode: 0o700 });
    // QEMU (libvirt-qemu under qemu:///system) binds the socket and writes the scratch files.
    try {
      await fsp.chown(dir, owner.uid, owner.gid);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw new HamalError('LIBVIRT_LIB_DIR', `cannot give ${dir} to QEMU's user ${owner.uid}:${owner.gid} (hamal runs as root beside libvirtd): ${(err as NodeJS.ErrnoException).code}`, { subject: 'hamal_lib_dir' });
    }
    const socket = join(dir, 'nbd.sock');
    // sockaddr_un holds 107 bytes; QEMU refuses longer paths with a message naming neither.
    if (Buffer.byteLength(socket) > 107) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw new HamalError('LIBVIRT_LIB_DIR', `the backup job's NBD socket ${socket} is longer than a unix socket path may be (107 bytes): choose a shorter hamal_lib_dir`, { subject: 'hamal_lib_dir' });
    }
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
    const xmlDir = `${dir}.xml`;
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
      await fsp.rm(this.dir, { recursive: true, force: true });
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
   * The domain's backup job if an earlier run of hamal left it (its socket lies in a
   * directory `<key>.<checkpoint>` under `ours`, a socket of QEMU's user); null when the
   * domain has none. A job of another tool is refused by name, never broken.
   */
  static async leftover(virsh: Virsh, domain: string, key: string, ours: string, owner: { uid: number }): Promise<LeftoverJob | null> {
    const info = await virsh.run(['domjobinfo', '--domain', domain], `job of domain ${domain}`);
    if (!/^Operation:\s+Backup/m.test(info)) return null;
    const xml = await virsh.run(['backup-dumpxml', '--domain', domain], `backup job of domain ${domain}`).catch(() => '');
    let doc: { domainbackup?: { server?: Record<string, string>; disks?: { disk?: Array<Record<string, string>> } } } = {};
    try {
      doc = parser.parse(xml);
    } catch {
      // Unreadable: treated as a job of another tool below.
    }
    const socket = doc.domainbackup?.server?.['@socket'];
    const dir = socket ? dirname(socket) : '';
    const checkpoint = dirname(dir) === ours && basename(dir).startsWith(`${key}.`) ? basename(dir).slice(key.length + 1) : '';
    if (!socket || !checkpoint || basename(socket) !== 'nbd.sock') {
      throw new HamalError('LIBVIRT_BUSY', `domain ${domain} has a backup job hamal did not start${socket ? ` (NBD socket ${socket})` : ''}: end it first (virsh domjobabort ${domain})`, { subject: domain });
    }
    const disks = new Map<string, string | null>();
    for (const d of doc.domainbackup?.disks?.disk ?? []) {
      if (d['@backup'] !== 'no' && d['@name']) disks.set(d['@name'], d['@backupmode'] === 'incremental' ? d['@incremental'] ?? null : null);
    }
    const job = new BackupJob(virsh, domain, socket, dir, checkpoint);
    const st = await fsp.lstat(socket).catch(() => undefined);
    return { job, disks, reusable: !!st?.isSocket() && st.uid === owner.uid };
  }

  /**
   * Removes what killed runs left under `ours` for the domain `key` (job directories,
   * XML directories), except `keep`: call it when the domain has no job of ours running.
   */
  static async sweep(ours: string, key: string, keep?: string): Promise<number> {
    const names = await fsp.readdir(ours).catch(() => [] as string[]);
    const stale = names.filter((n) => n.startsWith(`${key}.`) && join(ours, n) !== keep && join(ours, n) !== `${keep}.xml`);
    await Promise.all(stale.map((n) => fsp.rm(join(ours, n), { recursive: true, force: true })));
    return stale.length;
  }
}
