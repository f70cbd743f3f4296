// A TEST STAND-IN for Huawei FusionCompute's VRM REST API, for tests only. Huawei publishes
// no runnable FusionCompute, so this models what Huawei's own published client code sends
// and reads, not what hamal's client does. Sources (read, not copied):
//   eSDK  = jacklongway/eSDK_FC_SDK_Java, src/esdk_fc_neadp_2.1_native_java/.../fusioncompute/local
//   nova  = openstack-archive/nova-fusioncompute, nova/virt/fusioncomputeapi/
//   cinder= openstack-archive/cinder-fusioncompute, cinder/volume/drivers/huawei/fusioncompute/
//   goSDK = KubeOperator/FusionComputeGolangSDK, pkg/
// Agreement with it shows a client speaks as those clients do; it does not prove
// FusionCompute behaves so. Each module under ./fusionCompute/ cites its sources in detail.
//
// route                                 | modelled on                                   | notes
// POST   /service/session               | eSDK impl/restlet/RestletClient.login,        | evidenced: X-Auth-User, X-Auth-Key (lowercase hex
//                                       | impl/utils/SHA256Utils; goSDK client/auth.go; | SHA-256; plaintext only with X-ENCRIPT-ALGORITHM: 1,
//                                       | nova fcclient._make_headers; cinder http_client| nova), X-Auth-UserType 2, X-Auth-Token reply header;
//                                       |                                               | guessed: error codes, body values
// DELETE /service/session               | goSDK client/auth.go Logout                   | evidenced
// GET    /service/sites                 | eSDK SiteResourceImpl, QuerySitesResp,        | evidenced shape {sites:[{urn,uri,name,...}]}
//                                       | SiteBasicInfo; nova get_first_site            |
// GET    {site}/vms?limit&offset&...    | eSDK VmResourceImpl.queryVMs, ESDKURL,        | evidenced {total, vms}; limit ≤ 100 (eSDK: over 100 is
//                                       | QueryVmsReq, QueryVMsResp; nova fcinstance    | treated as limit=100, offset=0: default 'clamp');
//                                       |                                               | name fuzzy/uuid exact/vmId/detail filters
// GET    {vmUri}                        | eSDK VmInfo, VmConfig, Disk                   | evidenced vmConfig.disks[] volumeUrn/sequenceNum/
//                                       |                                               | pciType/quantityGB, no volumeUri; values guessed
// GET    {volumeUri}                    | eSDK VolumeResourceImpl, model/storage/Volume;| evidenced uri = urn with urn->/service, ':'->'/'
//                                       | nova utils.generate_uri_from_urn              |
// POST   {vmUri}/snapshots              | eSDK createVmSnapshot, CreateVmSnapshotReq,   | evidenced body and VRMTask reply; types normal|backup|
//                                       | VRMTask                                       | CBTbackup; only CBTbackup carries CBT fields (guessed)
// GET    {vmUri}/snapshots              | eSDK queryVmSnapshot, QueryVmSnapshotResp,    | evidenced tree rootSnapshots[].childSnapshots[] and
//                                       | VmSnapshotInfo, CurrentSnapshot; nova         | currentSnapshot; max 32; new snapshot = child of current
//                                       | volumeops.query_vm_snapshot                   | (guessed)
// GET    {snapUri}                      | eSDK QueryVmSnapshotByIdResp, Volsnapshots    | evidenced volsnapshots[] fields; 10300109 = not found (nova)
// DELETE {snapUri}                      | eSDK deleteVmSnapshot                         | evidenced VRMTask; children move to parent (guessed)
// GET    {site}/tasks/{id}              | eSDK TaskResourceImpl, TaskInfo; nova taskops;| evidenced status waiting|running|success|failed,
//                                       | goSDK task/types.go                           | progress, reason/reasonDes; poll count (guessed)
// POST   {volumeUri}/getcbt             | eSDK BackupOperationResource(Impl),           | evidenced request/reply fields, multiples of 8,
//                                       | QueryVMVolumeCBTReq, VMVolumeCBT              | bitNum < blockNum at disk end; bitMap hex (from
//                                       |                                               | "length roundup(bitNum/4)"); sectorOfBlock 128 guessed
// POST   {volumeUri}/backupresources    | eSDK BackupOperationResource(Impl),           | evidenced body and VRMTask reply, delay 60..7200
//                                       | CreateBackupResourceReq                       |
// GET    {volumeUri}/backupresources/{taskId} | eSDK queryBackupResource, BackupResource | evidenced path (taskId from taskUri) and fields;
//                                       |                                               | status/readiness/resourceUrl meaning guessed
// PUT    {volumeUri}/backupresources/{taskId} | eSDK modifyBackupResource, ModifyBackupResourceReq | evidenced {delay}, remaining+delay ≤ 7200
// DELETE {volumeUri}/backupresources/{taskId} | eSDK deleteBackupResource                 | evidenced; the token stops reading
// data host hostIP:hostPort             | none public                                   | the earlier stand-in's wire protocol, kept as is
// Errors: {errorCode, errorDes} with 4xx (eSDK SDKCommonResp; nova/cinder read both).
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { FcError, json, readBody, type Ctx } from './fusionCompute/http.ts';
import { FcState } from './fusionCompute/state.ts';
import { DataChannel } from './fusionCompute/dataChannel.ts';
import { route } from './fusionCompute/routes.ts';
import type { OverLimit } from './fusionCompute/inventory.ts';
import type { BackupRes, Snap, Vm, Volume } from './fusionCompute/model.ts';

