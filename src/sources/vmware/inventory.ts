import { HamalError } from '../../errors.ts';
import { ref, type Args, type Mor, type VsphereClient } from './VsphereClient.ts';

type Obj = Record<string, unknown>;

/** The `xsi:type` of a parsed element, whatever prefix the server gave the namespace. */
export function xsiType(o: unknown): string | undefined {
  if (!o || typeof o !== 'object') return undefined;
  const key = Object.keys(o).find((k) => k.startsWith('@') && k.endsWith(':type'));
  return key ? String((o as Obj)[key]) : undefined;
}

/** A typed simple value (`<val xsi:type="xsd:string">x</val>`) as its text; other values as they are. */
function scalar(v: unknown): unknown {
  if (!v || typeof v !== 'object') return v;
  const keys = Object.keys(v).filter((k) => !k.startsWith('@'));
  return keys.length === 1 && keys[0] === '#text' ? (v as Obj)['#text'] : v;
}

function morOf(o: unknown): Mor {
  const m = o as { '#text': string; '@type': string };
  return { type: m['@type'], value: m['#text'] };
}

/** Properties of every object of `type` under the root folder (ContainerView + RetrievePropertiesEx). */
export async function listObjects(client: VsphereClient, type: string, paths: string[]): Promise<Array<{ mor: Mor; props: Obj }>> {
  const [view] = await client.call('CreateContainerView', client.mor('viewManager'), { container: ref(client.mor('rootFolder')), type: [type], recursive: true });
  const v = morOf(view);
  try {
    return await retrieve(client, {
      specSet: [
        {
          propSet: [{ type, pathSet: paths }],
          objectSet: [
            {
              obj: ref(v),
              skip: true,
              selectSet: [{ attributes: { 'xsi:type': 'TraversalSpec' }, name: 'view', type: 'ContainerView', path: 'view', skip: false }],
            },
          ],
        },
      ],
      options: {},
    });
  } finally {
    await client.call('DestroyView', v).catch(() => {});
  }
}

/** Properties of one object. */
export async function objectProps(client: VsphereClient, mor: Mor, paths: string[]): Promise<Obj> {
  const [one] = await retrieve(client, { specSet: [{ propSet: [{ type: mor.type, pathSet: paths }], objectSet: [{ obj: ref(mor), skip: false }] }], options: {} });
  if (!one) throw new HamalError('VSPHERE_NOT_FOUND', `${mor.type} ${mor.value} not found on ${client.url.host}`, { subject: mor.value });
  return one.props;
}

async function retrieve(client: VsphereClient, spec: Args, relogin = true): Promise<Array<{ mor: Mor; props: Obj }>> {
  const out: Array<{ mor: Mor; props: Obj }> = [];
  let [result] = (await client.call('RetrievePropertiesEx', client.mor('propertyCollector'), spec)) as Obj[];
  for (;;) {
    for (const o of (result?.objects as Obj[] | undefined) ?? []) {
      // A missingSet (e.g. NotAuthenticated) comes instead of a fault: never ignore it.
      const missing = o.missingSet as Obj[] | undefined;
      if (missing?.length) {
        if (relogin && JSON.stringify(missing[0]!.fault).includes('NotAuthenticated')) {
          await client.relogin();
          return retrieve(client, spec, false);
        }
        throw new HamalError('VSPHERE_FAULT', `${client.url.host} did not return ${String(missing[0]!.path)}: ${JSON.stringify(missing[0]!.fault).slice(0, 200)}`);
      }
      const props: Obj = {};
      for (const p of (o.propSet as Obj[] | undefined) ?? []) props[String(p.name)] = scalar(p.val);
      out.push({ mor: morOf(o.obj), props });
    }
    const token = result?.token;
    if (!token) return out;
    [result] = (await client.call('ContinueRetrievePropertiesEx', client.mor('propertyCollector'), { token: String(token) })) as Obj[];
  }
}

export interface VmRef {
  mor: Mor;
  name: string;
  instanceUuid?: string;
  biosUuid?: string;
}

/**
 * Finds a VM by managed object id (`vm-42`), instance UUID, BIOS UUID, inventory path
 * (`/DC0/vm/folder/name`, as the vSphere client shows it) or name. A name that several VMs
 * have is an error listing them.
 */
