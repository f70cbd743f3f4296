// VM snapshots.
// eSDK VmResourceImpl.createVmSnapshot: POST {vmUri}/snapshots with CreateVmSnapshotReq
// {name [1,256], description, type normal|backup|CBTbackup (default normal), needMemoryShot,
// isConsistent} -> VRMTask {urn, uri, taskUrn, taskUri}.
// queryVmSnapshot: GET {vmUri}/snapshots -> QueryVmSnapshotResp {currentSnapshot {urn, uri,
// name}, rootSnapshots: VmSnapshotInfo[] each with childSnapshots[]}, at most 32 snapshots;
// nova volumeops.query_vm_snapshot walks rootSnapshots/childSnapshots the same way.
// queryVmSnapshotById: GET {snapUri}[?refreshflag] -> QueryVmSnapshotByIdResp with
// volsnapshots: Volsnapshots[] {volumeUrn, volumeUri, storageType, datastoreUrn, snapUuid,
// snapNameOnDev, volCBTCreateTime, chgID}.
// deleteVmSnapshot: DELETE {snapUri} -> VRMTask.
import { ERR, fail, type Ctx, type Reply } from './http.ts';
import { SITE_URN, type Snap, type Vm } from './model.ts';
import type { FcState } from './state.ts';

const TYPES = ['normal', 'backup', 'CBTbackup'];

export async function create(st: FcState, vm: Vm, c: Ctx): Promise<Reply> {
  const { name, description = '', type = 'normal' } = c.body as { name?: unknown; description?: unknown; type?: unknown };
  if (typeof name !== 'string' || name.length < 1 || name.length > 256) fail(400, ERR.badParam, 'name must be a string of 1 to 256 characters');
  if (typeof type !== 'string' || !TYPES.includes(type)) fail(400, ERR.badParam, `type must be one of ${TYPES.join(', ')}`);
  if (st.snaps.filter((s) => s.vm === vm).length >= 32) fail(400, ERR.busy, 'The VM already has 32 snapshots.'); // GUESSED code
  const snap = await st.newSnapshot(vm, name as string, type as string, String(description));
  const task = st.newTask('createVmSnapshot', vm.urn, {
    hang: st.hangSnapshots,
    fail: st.failSnapshots,
    onSuccess: () => void (snap.status = 'ready'),
  });
  // A failed creation leaves no snapshot (GUESSED).
  if (st.failSnapshots) void st.dropSnapshot(snap);
  return { body: { urn: snap.urn, uri: snap.uri, taskUrn: task.urn, taskUri: task.uri } };
}

function info(st: FcState, s: Snap): Record<string, unknown> {
  return {
    urn: s.urn,
    uri: s.uri,
    name: s.name,
    description: s.description,
    createTime: s.createTime,
    type: s.type,
    status: s.status,
    childSnapshots: st.snaps.filter((c) => c.parent === s).map((c) => info(st, c)),
  };
}

export function list(st: FcState, vm: Vm): Reply {
  const mine = st.snaps.filter((s) => s.vm === vm);
  const cur = st.current(vm);
  return {
    body: {
      ...(cur ? { currentSnapshot: { urn: cur.urn, uri: cur.uri, name: cur.name } } : {}),
      rootSnapshots: mine.filter((s) => !s.parent).map((s) => info(st, s)),
    },
  };
}

export function find(st: FcState, path: string): Snap | undefined {
  return st.snaps.find((s) => s.uri === path);
}

export function byUrn(st: FcState, urn: unknown, what: string): Snap {
  return st.snaps.find((s) => s.urn === urn) ?? fail(404, ERR.snapshotNotFound, `${what} ${String(urn)} does not exist.`);
}

export function detail(s: Snap): Reply {
  return {
    body: {
      urn: s.urn,
      uri: s.uri,
      name: s.name,
      type: s.type,
      description: s.description,
      createTime: s.createTime,
      status: s.status,
      includingMemorySnapshot: false,
      volsnapshots: [...s.vols.values()].map((v) => ({
        volumeUrn: v.volume.urn,
        volumeUri: v.volume.uri,
        storageType: 'LOCALPOME',
        datastoreUrn: `${SITE_URN}:datastores:1`,
        snapUuid: v.snapUuid,
        snapNameOnDev: `snap-${v.snapUuid}`,
        ...(v.cbt ? { volCBTCreateTime: v.cbt.createTime, chgID: v.cbt.chgID } : {}),
      })),
      params: {},
    },
  };
}

export function remove(st: FcState, s: Snap): Reply {
  // GUESSED: a snapshot an open backup resource reads cannot be deleted.
  if (st.openResources().some((r) => r.snap === s)) fail(409, ERR.busy, `The snapshot ${s.urn} is in use by a backup resource.`);
  s.status = 'deleting';
  void st.dropSnapshot(s);
  const task = st.newTask('deleteVmSnapshot', s.urn);
  return { body: { taskUrn: task.urn, taskUri: task.uri } };
}