export type { BackupRes, Snap, Vm, Volume };
export { SITE_ID, SITE_URI, SECTORS_PER_BLOCK } from './fusionCompute/model.ts';

export class FusionComputeStandIn {
  url = '';
  /** The VM the tests use: name 'fc-vm-1'. */
  readonly vm: Vm;
  /** Limit over 100 on the VM list: 'clamp' (eSDK QueryVmsReq: limit=100, offset=0) or 'refuse' (400). */
  overLimit: OverLimit = 'clamp';
  /** Every API request seen (method, path with query, headers), for header assertions. */
  readonly requests: { method: string; path: string; headers: http.IncomingHttpHeaders }[] = [];
  private readonly _st: FcState;
  private readonly _data: DataChannel;
  private _api?: http.Server | https.Server;

  constructor(
    dir: string,
    private readonly _user: string,
    private readonly _password: string,
    /** Serve data channels over TLS (lanssl) with this key and certificate. */
    private readonly _tls?: { key: string; cert: string },
    /** Serve the API itself over https. */
    private readonly _apiTls?: { key: string; cert: string },
  ) {
    this._st = new FcState(dir);
    this._data = new DataChannel(this._st, _tls);
    this.vm = this.addVm('fc-vm-1');
  }

  get volumes(): Volume[] {
    return this._st.volumes;
  }
  /** Live snapshots of every VM. */
  get snaps(): Snap[] {
    return this._st.snaps;
  }
  get vms(): Vm[] {
    return this._st.vms;
  }
  get dataPort(): number {
    return this._data.port;
  }
  /** The most data-channel connections open at once. */
  get maxOpenDataConnections(): number {
    return this._data.maxOpen;
  }
  /** Snapshot tasks stay "running" for ever. */
  get hangSnapshots(): boolean {
    return this._st.hangSnapshots;
  }
  set hangSnapshots(v: boolean) {
    this._st.hangSnapshots = v;
  }
  /** getcbt answers a bitMap one byte (two hex digits) short. */
  get shortBitmap(): boolean {
    return this._st.shortBitmap;
  }
  set shortBitmap(v: boolean) {
    this._st.shortBitmap = v;
  }
  /** Snapshot tasks end "failed" with this reason / reasonDes. */
  get failSnapshots(): { reason: string; reasonDes: string } | undefined {
    return this._st.failSnapshots;
  }
  set failSnapshots(v: { reason: string; reasonDes: string } | undefined) {
    this._st.failSnapshots = v;
  }
  /** Task polls answered waiting/running before a task ends (default 2; 0: at once). */
  get taskPolls(): number {
    return this._st.taskPolls;
  }
  set taskPolls(n: number) {
    this._st.taskPolls = n;
  }

