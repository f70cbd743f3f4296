// Self-check of the stand-in, speaking as Huawei's published clients do (not a uvu test).
// Run: npx tsc -p tsconfig.json --outDir /tmp/fc-dist && node /tmp/fc-dist/tests/helpers/fusionCompute/selfcheck.js
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FusionComputeStandIn } from '../FusionComputeStandIn.ts';

type J = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const dir = mkdtempSync(join(tmpdir(), 'fc-selfcheck-'));
const fc = new FusionComputeStandIn(dir, 'admin', 's3cret');
let token = '';

async function api(method: string, path: string, body?: unknown, extra: Record<string, string> = {}): Promise<{ status: number; json: J; headers: Headers }> {
  const headers: Record<string, string> = { Accept: 'application/json;version=8.0;charset=UTF-8', 'Content-Type': 'application/json', ...(token ? { 'X-Auth-Token': token } : {}), ...extra };
  const r = await fetch(fc.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: r.status, json: (await r.json()) as J, headers: r.headers };
}
const ok = async (method: string, path: string, body?: unknown) => {
  const r = await api(method, path, body);
  assert.equal(r.status, 200, `${method} ${path}: ${JSON.stringify(r.json)}`);
  return r.json;
};
async function waitTask(uri: string): Promise<void> {
  for (let t = await ok('GET', uri); t.status !== 'success'; t = await ok('GET', uri)) assert.ok(['waiting', 'running'].includes(t.status), t.status);
}
async function cbtSnapshot(vmUri: string, name: string): Promise<J> {
  const created = await ok('POST', `${vmUri}/snapshots`, { name, description: '', type: 'CBTbackup', needMemoryShot: false, isConsistent: false });
  await waitTask(created.taskUri);
  return { ...(await ok('GET', created.uri)).volsnapshots[0], snapUrn: created.urn };
}

try {
  await fc.start();
  fc.fillerVms(150);
  const vol = await fc.addVolume('data', 1);
  await fc.write(vol, 3 * 65536, Buffer.from('hello'));
  // Login: a plaintext key is refused without X-ENCRIPT-ALGORITHM: 1; the SHA-256 hex is taken.
  const login = (key: string) => api('POST', '/service/session', undefined, { 'X-Auth-User': 'admin', 'X-Auth-Key': key, 'X-Auth-UserType': '2' });
  assert.equal((await login('s3cret')).status, 401);
  const session = await login(createHash('sha256').update('s3cret').digest('hex'));
  token = session.headers.get('x-auth-token') ?? '';
  assert.ok(token);
  // Sites, then VMs 100 at a time until `total`.
  const site = (await ok('GET', '/service/sites')).sites[0];
  const vms: J[] = [];
  for (let total = 1; vms.length < total; ) {
    const page = await ok('GET', `${site.uri}/vms?limit=100&offset=${vms.length}`);
    total = page.total;
    vms.push(...page.vms);
  }
  assert.equal((await api('GET', `${site.uri}/vms?limit=500&offset=100`)).json.vms[0].name, 'filler-1', 'limit over 100 answers page 1');
  const vm = vms.find((v) => v.name === 'fc-vm-1')!;
  assert.equal(vms.indexOf(vm), 150);
  const disk = (await ok('GET', vm.uri)).vmConfig.disks[0];
  assert.equal(disk.volumeUri, undefined);
  const volUri = disk.volumeUrn.replace('urn', '/service').replace(/:/g, '/');
  assert.equal((await ok('GET', volUri)).quantityGB, 1);
  // Snapshot, the tree, getcbt in full and since a chgID.
  const s1 = await cbtSnapshot(vm.uri, 'b1');
  const tree = await ok('GET', `${vm.uri}/snapshots`);
  assert.equal(tree.rootSnapshots.length, 1);
  const getcbt = (s: J, extra: J) => api('POST', `${volUri}/getcbt`, { type: 'DiffBitmapAndBit1Num', snapUuid: s.snapUuid, volCBTCreateTime: s.volCBTCreateTime, ...extra });
  assert.equal((await getcbt(s1, { startBlock: 4, blockNum: 8 })).status, 400);
  const full = (await getcbt(s1, { startBlock: 16376, blockNum: 64 })).json;
  assert.deepEqual([full.bitNum, full.bitMap], [8, '00']);
  const first = (await getcbt(s1, { startBlock: 0, blockNum: 16 })).json;
  assert.deepEqual([first.sectorOfBlock, first.bitNum, first.bit1Num, first.bitMap], [128, 16, 1, '0800']);
  await fc.write(vol, 9 * 65536, Buffer.from('world'));
  const s2 = await cbtSnapshot(vm.uri, 'b2');
  assert.equal((await ok('GET', `${vm.uri}/snapshots`)).rootSnapshots[0].childSnapshots[0].name, 'b2');
  assert.equal((await getcbt(s2, { chgID: s1.chgID, startBlock: 0, blockNum: 16 })).json.bitMap, '0002');
  // A backup resource: open, read through the data host, release.
  const res = await ok('POST', `${volUri}/backupresources`, { delay: 600, taskType: 'CBTBackup', ip: '127.0.0.1', snapUrn1: s1.snapUrn, snapUrn2: s2.snapUrn, volCBTCreateTime: s2.volCBTCreateTime, transMode: 'lan' });
  const taskId = res.taskUri.split('/').pop();
  let br = await ok('GET', `${volUri}/backupresources/${taskId}`);
  while (br.status !== 'success') br = await ok('GET', `${volUri}/backupresources/${taskId}`);
  const read = () => fetch(`http://${br.hostIP}:${br.hostPort}${br.resourceUrl}`, { headers: { 'X-Auth-Token': br.token, Range: `bytes=${9 * 65536}-${9 * 65536 + 4}` } });
  assert.equal(await (await read()).text(), 'world');
  await ok('PUT', `${volUri}/backupresources/${taskId}`, { delay: 600 });
  await ok('DELETE', `${volUri}/backupresources/${taskId}`);
  assert.equal((await read()).status, 403);
  assert.equal(fc.openBackupResources().length, 0);
  // Expiry: an unextended resource is released after its delay.
  const res2 = await ok('POST', `${volUri}/backupresources`, { delay: 60, taskType: 'CBTBackup', ip: '127.0.0.1', snapUrn2: s2.snapUrn, transMode: 'lan' });
  fc.advance(61);
  assert.equal((await api('GET', `${volUri}/backupresources/${res2.taskUri.split('/').pop()}`)).status, 404);
  // A host reboot restarts chgIDs under the same volCBTCreateTime; the old chgID is refused.
  fc.restartCbt(vol);
  const s3 = await cbtSnapshot(vm.uri, 'b3');
  assert.equal(s3.volCBTCreateTime, s2.volCBTCreateTime);
  assert.ok(Number(s3.chgID) < Number(s2.chgID));
  assert.equal((await getcbt(s3, { chgID: s2.chgID })).status, 400);
  await ok('DELETE', '/service/session');
  assert.equal((await api('GET', '/service/sites')).status, 401);
  console.log('fusionCompute stand-in self-check: ok');
} finally {
  await fc.stop();
  rmSync(dir, { recursive: true, force: true });
}