export async function findVm(client: VsphereClient, selector: string): Promise<VmRef> {
  if (selector.includes('/')) {
    const [found] = await client.call('FindByInventoryPath', client.mor('searchIndex'), { inventoryPath: selector.replace(/^\//, '') });
    if (found && morOf(found).type === 'VirtualMachine') {
      const props = await objectProps(client, morOf(found), ['name', 'config.instanceUuid', 'config.uuid']);
      return { mor: morOf(found), name: String(props.name), instanceUuid: props['config.instanceUuid'] as string | undefined, biosUuid: props['config.uuid'] as string | undefined };
    }
  }
  const all = (await listObjects(client, 'VirtualMachine', ['name', 'config.instanceUuid', 'config.uuid'])).map(({ mor, props }) => ({
    mor,
    name: String(props.name),
    instanceUuid: props['config.instanceUuid'] as string | undefined,
    biosUuid: props['config.uuid'] as string | undefined,
  }));
  const s = selector.toLowerCase();
  const byId = all.filter((v) => v.mor.value === selector || v.instanceUuid?.toLowerCase() === s || v.biosUuid?.toLowerCase() === s);
  const found = byId.length ? byId : all.filter((v) => v.name === selector);
  if (found.length === 1) return found[0]!;
  if (!found.length) throw new HamalError('VM_NOT_FOUND', `no VM ${selector} on ${client.url.host} (by id, instance UUID, BIOS UUID, inventory path or name)`, { subject: selector });
  throw new HamalError('VM_AMBIGUOUS', `${found.length} VMs are named ${selector} on ${client.url.host}: ${found.map((v) => `${v.mor.value} (${v.instanceUuid ?? 'no uuid'})`).join(', ')}; give the id or instance UUID`, {
    subject: selector,
  });
}

export interface VmDisk {
  key: number;
  label: string;
  capacity: number;
  fileName: string;
  datastore?: string;
  changeId: string | null;
  controllerKey?: number;
  /** The backing's xsi:type: VirtualDiskFlatVer2BackingInfo, VirtualDiskSeSparseBackingInfo, ... */
  backingType?: string;
  /** The file of `backing.parent`: set when this backing is a delta (the VM had snapshots, a linked clone). */
  parentFileName?: string;
  /** Why the disk cannot be snapshotted (independent, physical RDM); undefined when it can. */
  notSyncable?: string;
}

/** The VM's virtual disks, from config.hardware.device. */
export async function vmDisks(client: VsphereClient, vm: Mor): Promise<VmDisk[]> {
  const props = await objectProps(client, vm, ['config.hardware.device']);
  const devices = ((props['config.hardware.device'] as Obj | undefined)?.VirtualDevice ?? []) as Obj[];
  const list = Array.isArray(devices) ? devices : [devices];
  return list
    .filter((d) => xsiType(d) === 'VirtualDisk')
    .map((d) => {
      const backing = (d.backing ?? {}) as Obj;
      const mode = String(backing.diskMode ?? 'persistent');
      const rdm = xsiType(backing)?.includes('RawDiskMapping') && backing.compatibilityMode === 'physicalMode';
      const bytes = d.capacityInBytes !== undefined ? Number(d.capacityInBytes) : Number(d.capacityInKB ?? 0) * 1024;
      const ds = backing.datastore as Obj | undefined;
      return {
        key: Number(d.key),
        label: String((d.deviceInfo as Obj | undefined)?.label ?? `disk-${d.key}`),
        capacity: bytes,
        fileName: String(backing.fileName ?? ''),
        datastore: ds ? String(ds['#text']) : undefined,
        changeId: backing.changeId ? String(backing.changeId) : null,
        controllerKey: d.controllerKey !== undefined ? Number(d.controllerKey) : undefined,
        backingType: xsiType(backing),
        parentFileName: (backing.parent as Obj | undefined)?.fileName !== undefined ? String((backing.parent as Obj).fileName) : undefined,
        notSyncable: rdm ? 'physical RDM' : mode.startsWith('independent') ? `independent disk (${mode})` : undefined,
      };
    });
}
