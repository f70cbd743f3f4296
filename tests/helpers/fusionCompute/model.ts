// The stand-in's state: VMs, volumes, snapshots, tasks and backup resources, shaped after
// the eSDK beans they are served as (eSDK_FC_SDK_Java, model/vm and model/storage).

/** CBT block size in sectors (VMVolumeCBT.sectorOfBlock). GUESSED: no source gives a value. */
export const SECTORS_PER_BLOCK = 128;
export const BLOCK = SECTORS_PER_BLOCK * 512;
/** Site id as in the eSDK javadoc examples ("/service/sites/4D9D0815/volumes/394"). */
export const SITE_ID = '4D9D0815';
export const SITE_URI = `/service/sites/${SITE_ID}`;
export const SITE_URN = `urn:sites:${SITE_ID}`;

/** nova utils.generate_uri_from_urn: urn:sites:X:volumes:7 -> /service/sites/X/volumes/7. */
export const uriOfUrn = (urn: string): string => urn.replace('urn', '/service').replace(/:/g, '/');

export interface Vm {
  id: string; // i-0000000N
  urn: string;
  uri: string;
  uuid: string;
  name: string;
}

/** One CBT tracking period of a volume: a creation time, and a restart count inside it. */
export interface CbtEpoch {
  createTime: string;
  /** Bumped by restartCbt (host reboot): same createTime, chgID counter starts over. */
  restart: number;
  /** Last chgID handed out in this epoch. */
  chg: number;
}

export interface Volume {
  id: string;
  uuid: string;
  urn: string;
  uri: string;
  name: string;
  /** Sparse image holding the live content. */
  file: string;
  quantityGB: number;
  vm: Vm;
  cbt: CbtEpoch;
  /** block -> internal write generation of its last write. */
  writes: Map<number, number>;
  /** "createTime|restart|chgID" -> internal generation at which that chgID was cut. */
  chgHistory: Map<string, number>;
}

export interface VolSnap {
  volume: Volume;
  file: string; // frozen copy
  snapUuid: string;
  /** CBT fields, only for CBTbackup snapshots. */
  cbt?: { createTime: string; restart: number; chgID: string };
  gen: number;
}

export interface Snap {
  id: string;
  name: string;
  description: string;
  urn: string;
  uri: string;
  vm: Vm;
  type: string; // normal | backup | CBTbackup
  status: string; // creating | ready | deleting
  createTime: string;
  parent?: Snap;
  vols: Map<string, VolSnap>; // volume urn ->
}

export interface Task {
  id: string;
  urn: string;
  uri: string;
  type: string;
  entityUrn: string;
  startTime: string;
  polls: number;
  hang: boolean;
  fail?: { reason: string; reasonDes: string };
  finished: boolean;
  /** Runs once, when the task reaches success. */
  onSuccess?: () => void;
}

export interface BackupRes {
  task: Task;
  volume: Volume;
  snap: Snap;
  token: string;
  transMode: string;
  /** Clock millis at which the resource is released by the system. */
  expiresAt: number;
  deleted: boolean;
}

export const cbtKey = (createTime: string, restart: number, chgID: string) => `${createTime}|${restart}|${chgID}`;

/** "2015-01-23 15:53:18", the format of the eSDK examples (UTC). */
export function fcTime(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
}
