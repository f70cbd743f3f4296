// Backup resources (the data channel's lease). eSDK BackupOperationResourceImpl and its
// interface's javadoc:
//  - create: POST {volUri}/backupresources, CreateBackupResourceReq {delay 60..7200 s
//    (default 7200; unextended resources are released after it), taskType (CBTBackup for
//    CBT backup), ip (the requester), snapUrn1 (optional start snapshot), snapUrn2 (end
//    snapshot, required for backups), volCBTCreateTime (checked when given), transMode lan
//    | lanssl} -> VRMTask {taskUrn, taskUri};
//  - query: GET {volUri}/backupresources/{taskId} ("the id from the taskUri", e.g. 4962)
//    -> BackupResource {urn, uri, resourceUrl, hostIP, hostPort (a string), targetFile,
//    token, status, reason, reasonDes, runningTime, caCert, taskUri, taskUrn};
//  - modify: PUT same path {delay}: "delay plus the remaining delay must not exceed 7200";
//  - delete: DELETE same path. Both read as SDKCommonResp (no body needed).
// GUESSED: status mirrors the preparing task; hostIP/token/... appear once it succeeded;
// resourceUrl is a path on hostIP:hostPort; targetFile names the frozen snapshot file.
import { basename } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ERR, fail, type Ctx, type Reply } from './http.ts';
import type { BackupRes, Volume } from './model.ts';
import type { FcState } from './state.ts';
import { byUrn } from './snapshots.ts';

const MAX_DELAY = 7200;

export interface DataEndpoint {
  port: number;
  caCert?: string;
}

function delayOf(v: unknown, dflt?: number): number {
  const d = v == null ? dflt : v;
  if (!Number.isInteger(d) || (d as number) < 60 || (d as number) > MAX_DELAY) fail(400, ERR.badParam, 'delay must be an integer from 60 to 7200 seconds');
  return d as number;
}

export function create(st: FcState, v: Volume, c: Ctx, data: DataEndpoint): Reply {
  const b = c.body;
  const delay = delayOf(b.delay, MAX_DELAY);
  if (b.taskType !== 'CBTBackup') fail(400, ERR.badParam, 'taskType: only CBTBackup is modelled');
  if (typeof b.ip !== 'string' || !b.ip) fail(400, ERR.badParam, 'ip is required');
  if (b.transMode !== 'lan' && b.transMode !== 'lanssl') fail(400, ERR.badParam, 'transMode must be lan or lanssl');
  // GUESSED: this stand-in's data host serves one of the two modes (TLS iff it has a cert).
  if ((b.transMode === 'lanssl') !== !!data.caCert) fail(400, ERR.badParam, `transMode ${String(b.transMode)} is not available on this host`);
  if (b.snapUrn2 == null) fail(400, ERR.badParam, 'snapUrn2 is required for a backup');
  const snap = byUrn(st, b.snapUrn2, 'snapUrn2');
  const vs = snap.vols.get(v.urn) ?? fail(400, ERR.badParam, `The snapshot ${snap.urn} has no snapshot of volume ${v.urn}.`);
  if (b.snapUrn1 != null && byUrn(st, b.snapUrn1, 'snapUrn1').vm !== snap.vm) fail(400, ERR.badParam, 'snapUrn1 and snapUrn2 belong to different VMs');
  if (snap.status !== 'ready') fail(400, ERR.busy, `The snapshot ${snap.urn} is ${snap.status}.`);
  if (b.volCBTCreateTime != null && b.volCBTCreateTime !== vs.cbt?.createTime) fail(400, ERR.cbtInvalid, 'volCBTCreateTime does not match the snapshot');
  const task = st.newTask('loadBackupResource', v.urn);
  const r: BackupRes = { task, volume: v, snap, token: randomBytes(16).toString('hex'), transMode: String(b.transMode), expiresAt: st.now() + delay * 1000, deleted: false };
  st.resources.push(r);
  return { body: { taskUrn: task.urn, taskUri: task.uri } };
}

function find(st: FcState, v: Volume, taskId: string): BackupRes {
  const r = st.resources.find((x) => x.volume === v && x.task.id === taskId);
  if (!r || r.deleted || r.expiresAt <= st.now()) fail(404, ERR.resourceNotFound, `The backup resource ${taskId} of volume ${v.urn} does not exist or was released.`);
  return r!;
}

export function query(st: FcState, v: Volume, taskId: string, data: DataEndpoint): Reply {
  const r = find(st, v, taskId);
  const { status } = st.pollTask(r.task);
  const body: Record<string, unknown> = { status, taskUrn: r.task.urn, taskUri: r.task.uri, runningTime: Math.round((st.now() - Number(r.task.startTime)) / 1000) };
  if (status === 'success') {
    const file = basename(r.snap.vols.get(v.urn)!.file);
    Object.assign(body, { hostIP: '127.0.0.1', hostPort: String(data.port), resourceUrl: `/data/${v.id}/${file}`, targetFile: file, token: r.token });
    if (r.transMode === 'lanssl') body.caCert = data.caCert;
  }
  return { body };
}

export function modify(st: FcState, v: Volume, taskId: string, c: Ctx): Reply {
  const r = find(st, v, taskId);
  const delay = delayOf(c.body.delay);
  const remaining = Math.max(0, Math.ceil((r.expiresAt - st.now()) / 1000));
  if (remaining + delay > MAX_DELAY) fail(400, ERR.badParam, `delay ${delay} plus the remaining ${remaining} s exceeds 7200 s`);
  r.expiresAt += delay * 1000;
  return { body: {} };
}

export function release(st: FcState, v: Volume, taskId: string): Reply {
  find(st, v, taskId).deleted = true;
  return { body: {} };
}

/** The live resource a data-channel token belongs to. */
export function byToken(st: FcState, token: string): BackupRes | undefined {
  return st.openResources().find((r) => r.token === token && r.task.finished);
}
