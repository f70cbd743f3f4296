import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { HamalError } from '../../errors.ts';
import { NbdServerProcess } from '../nbd/NbdServerProcess.ts';
import { expandCommand } from '../nbd/commandTemplate.ts';

/**
 * The values a command template may use, as `{name}`. The password is never one of them:
 * `{password_file}` names a 0600 file that holds it, deleted when the export stops.
 */
export interface NbdkitValues {
  server: string;
  user: string;
  thumbprint: string;
  moref: string;
  snapshot: string;
  /** Datastore path of the snapshot's disk file: `[datastore] dir/file.vmdk`. */
  file: string;
  datastore: string;
  /** `file` without its `[datastore] `. */
  path: string;
}

/** Production template: nbdkit's vddk plugin with VMware's VDDK (which the operator installs). */
export const VDDK_TEMPLATE =
  'nbdkit --foreground --readonly --unix {socket} vddk libdir=/opt/vmware-vix-disklib-distrib server={server} user={user} ' +
  'password=+{password_file} thumbprint={thumbprint} vm=moref={moref} snapshot={snapshot} file={file} transports=nbdssl:nbd';

/**
 * One nbdkit serving one disk of one snapshot, started from a command template
 * (expandCommand: a value never becomes two arguments).
 */
export class NbdkitExport {
  static async start(template: string, values: NbdkitValues, password: string, workDir: string, maxRequestBytes: number): Promise<NbdServerProcess> {
    const dir = await NbdServerProcess.privateDir(workDir, 'nbdkit');
    const socket = join(dir, 'nbd.sock');
    const passwordFile = join(dir, 'password');
    await fsp.writeFile(passwordFile, password, { mode: 0o600 });
    const all: Record<string, string> = { ...values, socket, password_file: passwordFile };
    let argv: string[];
    try {
      argv = expandCommand(template, all, '[hamal] vmware_nbdkit_command');
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    }
    try {
      return await NbdServerProcess.start(argv, dir, socket, values.file, maxRequestBytes);
    } catch (err) {
      if ((err as HamalError).code === 'NBD_SERVER_FAILED') {
        throw new HamalError('NBDKIT_FAILED', (err as Error).message.replace(/^\S+ for/, 'nbdkit for'), { subject: values.file });
      }
      throw err;
    }
  }
}
