import { readFileSync, readlinkSync } from 'node:fs';

/**
 * Who a process is, well enough to tell later whether it is still running: its pid and
 * start time, within a PID namespace, on one boot of one kernel. A pid alone is reused; a
 * hostname is shared by machines; these four are not (docs/format.md, Directory store).
 */
export interface ProcessIdentity {
  pid: number;
  /** Clock ticks since boot (/proc/PID/stat field 22); 0 when unknown. */
  start: number;
  /** The inode of the PID namespace; 0 when unknown (not Linux). */
  pidns: number;
  /** /proc/sys/kernel/random/boot_id, hex; '' when unknown. */
  boot: string;
}

let me: ProcessIdentity | undefined;
export function thisProcess(): ProcessIdentity {
  me ??= { pid: process.pid, start: startTime(process.pid) ?? 0, pidns: pidNamespace(), boot: bootId() };
  return me;
}

/**
 * Whether the process `p` is certainly gone: true when it ran on this boot, in this PID
 * namespace, and no process with its pid and start time exists; false when it runs;
 * undefined when this process cannot tell (another host, container or boot).
 */
export function processGone(p: ProcessIdentity): boolean | undefined {
  const m = thisProcess();
  if (p.boot !== m.boot || m.boot === '' || p.pidns !== m.pidns || m.pidns === 0) return undefined;
  if (p.pid === m.pid && p.start === m.start) return false;
  return startTime(p.pid) !== p.start;
}

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22), or null when there is none. */
export function startTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[19]);
  } catch {
    return null;
  }
}

/** This boot of this kernel, hex (/proc/sys/kernel/random/boot_id); '' when unknown. */
function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').replace(/[^0-9a-f]/g, '');
  } catch {
    return '';
  }
}

/** The inode of this process's PID namespace; 0 when unknown (not Linux). */
function pidNamespace(): number {
  try {
    return Number(/\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}