  addVm(name: string): Vm {
    const vm = this._st.newVm(name);
    this._st.vms.push(vm);
    return vm;
  }
  /** n VMs without volumes, listed before the tests' VM (so it lands past page 1 at n ≥ 100). */
  fillerVms(n: number): Vm[] {
    const made = Array.from({ length: n }, (_, i) => this._st.newVm(`filler-${i + 1}`));
    this._st.vms.splice(this._st.vms.indexOf(this.vm), 0, ...made);
    return made;
  }
  addVolume(name: string, quantityGB: number, vm: Vm = this.vm): Promise<Volume> {
    return this._st.newVolume(name, quantityGB, vm);
  }
  /** A guest write at any offset and length; its blocks are marked changed for CBT. */
  write(v: Volume, offset: number, data: Buffer): Promise<void> {
    return this._st.write(v, offset, data);
  }
  /** Tracking restarts as after a host reboot: same volCBTCreateTime, chgID counter from 0. */
  restartCbt(v: Volume): void {
    this._st.restartCbt(v);
  }
  /** CBT re-created: a new volCBTCreateTime. */
  resetCbt(v: Volume): void {
    this._st.resetCbt(v);
  }
  /** Backup resources created, not DELETEd and not yet expired. */
  openBackupResources(): BackupRes[] {
    return this._st.openResources();
  }
  /** Moves the stand-in's clock on (backup resource expiry). */
  advance(seconds: number): void {
    this._st.advance(seconds);
  }
  /** A ready 'normal' snapshot made outside hamal, child of parentUrn (default: the current one). */
  async createUserSnapshot(name: string, parentUrn?: string, vm: Vm = this.vm): Promise<Snap> {
    const parent = parentUrn === undefined ? undefined : this._st.snaps.find((s) => s.urn === parentUrn);
    if (parentUrn !== undefined && !parent) throw new Error(`no snapshot ${parentUrn}`);
    const s = await this._st.newSnapshot(parent?.vm ?? vm, name, 'normal', '', parent ?? this._st.current(vm));
    s.status = 'ready';
    return s;
  }

  async start(): Promise<void> {
    const handler = (q: http.IncomingMessage, s: http.ServerResponse) => void this._handle(q, s);
    this._api = this._apiTls ? https.createServer(this._apiTls, handler) : http.createServer(handler);
    await new Promise<void>((r) => this._api!.listen(0, '127.0.0.1', r));
    this.url = `${this._apiTls ? 'https' : 'http'}://127.0.0.1:${(this._api.address() as AddressInfo).port}`;
    await this._data.start();
  }

  async stop(): Promise<void> {
    this._api?.closeAllConnections();
    await Promise.all([new Promise((r) => (this._api ? this._api.close(r) : r(undefined))), this._data.stop()]);
  }

  private async _handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      const u = new URL(req.url!, 'http://x');
      this.requests.push({ method: req.method!, path: u.pathname + u.search, headers: req.headers });
      const c: Ctx = { method: req.method!, path: u.pathname, query: u.searchParams, body: await readBody(req), headers: req.headers };
      const cfg = { user: this._user, password: this._password, overLimit: this.overLimit, data: () => ({ port: this._data.port, caCert: this._tls?.cert }) };
      const r = await route(this._st, cfg, c);
      json(res, r.status ?? 200, r.body, r.headers);
    } catch (e) {
      if (e instanceof FcError) json(res, e.status, { errorCode: e.errorCode, errorDes: e.errorDes });
      else json(res, 500, { errorCode: '10000500', errorDes: `stand-in fault: ${String(e)}` });
    }
  }
}
