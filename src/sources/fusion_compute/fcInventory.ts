import { HamalError } from '../../errors.ts';
import { uriOf, type FcClient } from './FcClient.ts';

export interface FcVm {
  urn: string;
  uri: string;
  name: string;
  uuid?: string;
}

/** One disk of vmConfig.disks (eSDK model Disk): its volume by urn, never by uri. */
export interface FcDisk {
  volumeUrn: string;
  volumeUri: string;
  sequenceNum?: number;
}

/** A snapshot in the tree of GET {vm}/snapshots (eSDK QueryVmSnapshotResp, VmSnapshotInfo). */
export interface FcSnapshotRef {
  urn: string;
  uri: string;
  name: string;
  /** creating, ready, deleting, ... (VmSnapshotInfo); absent when not told. */
  status?: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The VM `selector` names: a urn (read directly), a UUID or a name (the `uuid` and `name`
 * filters of the paged VM list, eSDK QueryVmsReq; `name` matches loosely, so only exact
 * names count). Every site is searched; several VMs of one name are an error listing them.
 */
export async function findVm(fc: FcClient, selector: string): Promise<FcVm> {
  if (selector.startsWith('urn:')) {
    const vm = (await fc.call('GET', uriOf(selector), `VM ${selector}`)) as unknown as FcVm;
    return { urn: vm.urn, uri: vm.uri ?? uriOf(vm.urn), name: vm.name, uuid: vm.uuid };
  }
  const sites = ((await fc.call('GET', '/service/sites', 'sites')).sites ?? []) as Array<{ uri: string; name: string }>;
  const filter: Record<string, string> = UUID.test(selector) ? { uuid: selector } : { name: selector };
  const found = new Map<string, FcVm>();
  const lower = selector.toLowerCase();
  for (const site of sites) {
    for await (const vm of fc.pages<FcVm>(`${site.uri}/vms`, 'vms', `VMs of site ${site.name}`, filter)) {
      if (vm.name === selector || vm.uuid?.toLowerCase() === lower) found.set(vm.urn, { urn: vm.urn, uri: vm.uri ?? uriOf(vm.urn), name: vm.name, uuid: vm.uuid });
    }
  }
  if (found.size === 1) return [...found.values()][0]!;
  if (!found.size) throw new HamalError('VM_NOT_FOUND', `no VM ${selector} on FusionCompute (by urn, UUID or name)`, { subject: selector });
  throw new HamalError('VM_AMBIGUOUS', `${found.size} VMs are named ${selector}: ${[...found.keys()].join(', ')}; give the urn`, { subject: selector });
}

/** The VM's disks, each volume's uri built from its urn (vmConfig.disks has no volumeUri). */
export async function vmDisks(fc: FcClient, vm: FcVm): Promise<FcDisk[]> {
  const detail = await fc.call('GET', vm.uri, `VM ${vm.name}`);
  const disks = ((detail.vmConfig as { disks?: Array<{ volumeUrn?: string; sequenceNum?: number }> } | undefined)?.disks ?? []).slice();
  return disks.map((d, i) => {
    if (!d.volumeUrn) throw new HamalError('FC_BAD_REPLY', `VM ${vm.name}: disk ${d.sequenceNum ?? i + 1} has no volumeUrn`, { subject: vm.urn });
    return { volumeUrn: d.volumeUrn, volumeUri: uriOf(d.volumeUrn), sequenceNum: d.sequenceNum };
  });
}

/** Every snapshot of the VM: the tree's roots and all their descendants, parents first. */
export async function listSnapshots(fc: FcClient, vm: FcVm): Promise<FcSnapshotRef[]> {
  type Node = FcSnapshotRef & { childSnapshots?: Node[] };
  const reply = await fc.call('GET', `${vm.uri}/snapshots`, `snapshots of VM ${vm.name}`);
  const out: FcSnapshotRef[] = [];
  const walk = (nodes: Node[] | undefined, depth: number) => {
    // The VRM keeps at most 32 snapshots per VM (QueryVmSnapshotResp): deeper is a bad reply.
    if (depth > 64) throw new HamalError('FC_BAD_REPLY', `snapshot tree of VM ${vm.name} is deeper than 64`, { subject: vm.urn });
    for (const n of nodes ?? []) {
      out.push({ urn: n.urn, uri: n.uri ?? uriOf(n.urn), name: n.name, status: n.status });
      walk(n.childSnapshots, depth + 1);
    }
  };
  walk(reply.rootSnapshots as Node[] | undefined, 0);
  return out;
}
