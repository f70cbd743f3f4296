import { XMLParser } from 'fast-xml-parser';
import { HamalError } from '../../errors.ts';

/** A disk of a domain as its XML describes it (libvirt "Domain XML format", devices/disk). */
export interface DomainDisk {
  /** Target device: `vda`, `sdb`; the disk's id in the repository. */
  target: string;
  type: 'file' | 'block' | string;
  device: 'disk' | string;
  /** Image format of the driver: qcow2, raw. */
  format: string;
  /** The image file or block device. */
  source: string;
  /** Why hamal cannot back it up; undefined when it can. */
  notSyncable?: string;
  /** Why it is read in full every time (no checkpoint bitmap); undefined for qcow2. */
  fullOnly?: string;
}

export interface DomainInfo {
  name: string;
  uuid: string;
  disks: DomainDisk[];
  /** Targets of the cdroms and floppies: named in the backup and checkpoint XML as left out. */
  others: string[];
  /** The user QEMU runs as, from the live XML's DAC seclabel (`+64055:+994`); undefined when not told. */
  qemuUser?: { uid: number; gid: number };
}

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', isArray: (name) => name === 'disk' || name === 'seclabel' });

/** The name, UUID and disks of `virsh dumpxml`; cdroms and floppies are left out. */
export function parseDomainXml(xml: string, what: string): DomainInfo {
  let doc: { domain?: { name?: unknown; uuid?: unknown; seclabel?: Array<Record<string, unknown>>; devices?: { disk?: Array<Record<string, unknown>> } } };
  try {
    doc = parser.parse(xml);
  } catch (err) {
    throw new HamalError('LIBVIRT_BAD_XML', `domain XML of ${what} cannot be read: ${(err as Error).message}`, { subject: what });
  }
  const d = doc.domain;
  if (!d || typeof d.name !== 'string') throw new HamalError('LIBVIRT_BAD_XML', `domain XML of ${what} has no <domain><name>`, { subject: what });
  const disks: DomainDisk[] = [];
  const others: string[] = [];
  for (const x of d.devices?.disk ?? []) {
    const device = String(x['@device'] ?? 'disk');
    const target = String((x.target as Record<string, unknown> | undefined)?.['@dev'] ?? '');
    if (device === 'cdrom' || device === 'floppy') {
      if (/^[a-z]+[a-z0-9]*$/.test(target)) others.push(target);
      continue;
    }
    const src = (x.source ?? {}) as Record<string, unknown>;
    const type = String(x['@type'] ?? 'file');
    const format = String((x.driver as Record<string, unknown> | undefined)?.['@type'] ?? 'raw');
    const disk: DomainDisk = { target, type, device, format, source: String(src['@file'] ?? src['@dev'] ?? src['@name'] ?? '') };
    if (!/^[a-z]+[a-z0-9]*$/.test(target)) disk.notSyncable = `target ${JSON.stringify(target)} is not a device name`;
    else if (type !== 'file' && type !== 'block') disk.notSyncable = `a ${type} disk (only file and block disks are backed up)`;
    // Checkpoints are bitmaps in qcow2 images (libvirt refuses them on raw ones): a raw
    // disk is backed up in full each time, with no changeId.
    else if (format !== 'qcow2') disk.fullOnly = `a ${format} image keeps no checkpoint bitmap`;
    else if (device !== 'disk') disk.notSyncable = `a ${device}`;
    disks.push(disk);
  }
  const dac = (d.seclabel ?? []).find((l) => l['@model'] === 'dac');
  const m = /^\+(\d+):\+(\d+)$/.exec(String(dac?.label ?? ''));
  return { name: d.name, uuid: String(d.uuid ?? ''), disks, others, qemuUser: m ? { uid: Number(m[1]), gid: Number(m[2]) } : undefined };
}
