// Sites, VMs and volumes.
// eSDK SiteResourceImpl.querySites: GET /service/sites -> QuerySitesResp {sites: SiteBasicInfo[]}
// (urn, uri, name, ip, isDC, isSelf, status). cinder _prepare_site_uri and nova
// get_first_site read sites[].uri / sites[].urn.
// eSDK VmResourceImpl.queryVMs / ESDKURL vmResourceQueryVms: GET {siteUri}/vms?limit&offset
// &name&...&uuid&detail -> QueryVMsResp {total, vms: VmInfo[]}. QueryVmsReq.limit: "at most
// 100; when more than 100 would be returned the system treats it as limit=100, offset=0".
// nova fcinstance: pages with limit=100, offset=len(seen), stops on total; filters uuid,
// externalUuid, name, detail (0/1/2).
// VM detail: GET {vmUri} -> VmInfo with vmConfig.disks: Disk[] (Disk.java: no volumeUri).
// Volume detail: GET {volumeUri} -> Volume (model/storage/Volume.java); nova
// utils.generate_uri_from_urn gives the volume URI from Disk.volumeUrn.
import { ERR, fail, type Ctx, type Reply } from './http.ts';
import { SITE_URI, SITE_URN, type Vm, type Volume } from './model.ts';
import type { FcState } from './state.ts';

export const sites = (): Reply => ({
  body: { sites: [{ urn: SITE_URN, uri: SITE_URI, name: 'site', ip: '127.0.0.1', isDC: false, isSelf: true, status: 'normal' }] },
});

/** How limit > 100 is answered: the eSDK's words (clamp, offset 0) or a 400. */
export type OverLimit = 'clamp' | 'refuse';

export function listVms(st: FcState, c: Ctx, overLimit: OverLimit): Reply {
  const q = c.query;
  const num = (n: string, d: number) => {
    const v = q.get(n);
    if (v === null) return d;
    if (!/^\d+$/.test(v)) fail(400, ERR.badParam, `${n} must be a non-negative integer`);
    return Number(v);
  };
  let limit = num('limit', 100); // GUESSED default when absent
  let offset = num('offset', 0);
  if (limit > 100) {
    if (overLimit === 'refuse') fail(400, ERR.badParam, 'limit must not exceed 100');
    limit = 100;
    offset = 0;
  }
  const name = q.get('name')?.toLowerCase();
  const uuid = q.get('uuid');
  const vmId = q.get('vmId')?.toLowerCase();
  const detail = num('detail', 1);
  const hits = st.vms.filter((v) => (!name || v.name.toLowerCase().includes(name)) && (!uuid || v.uuid === uuid) && (!vmId || v.id.toLowerCase().includes(vmId)));
  return { body: { total: hits.length, vms: hits.slice(offset, offset + limit).map((v) => vmInfo(st, v, detail)) } };
}

/** VmInfo at QueryVmsReq.detail 0, 1 or 2 (2: as the VM detail query). */
export function vmInfo(st: FcState, vm: Vm, detail = 2): Record<string, unknown> {
  const base = { uri: vm.uri, urn: vm.urn, uuid: vm.uuid, name: vm.name, status: 'running', idle: 0 };
  if (detail === 0) return base;
  const more = {
    ...base,
    description: '',
    group: '',
    location: `${SITE_URN}:clusters:1`,
    locationName: 'cluster',
    hostUrn: `${SITE_URN}:hosts:1`,
    clusterUrn: `${SITE_URN}:clusters:1`,
    pvDriverStatus: 'running',
    toolInstallStatus: 'empty',
    isTemplate: false,
    isLinkClone: false,
    createTime: '2024-01-01 00:00:00',
    vmType: 0,
  };
  if (detail === 1) return { ...more, vmConfig: { nics: [] } };
  return { ...more, vmConfig: { cpu: { quantity: 2 }, memory: { quantityMB: 2048 }, disks: st.volumes.filter((v) => v.vm === vm).map(disk), nics: [] }, params: {} };
}

/** Disk.java: volumeUrn, sequenceNum, pciType, quantityGB, ... and no volumeUri. */
function disk(v: Volume, i: number): Record<string, unknown> {
  return {
    pciType: 'VIRTIO', // GUESSED: the javadoc lists IDE and SCSI only for creation
    sequenceNum: i + 1,
    volumeUrn: v.urn,
    volumeUrl: `/POME/ds1/${v.uuid}.vhd`,
    volumeUuid: v.uuid,
    quantityGB: v.quantityGB,
    datastoreUrn: `${SITE_URN}:datastores:1`,
    datastoreName: 'ds1',
    isThin: true,
    indepDisk: false,
    persistentDisk: true,
    storageType: 'LOCALPOME',
    volType: 0,
    type: 'normal',
    diskName: v.name,
  };
}

export function findVm(st: FcState, path: string): Vm | undefined {
  return st.vms.find((v) => v.uri === path);
}

export function volumeInfo(v: Volume): Reply {
  return {
    body: {
      urn: v.urn,
      uri: v.uri,
      uuid: v.uuid,
      name: v.name,
      quantityGB: v.quantityGB,
      status: 'USE',
      storageType: 'LOCALPOME',
      isThin: true,
      type: 'normal',
      datastoreUrn: `${SITE_URN}:datastores:1`,
      datastoreName: 'ds1',
      indepDisk: false,
      persistentDisk: true,
      volNameOnDev: v.uuid,
      volProvisionSize: v.quantityGB * 1024,
      volType: 0,
      pciType: 'VIRTIO',
      volumeUrl: `/POME/ds1/${v.uuid}.vhd`,
      volumeUseType: 0,
    },
  };
}

export function volumeByUri(st: FcState, uri: string): Volume {
  return st.volumes.find((v) => v.uri === uri) ?? fail(404, ERR.volumeNotFound, `The volume ${uri} does not exist.`);
}
