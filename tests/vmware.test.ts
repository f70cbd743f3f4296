// The vSphere client against vcsim, VMware's own simulator, in the launcher of tests/vcsim
// (built by scripts/test from Debian's govmomi; HAMAL_VCSIM is the binary). The launcher
// lays datastores out as ESXi does (descriptor x.vmdk, data in x-flat.vmdk, a snapshot
// makes a vmfsSparse delta), emulates CBT, and serves a certificate signed by a throwaway
// CA, as VMCA signs vCenter's. Guests write through its /hamal/guest-write endpoint, into
// whatever the running disk is, and each test uses VMs no other test writes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { lastValueFrom, toArray } from 'rxjs';
import { VsphereClient, type Mor } from '../src/sources/vmware/VsphereClient.ts';
import { findVm, listObjects, objectProps, vmDisks, type VmDisk } from '../src/sources/vmware/inventory.ts';
import { DatastoreFile } from '../src/sources/vmware/DatastoreFile.ts';
import { FlatDisk } from '../src/sources/vmware/FlatDisk.ts';
import { Journal } from '../src/repo/Journal.ts';
import { changedAreas as changedAreasOf, changeIdEpoch } from '../src/sources/vmware/changedAreas.ts';
import { SNAPSHOT_PREFIX, createSnapshot, ensureChangeTracking, listSnapshots, removeLeftoverSnapshots, removeSnapshot } from '../src/sources/vmware/snapshots.ts';
import { VmwareSource } from '../src/sources/vmware/VmwareSource.ts';
import { FsStore, Repository, restoreDisk, runVmSync, type SyncEvent } from '../mod.ts';
import { MiB, pattern, sha256File, tempDir } from './helpers/disks.ts';
import { hamal, HAMAL_ARGV, TEST_LIB_DIR } from './helpers/cli.ts';
import { VimAdmin } from './helpers/vimAdmin.ts';
import { VcsimControl } from './helpers/vcsimGuest.ts';
import { caSigned, type TestCert } from './helpers/testCerts.ts';

const run = (cmd: string, args: string[]) => new Promise<number | null>((r) => spawn(cmd, args, { stdio: 'ignore' }).on('close', r).on('error', () => r(-1)));

const PASSWORD = 'vc-Pa55-for-tests';
const DISK_MB = 64;
let sim: ChildProcess;
let url: string;
let thumbprint: string;
let certs: { ca: TestCert; leaf: TestCert };
let certDir: string;
let ctl: VcsimControl;
/** The datastore's folder on this machine, which the launcher lays out as ESXi does. */
let dsDir: string;
const connect = (over: Partial<Parameters<typeof VsphereClient.connect>[0]> = {}) =>
  VsphereClient.connect({ url, username: 'hamal', password: PASSWORD, thumbprint, ...over });

/** A VM's moref and its first disk. */
async function vmAndDisk(c: VsphereClient, name: string): Promise<{ vm: Mor; disk: VmDisk }> {
  const vm = (await findVm(c, name)).mor;
  const [disk] = await vmDisks(c, vm);
  return { vm, disk: disk! };
}

/** The task file of a sync of `vm` into `dir`/repo. */
function taskJson(dir: string, vm: string, extra: Record<string, unknown> = {}): string {
  const u = new URL(url);
  return JSON.stringify({ version: 1, source: { platform: 'vmware', vm, connection: { host: u.hostname, port: Number(u.port), username: 'hamal', passwordEnv: 'VC_PASSWORD', thumbprint }, ...extra }, target: join(dir, 'repo') });
}

/** The VDDK stand-in of the nbd transport: qemu-nbd reads ESXi's descriptor chains as VDDK does. */
const qemuNbdTemplate = () => `qemu-nbd --read-only --format=vmdk --socket {socket} ${dsDir}/{path}`;

test.before(async () => {
  assert.ok(process.env.HAMAL_VCSIM, 'HAMAL_VCSIM is not set: scripts/test builds tests/vcsim');
  certDir = await tempDir('hamal-vcsim-certs-');
  certs = caSigned(certDir);
  thumbprint = certs.leaf.fingerprint256;
  sim = spawn(process.env.HAMAL_VCSIM!, ['-vms', '12', '-disk-mb', String(DISK_MB), '-cert', certs.leaf.certFile, '-key', certs.leaf.keyFile], {
    env: { ...process.env, VCSIM_PASSWORD: PASSWORD },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  for await (const line of createInterface({ input: sim.stdout! })) {
    url = line.trim();
    break;
  }
  ctl = new VcsimControl(url, certs.ca.cert);
  const c = await connect();
  const [ds] = await listObjects(c, 'Datastore', ['summary.url']);
  dsDir = String(ds!.props['summary.url']);
  await c.logout();
});
test.after(async () => {
  sim.kill();
  await new Promise((r) => (sim.exitCode === null ? sim.once('exit', r) : r(undefined)));
  await rm(certDir, { recursive: true, force: true });
});

test('logs in over TLS pinned by thumbprint and lists the VMs', async () => {
  const c = await connect();
  const vms = await listObjects(c, 'VirtualMachine', ['name']);
  assert.ok(vms.length >= 4);
  assert.ok(vms.every((v) => v.mor.type === 'VirtualMachine' && /^vm-\d+$/.test(v.mor.value)));
  await c.logout();
});

test('TLS on a CA-signed certificate (as VMCA signs): the pin is checked on the leaf; a wrong pin names both; the CA file works; neither is refused', async () => {
  const wrong = 'AA:' + thumbprint.slice(3);
  await connect({ thumbprint: wrong }).then(
    () => assert.unreachable(),
    (e) => {
      assert.is(e.code, 'TLS_THUMBPRINT_MISMATCH');
      assert.ok(e.message.includes(wrong) && e.message.includes(thumbprint), e.message);
    },
  );
  await connect({ thumbprint: undefined }).then(
    () => assert.unreachable(),
    (e) => assert.match(e.message, /unable to get local issuer certificate|unable to verify/),
  );
  const byCa = await connect({ thumbprint: undefined, caFile: certs.ca.certFile });
  assert.ok((await listObjects(byCa, 'VirtualMachine', ['name'])).length >= 24);
  await byCa.logout();
});

test('a proxy in front answering 503 with an HTML page: its status and first bytes, never "undefined"', async () => {
  const c = await connect();
  await ctl.request('POST', '/hamal/fail-next', { status: 503, count: 3 });
  await listObjects(c, 'Datastore', ['name']).then(
    () => assert.unreachable('the 503 was not seen'),
    (e) => {
      assert.is(e.code, 'VSPHERE_HTTP_ERROR');
      assert.match(e.message, /HTTP 503, not a SOAP reply: ".*503 Service Unavailable/);
      assert.not.match(e.message, /undefined/);
    },
  );
  await ctl.request('POST', '/hamal/fail-next', { status: 503, count: 0 });
  await c.logout();
});

test('a wrong password is "login failed", without the password', async () => {
  const wrong = 'Wr0ng-vc-password';
  await connect({ password: wrong }).then(
    () => assert.unreachable(),
    (e) => {
      assert.is(e.code, 'VSPHERE_LOGIN_FAILED');
      assert.match(e.message, /login to 127\.0\.0\.1:\d+ as hamal failed: wrong user name or password/);
      assert.not.match(e.message, wrong);
    },
  );
});

test('finds a VM by name, managed object id, instance UUID and BIOS UUID; lists its disks', async () => {
  const c = await connect();
  const vm = await findVm(c, 'DC0_H0_VM0');
  for (const sel of [vm.mor.value, vm.instanceUuid!, vm.biosUuid!.toUpperCase()]) assert.equal((await findVm(c, sel)).mor, vm.mor);
  const disks = await vmDisks(c, vm.mor);
  assert.is(disks.length, 1);
  assert.is(disks[0]!.capacity, DISK_MB * MiB);
  assert.match(disks[0]!.fileName, /^\[LocalDS_0\] DC0_H0_VM0\/.*\.vmdk$/);
  assert.is(disks[0]!.backingType, 'VirtualDiskFlatVer2BackingInfo');
  assert.is(disks[0]!.parentFileName, undefined);
  assert.is(disks[0]!.notSyncable, undefined);
  await findVm(c, 'no-such-vm').then(
    () => assert.unreachable(),
    (e) => assert.match(e.message, /no VM no-such-vm on 127\.0\.0\.1/),
  );
  await c.logout();
});

test('an ambiguous name is an error listing the candidates', async () => {
  const c = await connect();
  const other = await findVm(c, 'DC0_H0_VM1');
  // Names are unique per folder: move the other VM into a folder of its own first.
  const [dc] = await listObjects(c, 'Datacenter', ['vmFolder']);
  const admin = await VimAdmin.login(url, 'hamal', PASSWORD);
  const folder = VimAdmin.returnval(await admin.call('CreateFolder', 'Folder', String(dc!.props.vmFolder), '<name>hamal-test</name>'));
  await admin.call('MoveIntoFolder_Task', 'Folder', folder, `<list type="VirtualMachine">${other.mor.value}</list>`);
  await admin.call('Rename_Task', 'VirtualMachine', other.mor.value, '<newName>DC0_H0_VM0</newName>');
  await findVm(c, 'DC0_H0_VM0').then(
    () => assert.unreachable(),
    (e) => {
      assert.is(e.code, 'VM_AMBIGUOUS');
      assert.match(e.message, /2 VMs are named DC0_H0_VM0 .*vm-\d+ \(.*\), vm-\d+ \(.*\); give the id or instance UUID/);
    },
  );
  // By inventory path, the two are told apart.
  assert.equal((await findVm(c, '/DC0/vm/hamal-test/DC0_H0_VM0')).mor, other.mor);
  await admin.call('Rename_Task', 'VirtualMachine', other.mor.value, '<newName>DC0_H0_VM1</newName>');
  await c.logout();
});

test('an independent disk cannot be snapshotted: reported by name as not synced, the other disks still are', async () => {
  const c = await connect();
  // A VM of its own (the launcher runs with -vms 3): no other test uses DC0_H0_VM2.
  const vm = await findVm(c, 'DC0_H0_VM2');
  const [disk] = await vmDisks(c, vm.mor);
  const admin = await VimAdmin.login(url, 'hamal', PASSWORD);
  await admin.call(
    'ReconfigVM_Task',
    'VirtualMachine',
    vm.mor.value,
    `<spec><deviceChange><operation>edit</operation><device xsi:type="VirtualDisk"><key>${disk!.key}</key>` +
      `<deviceInfo><label>${disk!.label}</label><summary>edited</summary></deviceInfo><controllerKey>${disk!.controllerKey}</controllerKey>` +
      `<unitNumber>0</unitNumber><capacityInKB>${disk!.capacity / 1024}</capacityInKB><backing xsi:type="VirtualDiskFlatVer2BackingInfo">` +
      `<fileName>${disk!.fileName}</fileName><diskMode>independent_persistent</diskMode></backing></device></deviceChange></spec>`,
  );
  const [after] = await vmDisks(c, vm.mor);
  assert.is(after!.notSyncable, 'independent disk (independent_persistent)');
  await c.logout();
  const dir = await tempDir();
  const source = new VmwareSource({ connection: { url, username: 'hamal', password: PASSWORD, thumbprint }, skipDiskFlag: true, workDir: dir });
  const snap = await source.snapshot('DC0_H0_VM2');
  try {
    assert.equal(snap.disks, []);
    assert.equal(snap.info!.notSynced, [`${after!.label}: independent disk (independent_persistent), cannot be snapshotted`]);
  } finally {
    await snap.release();
  }
  const c2 = await connect();
  assert.equal((await listSnapshots(c2, vm.mor)).filter((s) => s.name.startsWith(SNAPSHOT_PREFIX)), [], 'no snapshot of ours left');
  await c2.logout();
});

test('a session that ended is renewed once (NotAuthenticated)', async () => {
  const c = await connect();
  await c.call('Logout', c.mor('sessionManager'), {}, false);
  const vms = await listObjects(c, 'VirtualMachine', ['name']);
  assert.ok(vms.length >= 4);
  await c.logout();
});

test('snapshots: created and removed through their tasks; leftovers of ours swept, others kept', async () => {
  const c = await connect();
  const vm = (await findVm(c, 'DC0_C0_RP0_VM0')).mor;
  const mine = await createSnapshot(c, vm, `${SNAPSHOT_PREFIX}1`);
  assert.is(mine.type, 'VirtualMachineSnapshot');
  const theirs = await createSnapshot(c, vm, 'operator-backup', { quiesce: true });
  await createSnapshot(c, vm, `${SNAPSHOT_PREFIX}2`);
  assert.equal((await listSnapshots(c, vm)).map((s) => `${s.name}${s.quiesced ? ' (quiesced)' : ''}`), [`${SNAPSHOT_PREFIX}1`, 'operator-backup (quiesced)', `${SNAPSHOT_PREFIX}2`]);
  assert.equal((await removeLeftoverSnapshots(c, vm)).sort(), [`${SNAPSHOT_PREFIX}1`, `${SNAPSHOT_PREFIX}2`]);
  assert.equal((await listSnapshots(c, vm)).map((s) => s.name), ['operator-backup']);
  await removeSnapshot(c, theirs);
  assert.equal(await listSnapshots(c, vm), []);
  await c.logout();
});

test('change tracking is turned on when off, and activated with a snapshot cycle', async () => {
  const c = await connect();
  const vm = (await findVm(c, 'DC0_C0_RP0_VM1')).mor;
  assert.is(await ensureChangeTracking(c, vm), true);
  assert.is(String((await objectProps(c, vm, ['config.changeTrackingEnabled']))['config.changeTrackingEnabled']), 'true');
  assert.equal(await listSnapshots(c, vm), [], 'the activation snapshot is gone');
  assert.is(await ensureChangeTracking(c, vm), false, 'already on: nothing to do');
  await c.logout();
});

test('https transport: Range reads of a datastore file through /folder with the session', async () => {
  const c = await connect();
  const [ds] = await listObjects(c, 'Datastore', ['name', 'summary.url']);
  const dir = String(ds!.props['summary.url']);
  const data = pattern(3 * 1024 * 1024 + 5, 77);
  await writeFile(join(dir, 'hamal-test-flat.vmdk'), data);
  const file = new DatastoreFile(c, 'DC0', `[${String(ds!.props.name)}] hamal-test-flat.vmdk`);
  for (const [o, n] of [[0, 4096], [1024 * 1024 - 3, 1024 * 1024 + 9], [data.length - 5, 5]] as const) {
    assert.ok((await file.read(o, n)).equals(data.subarray(o, o + n)), `${o}+${n}`);
  }
  const into = Buffer.alloc(1024 * 1024);
  const view = await file.read(4096, 65536, into);
  assert.ok(view.equals(data.subarray(4096, 4096 + 65536)));
  await new DatastoreFile(c, 'DC0', `[${String(ds!.props.name)}] missing-flat.vmdk`).read(0, 10).then(
    () => assert.unreachable(),
    (e) => assert.match(e.message, /read of \[.*\] missing-flat\.vmdk at 0 failed: HTTP 404/),
  );
  await c.logout();
});

test('CBT (emulated by tests/vcsim): allocated areas, changes since a snapshot across pages, reset', async () => {
  const c = await connect();
  const { vm, disk } = await vmAndDisk(c, 'DC0_H0_VM3');
  await ctl.write(vm.value, disk.key, 3 * MiB + 100, pattern(MiB, 1));
  await ctl.write(vm.value, disk.key, 17 * MiB, pattern(4096, 2));
  await ensureChangeTracking(c, vm);
  const s1 = await createSnapshot(c, vm, `${SNAPSHOT_PREFIX}a`);
  const [d1] = await vmDisks(c, s1);
  assert.ok(d1!.changeId, "the snapshot's disk has a changeId");
  assert.is(d1!.capacity, DISK_MB * MiB);
  const all = await lastValueFrom(changedAreasOf(c, { vm, snapshot: s1, deviceKey: d1!.key, capacity: d1!.capacity }, '*').pipe(toArray()));
  const covers = (areas: Array<{ offset: number; length: number }>, o: number) => areas.some((a) => a.offset <= o && o < a.offset + a.length);
  for (const o of [3 * MiB + 100, 4 * MiB, 17 * MiB]) assert.ok(covers(all, o), `allocated at ${o}`);
  assert.not.ok(covers(all, 10 * MiB));
  // The snapshot's disk stays as it was while the guest writes (into the delta ESXi made).
  const frozen = await FlatDisk.open(c, 'DC0', d1!);
  const before = Buffer.from(pattern(MiB, 1).subarray(0, 16));
  await ctl.write(vm.value, disk.key, 3 * MiB + 100, pattern(10, 3));
  await ctl.write(vm.value, disk.key, 20 * MiB - 1, pattern(2, 4));
  assert.ok((await frozen.read(3 * MiB + 100, 16, Buffer.alloc(16), MiB)).equals(before));
  assert.ok((await ctl.read(vm.value, disk.key)).subarray(3 * MiB + 100, 3 * MiB + 110).equals(pattern(10, 3)), 'the guest sees its write');
  const s2 = await createSnapshot(c, vm, `${SNAPSHOT_PREFIX}b`);
  const [d2] = await vmDisks(c, s2);
  const since = await lastValueFrom(changedAreasOf(c, { vm, snapshot: s2, deviceKey: d2!.key, capacity: d2!.capacity }, d1!.changeId!).pipe(toArray()));
  assert.equal(since, [
    { offset: 3 * MiB, length: 64 * 1024 },
    { offset: 20 * MiB - 64 * 1024, length: 128 * 1024 },
  ]);
  assert.is(changeIdEpoch(d2!.changeId!), changeIdEpoch(d1!.changeId!));
  // A reset: the old changeId is refused, and the epoch of new changeIds differs.
  await ctl.request('POST', '/hamal/reset-cbt', { vm: vm.value });
  const s3 = await createSnapshot(c, vm, `${SNAPSHOT_PREFIX}c`);
  const [d3] = await vmDisks(c, s3);
  assert.is.not(changeIdEpoch(d3!.changeId!), changeIdEpoch(d2!.changeId!));
  await lastValueFrom(changedAreasOf(c, { vm, snapshot: s3, deviceKey: d3!.key, capacity: d3!.capacity }, d2!.changeId!)).then(
    () => assert.unreachable(),
    (e) => assert.match(e.message, /changed areas of disk .* since .* are not available/),
  );
  await removeLeftoverSnapshots(c, vm);
  assert.equal(await listSnapshots(c, vm), []);
  assert.equal((await readdir(join(dsDir, 'DC0_H0_VM3'))).filter((f) => f.endsWith('.vmdk')).sort(), [disk.fileName.replace(/^.*\//, ''), disk.fileName.replace(/^.*\//, '').replace(/\.vmdk$/, '-flat.vmdk')].sort(), 'the deltas were consolidated');
  await c.logout();
});

/** A VmwareSource on the test launcher; nbd reads through the qemu-nbd stand-in for VDDK. */
const sourceFor = (dir: string, transport: 'https' | 'nbd' = 'https') =>
  new VmwareSource({ connection: { url, username: 'hamal', password: PASSWORD, thumbprint }, transport, nbdkitTemplate: qemuNbdTemplate(), workDir: dir });

/** One runVmSync of `vmName`: the guest's sha256 at the time, the version, the disk's start event. */
async function syncOnce(c: VsphereClient, source: VmwareSource, repo: Repository, vmName: string, dir: string) {
  const { vm, disk } = await vmAndDisk(c, vmName);
  const sha = await ctl.sha256(vm.value, disk.key);
  const starts: Array<Extract<SyncEvent, { type: 'disk-start' }>> = [];
  const r = await runVmSync(source, vmName, repo, { journalDir: join(dir, 'lib') }, (e) => {
    if (e.type === 'disk-start') starts.push(e);
  });
  const theirs = (await listSnapshots(c, vm)).filter((s) => !s.name.startsWith(SNAPSHOT_PREFIX));
  assert.equal((await listSnapshots(c, vm)).length, theirs.length, 'no snapshot of ours is left');
  return { r, sha, m: r.versions[0], start: starts[0] };
}

async function assertRestores(repo: Repository, dir: string, versions: Array<{ sha: string; m?: Parameters<typeof restoreDisk>[1] }>) {
  for (const [i, v] of versions.entries()) {
    const out = join(dir, `out-${i}.img`);
    await restoreDisk(repo, v.m!, out);
    assert.is(await sha256File(out), v.sha, `version ${i + 1} restores as the guest saw the disk`);
  }
}

async function endToEnd(vmName: string, transport: 'https' | 'nbd') {
  const c = await connect();
  const { vm, disk } = await vmAndDisk(c, vmName);
  await ctl.write(vm.value, disk.key, 5 * MiB + 3, pattern(9 * MiB, 11));
  await ctl.write(vm.value, disk.key, 60 * MiB, pattern(MiB, 12));
  const dir = await tempDir();
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  const source = sourceFor(dir, transport);
  const sync = async () => {
    const v = await syncOnce(c, source, repo, vmName, dir);
    assert.equal(v.r.failed, []);
    return v;
  };
  const v1 = await sync();
  assert.is(v1.start!.incremental, false);
  assert.is(v1.m!.stats.storedBytes, 4 * 4 * MiB, 'allocated areas only: blocks 1-3 and 15');
  await ctl.write(vm.value, disk.key, 8 * MiB - 5, pattern(10, 13));
  await ctl.write(vm.value, disk.key, 40 * MiB, pattern(MiB, 14));
  const v2 = await sync();
  assert.is(v2.start!.incremental, true);
  // The changed areas only (the stand-in reports them in 64 KiB units): the 64 KiB on each
  // side of 8 MiB, patched onto the chunks of blocks 1 and 2; 1 MiB in block 10, a hole before.
  assert.is(v2.m!.stats.readBytes, MiB + 128 * 1024, 'only the changed areas are read');
  assert.is(v2.m!.stats.parentReadBytes, 2 * 4 * MiB, 'the chunks of the two blocks patched');
  await ctl.request('POST', '/hamal/reset-cbt', { vm: vm.value });
  await ctl.write(vm.value, disk.key, 0, pattern(100, 15));
  const v3 = await sync();
  assert.is(v3.start!.incremental, false);
  assert.match(v3.start!.notes.join(), /change tracking was reset .*: full sync/);
  await assertRestores(repo, dir, [v1, v2, v3]);
  assert.equal((await readdir(join(dsDir, vmName))).filter((f) => /-\d{6}(-delta)?\.vmdk$/.test(f)), [], 'every delta consolidated');
  await rm(dir, { recursive: true, force: true });
  await c.logout();
}

test('VMware source end to end, https transport (descriptor, flat extent): full, incremental, CBT reset -> full; restores equal the guest\'s disk at each snapshot; no snapshot left', () =>
  endToEnd('DC0_C0_RP0_VM2', 'https'));

test('VMware source end to end, nbd transport (a server per disk from the command template; qemu-nbd stands in for nbdkit vddk)', () => endToEnd('DC0_C0_RP0_VM3', 'nbd'));

test('a VM with a snapshot of its own: https refuses the disk naming it and pointing to nbd (nothing stored, the user\'s snapshot kept); nbd reads the delta chain byte-exact', async () => {
  const c = await connect();
  const name = 'DC0_C0_RP0_VM4';
  const { vm, disk } = await vmAndDisk(c, name);
  await ctl.write(vm.value, disk.key, 2 * MiB, pattern(3 * MiB, 51));
  const theirs = await createSnapshot(c, vm, 'before-upgrade');
  // Written after the user's snapshot: only in the delta ESXi made, not in the flat extent.
  await ctl.write(vm.value, disk.key, 3 * MiB + 7, pattern(MiB, 52));
  await ctl.write(vm.value, disk.key, 50 * MiB, pattern(4096, 53));
  const dir = await tempDir();
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  const refused = await syncOnce(c, sourceFor(dir, 'https'), repo, name, dir);
  assert.is(refused.r.failed.length, 1);
  const err = refused.r.failed[0]!.error as Error & { code?: string };
  assert.is(err.code, 'VMDK_NOT_FLAT');
  assert.match(err.message, new RegExp(`disk ${disk.label} \\(\\[LocalDS_0\\] ${name}/.*-000001\\.vmdk\\) cannot be read over https: .*delta.*transport "nbd"`));
  assert.equal(await repo.listVersions(name, refused.r.failed[0]!.disk), [], 'nothing stored for it');
  assert.equal((await listSnapshots(c, vm)).map((s) => s.name), ['before-upgrade'], "ours removed, the user's kept");
  const v1 = await syncOnce(c, sourceFor(dir, 'nbd'), repo, name, dir);
  assert.equal(v1.r.failed, []);
  await ctl.write(vm.value, disk.key, 30 * MiB, pattern(MiB, 54));
  const v2 = await syncOnce(c, sourceFor(dir, 'nbd'), repo, name, dir);
  assert.is(v2.start!.incremental, true);
  assert.is(v2.m!.stats.readBytes, MiB, 'the changed area only');
  await assertRestores(repo, dir, [v1, v2]);
  await removeSnapshot(c, theirs);
  assert.ok((await ctl.sha256(vm.value, disk.key)) === v2.sha, 'consolidating the user\'s snapshot keeps what the guest wrote');
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test('QueryChangedDiskAreas refusing the stored changeId (FileFault, then InvalidArgument): that disk is a full sync with a note and stats.fullReason, the VM does not fail', async () => {
  const c = await connect();
  const name = 'DC0_C0_RP0_VM5';
  const { vm, disk } = await vmAndDisk(c, name);
  await ctl.write(vm.value, disk.key, 0, pattern(6 * MiB, 61));
  const dir = await tempDir();
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  const source = sourceFor(dir);
  const versions = [await syncOnce(c, source, repo, name, dir)];
  for (const fault of ['FileFault', 'InvalidArgument']) {
    await ctl.write(vm.value, disk.key, 20 * MiB, pattern(MiB, fault.length));
    await ctl.request('POST', '/hamal/cbt-fault', { vm: vm.value, fault });
    const v = await syncOnce(c, source, repo, name, dir);
    assert.equal(v.r.failed, [], fault);
    assert.is(v.start!.incremental, false, fault);
    assert.match(v.start!.notes.join(), new RegExp(`QueryChangedDiskAreas refused changeId .*${fault}.*: full sync`));
    assert.match(v.m!.stats.fullReason ?? '', new RegExp(fault));
    assert.is(v.m!.stats.readBytes, 3 * 4 * MiB, 'the blocks of the allocated areas, read whole: the tracker is not trusted to the byte');
    versions.push(v);
  }
  const after = await syncOnce(c, source, repo, name, dir);
  assert.is(after.start!.incremental, true, 'the next sync is incremental again');
  await assertRestores(repo, dir, [...versions, after]);
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test('hamal sync --full: every disk read in full, said in the version\'s stats and the VM\'s log', async () => {
  const c = await connect();
  const name = 'DC0_C0_RP0_VM6';
  const { vm, disk } = await vmAndDisk(c, name);
  await ctl.write(vm.value, disk.key, MiB, pattern(2 * MiB, 71));
  const dir = await tempDir();
  const conf = join(dir, 'hamal.conf');
  await writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${join(dir, 'lib')}\n[vmware]\nskip_disk_flag = True\n`);
  await writeFile(join(dir, 't.json'), taskJson(dir, name));
  const first = await hamal(['--config', conf, 'sync', '--task', join(dir, 't.json'), '--json'], { VC_PASSWORD: PASSWORD });
  assert.is(first.code, 0, first.stderr);
  await ctl.write(vm.value, disk.key, 40 * MiB, pattern(10, 72));
  const sha = await ctl.sha256(vm.value, disk.key);
  const full = await hamal(['--config', conf, 'sync', '--task', join(dir, 't.json'), '--full', '--json'], { VC_PASSWORD: PASSWORD });
  assert.is(full.code, 0, full.stderr);
  assert.match(full.stderr, /a full sync was requested/);
  const s = JSON.parse(full.stdout).disks[0];
  assert.is(s.readBytes, 2 * 4 * MiB, 'both allocated blocks read whole, not only the changed area');
  const listed = JSON.parse((await hamal(['versions', '--target', join(dir, 'repo'), '--vm', name, '--json'])).stdout) as Array<{ fullReason?: string }>;
  assert.equal(listed.map((v) => v.fullReason?.replace(/ \(.*/, '')), [undefined, 'a full sync was requested'], 'hamal versions says which version was read in full and why');
  const out = join(dir, 'out.img');
  assert.is((await hamal(['restore', '--target', join(dir, 'repo'), '--vm', name, '--disk', s.disk, '--out', out])).code, 0);
  assert.is(await sha256File(out), sha);
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test('a vSAN datastore: https refuses the disk naming the datastore type; nothing stored', async () => {
  const c = await connect();
  const name = 'DC0_C0_RP0_VM7';
  const dir = await tempDir();
  await ctl.request('POST', '/hamal/datastore-type', { name: 'LocalDS_0', type: 'vsan' });
  try {
    const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
    const r = await syncOnce(c, sourceFor(dir), repo, name, dir);
    assert.is(r.r.failed.length, 1);
    assert.match(r.r.failed[0]!.error.message, /cannot be read over https: datastore LocalDS_0 is of type vsan, whose disks \/folder does not serve as files; read it with transport "nbd"/);
    assert.equal(await repo.listVersions(name, r.r.failed[0]!.disk), []);
  } finally {
    await ctl.request('POST', '/hamal/datastore-type', { name: 'LocalDS_0', type: 'VMFS' });
  }
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test('https reads a disk of several extents as its descriptor lays them out (FLAT at an offset, ZERO, a second file)', async () => {
  const c = await connect();
  const sectors = (n: number) => n / 512;
  await writeFile(join(dsDir, 'multi-s001.vmdk'), Buffer.concat([pattern(4096, 81), pattern(MiB, 82)]));
  await writeFile(join(dsDir, 'multi-s002.vmdk'), pattern(MiB + 512, 83));
  const descriptor = [
    '# Disk DescriptorFile',
    'version=1',
    'CID=fffffffe',
    'parentCID=ffffffff',
    'createType="twoGbMaxExtentFlat"',
    '',
    '# Extent description',
    `RW ${sectors(MiB)} FLAT "multi-s001.vmdk" ${sectors(4096)}`,
    `RW ${sectors(2 * MiB)} ZERO`,
    `RW ${sectors(MiB + 512)} FLAT "multi-s002.vmdk" 0`,
    '',
    'ddb.adapterType = "lsilogic"',
  ].join('\n');
  await writeFile(join(dsDir, 'multi.vmdk'), descriptor);
  const capacity = 4 * MiB + 512;
  const flat = await FlatDisk.open(c, 'DC0', { key: 2000, label: 'Hard disk 9', capacity, fileName: '[LocalDS_0] multi.vmdk', changeId: null, backingType: 'VirtualDiskFlatVer2BackingInfo' });
  const got = await flat.read(0, capacity, Buffer.alloc(capacity), 256 * 1024);
  assert.ok(got.equals(Buffer.concat([pattern(MiB, 82), Buffer.alloc(2 * MiB), pattern(MiB + 512, 83)])));
  await FlatDisk.open(c, 'DC0', { key: 2000, label: 'Hard disk 9', capacity: capacity + 512, fileName: '[LocalDS_0] multi.vmdk', changeId: null }).then(
    () => assert.unreachable(),
    (e) => assert.match(e.message, /disk Hard disk 9 .* cannot be read over https: .*extents/),
  );
  // Hostile descriptors: an extent naming the descriptor itself, a folder, a way out, a
  // lower-case extent line that would shift the next ones, sizes past the capacity.
  const open = (lines: string[], size = MiB) =>
    writeFile(join(dsDir, 'hostile.vmdk'), ['# Disk DescriptorFile', 'version=1', 'parentCID=ffffffff', 'createType="vmfs"', ...lines].join('\n')).then(() =>
      FlatDisk.open(c, 'DC0', { key: 2001, label: 'Hard disk 8', capacity: size, fileName: '[LocalDS_0] hostile.vmdk', changeId: null }),
    );
  for (const [lines, why] of [
    [[`RW ${sectors(MiB)} VMFS "hostile.vmdk"`], /is not a file beside the descriptor/],
    [[`RW ${sectors(MiB)} VMFS "sub/"`], /is not a file beside the descriptor/],
    [[`RW ${sectors(MiB)} VMFS "..\\etc\\passwd"`], /is not a file beside the descriptor/],
    [[`RW ${sectors(MiB)} VMFS "./multi-s002.vmdk"`], /is not a file beside the descriptor/],
    [[`rw ${sectors(4096)} VMFS "multi-s001.vmdk"`, `RW ${sectors(MiB)} VMFS "multi-s002.vmdk"`], /malformed/],
    [[`RW ${sectors(2 * MiB)} VMFS "multi-s002.vmdk"`], /extents cover 2097152 bytes, not its capacity of 1048576/],
  ] as const) {
    await open([...lines]).then(
      () => assert.unreachable(lines.join()),
      (e) => assert.match(e.message, why, lines.join()),
    );
  }
  for (const f of ['multi.vmdk', 'multi-s001.vmdk', 'multi-s002.vmdk', 'hostile.vmdk']) await rm(join(dsDir, f));
  await c.logout();
});

test('a disk grown between syncs (ReconfigVM): the next sync reads it in full at its new size, saying why; the restore has the new size', async () => {
  const c = await connect();
  const name = 'DC0_C0_RP0_VM11';
  const { vm, disk } = await vmAndDisk(c, name);
  await ctl.write(vm.value, disk.key, 0, pattern(MiB, 91));
  const dir = await tempDir();
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  const source = sourceFor(dir);
  const v1 = await syncOnce(c, source, repo, name, dir);
  const admin = await VimAdmin.login(url, 'hamal', PASSWORD);
  const grown = (DISK_MB + 16) * MiB;
  await admin.call(
    'ReconfigVM_Task',
    'VirtualMachine',
    vm.value,
    `<spec><deviceChange><operation>edit</operation><device xsi:type="VirtualDisk"><key>${disk.key}</key>` +
      `<deviceInfo><label>${disk.label}</label><summary>grown</summary></deviceInfo><controllerKey>${disk.controllerKey}</controllerKey>` +
      `<unitNumber>0</unitNumber><capacityInKB>${grown / 1024}</capacityInKB><backing xsi:type="VirtualDiskFlatVer2BackingInfo">` +
      `<fileName>${disk.fileName}</fileName><diskMode>persistent</diskMode></backing></device></deviceChange></spec>`,
  );
  assert.is((await vmAndDisk(c, name)).disk.capacity, grown);
  await ctl.write(vm.value, disk.key, grown - 5, pattern(5, 92));
  const v2 = await syncOnce(c, source, repo, name, dir);
  assert.equal(v2.r.failed, []);
  assert.is(v2.start!.incremental, false);
  assert.match(v2.m!.stats.fullReason ?? '', /capacity changed from 67108864 to 83886080 bytes/);
  assert.is(v2.m!.capacity, grown);
  await assertRestores(repo, dir, [v1, v2]);
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test('hamal sync --task with a vmware task; a wrong password exits 1 saying login failed, the password nowhere', async () => {
  const dir = await tempDir();
  const u = new URL(url);
  const conf = join(dir, 'hamal.conf');
  await writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${TEST_LIB_DIR}\n[vmware]\nskip_disk_flag = True\n`);
  const task = (passwordEnv: string) =>
    JSON.stringify({ version: 1, source: { platform: 'vmware', vm: 'DC0_H0_VM1', connection: { host: u.hostname, port: Number(u.port), username: 'hamal', passwordEnv, thumbprint } }, target: join(dir, 'repo') });
  await writeFile(join(dir, 'ok.json'), task('VC_PASSWORD'));
  const ok = await hamal(['--config', conf, 'sync', '--task', join(dir, 'ok.json'), '--json'], { VC_PASSWORD: PASSWORD });
  assert.is(ok.code, 0, ok.stderr);
  const summary = JSON.parse(ok.stdout);
  assert.is(summary.disks.length, 1);
  assert.match(summary.disks[0].disk, /^disk-\d+$/);
  const wrong = 'Wr0ng-vc-pass-for-tests';
  const bad = await hamal(['--config', conf, '--debug', 'sync', '--task', join(dir, 'ok.json')], { VC_PASSWORD: wrong });
  assert.is(bad.code, 1);
  assert.match(bad.stderr, /login to 127\.0\.0\.1:\d+ as hamal failed: wrong user name or password/);
  assert.not.ok((bad.stdout + bad.stderr).includes(wrong));
  assert.not.ok((ok.stdout + ok.stderr).includes(PASSWORD));
  await rm(dir, { recursive: true, force: true });
});

test('SIGTERM mid-sync: the snapshot is removed, no version is committed, exit 143', async () => {
  const dir = await tempDir();
  const c = await connect();
  const { vm: mor, disk } = await vmAndDisk(c, 'DC0_H0_VM4');
  const vm = { mor };
  await ctl.write(mor.value, disk.key, 0, pattern(32 * MiB, 21));
  const conf = join(dir, 'hamal.conf');
  // Slow reads (200 ms per MB) so the signal arrives mid-read.
  await writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${TEST_LIB_DIR}\n[vmware]\nskip_disk_flag = True\n[period]\nvmware_release_cpu_time = 200\n`);
  await writeFile(join(dir, 't.json'), taskJson(dir, 'DC0_H0_VM4'));
  const child = spawn(HAMAL_ARGV[0]!, [...HAMAL_ARGV.slice(1), '--config', conf, 'sync', '--task', join(dir, 't.json'), '--verbose'], { env: { ...process.env, VC_PASSWORD: PASSWORD }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve) => {
    child.stderr!.on('data', (d) => {
      stderr += d;
      if (/sync started/.test(stderr)) resolve();
    });
  });
  await new Promise((r) => setTimeout(r, 500));
  assert.equal((await listSnapshots(c, vm.mor)).length, 1, 'the sync holds its snapshot');
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.on('close', r));
  assert.is(code, 143, stderr);
  assert.match(stderr, /interrupted by SIGTERM/);
  assert.equal(await listSnapshots(c, vm.mor), [], 'snapshot removed');
  const v = await hamal(['versions', '--target', join(dir, 'repo'), '--json']);
  assert.equal(JSON.parse(v.stdout), []);
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

/**
 * 40 MiB written on the disk of `name`, synced slowly (100 ms per MB, one reader,
 * checkpoints every second) until at least 3 blocks are checkpointed, then sent `signal`.
 * `fast` is a config with the same lib dir for the rerun.
 */
async function stopMidRead(name: string, seed: number, signal: 'SIGKILL' | 'SIGTERM') {
  const dir = await tempDir();
  const c = await connect();
  const { vm: mor, disk } = await vmAndDisk(c, name);
  const vm = { mor };
  await ctl.write(mor.value, disk.key, 0, pattern(40 * MiB, seed));
  const lib = join(dir, 'lib');
  const slow = join(dir, 'slow.conf');
  await writeFile(slow, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[vmware]\nskip_disk_flag = True\n[period]\nvmware_release_cpu_time = 100\n[data_sync_v2]\nfsync_period_frequency = 1\npre_disk_readers_count = 1\n`);
  const fast = join(dir, 'fast.conf');
  await writeFile(fast, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[vmware]\nskip_disk_flag = True\n`);
  const taskFile = join(dir, 't.json');
  await writeFile(taskFile, taskJson(dir, name));
  const child = spawn(HAMAL_ARGV[0]!, [...HAMAL_ARGV.slice(1), '--config', slow, 'sync', '--task', taskFile, '--debug'], { env: { ...process.env, VC_PASSWORD: PASSWORD }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve) => {
    child.stderr!.on('data', (d) => {
      stderr += d;
      if (/checkpoint blocks=[3-9]/.test(stderr)) resolve();
    });
  });
  child.kill(signal);
  const code = await new Promise<number | null>((r) => child.on('close', r));
  const guest = () => ctl.sha256(mor.value, disk.key);
  const write = (offset: number, data: Buffer) => ctl.write(mor.value, disk.key, offset, data);
  return { dir, c, vm, guest, write, lib, fast, taskFile, stderr, code };
}

test('SIGKILL mid-read: the next run reuses the snapshot, resumes from the journal, and leaves no snapshot', async () => {
  const { dir, c, vm, guest, fast, taskFile } = await stopMidRead('DC0_H0_VM5', 31, 'SIGKILL');
  const sha = await guest();
  assert.equal((await listSnapshots(c, vm.mor)).length, 1, 'the killed sync left its snapshot');
  const again = await hamal(['--config', fast, 'sync', '--task', taskFile, '--json'], { VC_PASSWORD: PASSWORD });
  assert.is(again.code, 0, again.stderr);
  assert.match(again.stderr, /resuming with snapshot hamal-sync-/);
  assert.match(again.stderr, /resuming an interrupted sync: \d+ blocks already stored/);
  const s = JSON.parse(again.stdout).disks[0];
  assert.ok(s.resumedBytes >= 3 * 4 * MiB && s.readBytes + s.resumedBytes === 40 * MiB, JSON.stringify(s));
  assert.equal(await listSnapshots(c, vm.mor), [], 'no snapshot of ours is left');
  const out = join(dir, 'out.img');
  assert.is((await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'DC0_H0_VM5', '--disk', s.disk, '--out', out])).code, 0);
  assert.is(await sha256File(out), sha);
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test('SIGTERM mid-read, then the disk changes: the rerun keeps the journaled blocks CBT says did not change since the removed snapshot and rereads the rest', async () => {
  const { dir, c, vm, guest, write, lib, fast, taskFile, stderr, code } = await stopMidRead('DC0_H0_VM6', 41, 'SIGTERM');
  assert.is(code, 143, stderr);
  assert.equal(await listSnapshots(c, vm.mor), [], 'the stopped sync removed its snapshot');
  // What the stopped sync journaled (its checkpointed records), read as the rerun will.
  const journalFile = join(lib, 'journals', (await readdir(join(lib, 'journals'), { recursive: true })).find((f) => f.endsWith('.journal'))!);
  const journaled = await Journal.recover(journalFile, Journal.headerOf(await readFile(journalFile))!);
  assert.is(journaled.status, 'resumed');
  const had = (journaled as { entries: Map<number, unknown> }).entries;
  assert.ok(had.size >= 3 && had.has(1), `blocks journaled: ${[...had.keys()]}`);
  // After the stop: a block the stopped sync had stored changes, and one near the end.
  await write(4 * MiB + 100, Buffer.from('changed after the stop'));
  await write(36 * MiB, Buffer.from('changed late'));
  const sha = await guest();
  const again = await hamal(['--config', fast, 'sync', '--task', taskFile, '--json'], { VC_PASSWORD: PASSWORD });
  assert.is(again.code, 0, again.stderr);
  const m = /read snapshot \S+, not this one: (\d+) of its (\d+) blocks did not change since and are kept/.exec(again.stderr);
  assert.ok(m, again.stderr);
  const kept = Number(m![1]);
  assert.is(Number(m![2]), had.size);
  assert.is(kept, had.size - (had.has(9) ? 2 : 1), 'only the journaled blocks changed after the stop are read again');
  const s = JSON.parse(again.stdout).disks[0];
  assert.is(s.resumedBytes, kept * 4 * MiB);
  assert.is(s.readBytes + s.resumedBytes, 40 * MiB);
  assert.equal(await listSnapshots(c, vm.mor), [], 'no snapshot of ours is left');
  const out = join(dir, 'out.img');
  assert.is((await hamal(['restore', '--target', join(dir, 'repo'), '--vm', 'DC0_H0_VM6', '--disk', s.disk, '--out', out])).code, 0);
  assert.is(await sha256File(out), sha, 'the restore holds the changes made after the stop');
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

// The fault matrix: SIGKILL at each phase of a sync (src/failpoints.ts), then a plain rerun.
// Each ends with the disk restorable as it is, verify --deep passing and no snapshot left.
for (const [phase, point, name] of [
  ['the snapshot taken', 'snapshot.taken', 'DC0_H0_VM7'],
  ['a block read, not stored', 'block.read@2', 'DC0_H0_VM8'],
  ['a chunk stored, not journaled', 'chunk.stored@2', 'DC0_H0_VM9'],
  ['the manifest about to be written', 'manifest.write', 'DC0_H0_VM10'],
  ['the manifest written, the journal not yet removed', 'manifest.written', 'DC0_H0_VM11'],
  ['the snapshot about to be removed', 'snapshot.release', 'DC0_C0_RP0_VM8'],
] as const) {
  test(`fault matrix: SIGKILL with ${phase} (${point}); the rerun completes, verify --deep passes, no snapshot left`, async () => {
    const dir = await tempDir();
    const c = await connect();
    const { vm: mor, disk: d } = await vmAndDisk(c, name);
    const vm = { mor };
    await ctl.write(mor.value, d.key, 0, pattern(16 * MiB, point.length));
    const sha = await ctl.sha256(mor.value, d.key);
    const conf = join(dir, 'hamal.conf');
    await writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${join(dir, 'lib')}\n[vmware]\nskip_disk_flag = True\n[data_sync_v2]\npre_disk_readers_count = 1\n`);
    const taskFile = join(dir, 't.json');
    await writeFile(taskFile, taskJson(dir, name));
    const killed = await hamal(['--config', conf, 'sync', '--task', taskFile], { VC_PASSWORD: PASSWORD, HAMAL_FAILPOINTS: point.replace(/(@\d+)?$/, '=kill$1') });
    assert.is(killed.signal, 'SIGKILL', `the failpoint ${point} was reached: ${killed.stderr}`);
    const again = await hamal(['--config', conf, 'sync', '--task', taskFile, '--json'], { VC_PASSWORD: PASSWORD });
    assert.is(again.code, 0, again.stderr);
    assert.equal(await listSnapshots(c, vm.mor), [], 'no snapshot of ours is left');
    const disk = JSON.parse(again.stdout).disks[0].disk;
    const out = join(dir, 'out.img');
    const restored = await hamal(['restore', '--target', join(dir, 'repo'), '--vm', name, '--disk', disk, '--out', out]);
    assert.is(restored.code, 0, restored.stderr);
    assert.is(await sha256File(out), sha);
    const verify = await hamal(['verify', '--target', join(dir, 'repo'), '--deep']);
    assert.is(verify.code, 0, verify.stdout + verify.stderr);
    await rm(dir, { recursive: true, force: true });
    await c.logout();
  });
}

test('the lib dir full (a 64 KiB tmpfs, filled): the sync fails naming the journal and ENOSPC, exit 1, no snapshot left; with space again it completes', async () => {
  const dir = await tempDir();
  const lib = join(dir, 'lib');
  await mkdir(lib);
  const mounted = await run('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', lib]);
  // Where tmpfs cannot be mounted (no CAP_SYS_ADMIN) the failpoint stands in for it.
  const fill = mounted === 0 ? await writeFile(join(lib, 'filler'), Buffer.alloc(64 * 1024)).then(() => true, () => true) : false;
  try {
    const c = await connect();
    const vm = await findVm(c, 'DC0_C0_RP0_VM9');
    const conf = join(dir, 'hamal.conf');
    await writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${lib}\n[vmware]\nskip_disk_flag = True\n`);
    const taskFile = join(dir, 't.json');
    await writeFile(taskFile, taskJson(dir, 'DC0_C0_RP0_VM9'));
    const full = await hamal(['--config', conf, 'sync', '--task', taskFile], { VC_PASSWORD: PASSWORD, ...(fill ? {} : { HAMAL_FAILPOINTS: 'journal.write=enospc' }) });
    assert.is(full.code, 1, full.stderr);
    assert.match(full.stderr, /cannot write journal \S+\.journal: ENOSPC/);
    assert.equal(await listSnapshots(c, vm.mor), [], 'the snapshot is removed');
    assert.equal(JSON.parse((await hamal(['versions', '--target', join(dir, 'repo'), '--json'])).stdout), []);
    if (fill) await rm(join(lib, 'filler'));
    const again = await hamal(['--config', conf, 'sync', '--task', taskFile], { VC_PASSWORD: PASSWORD });
    assert.is(again.code, 0, again.stderr);
    assert.equal(await listSnapshots(c, vm.mor), []);
    await c.logout();
  } finally {
    if (mounted === 0) await run('umount', [lib]);
    await rm(dir, { recursive: true, force: true });
  }
});

test('the nbd server dying mid-read: the disk fails cleanly, the snapshot is removed, no version is committed', async () => {
  const dir = await tempDir();
  const c = await connect();
  const name = 'DC0_C0_RP0_VM10';
  const { vm, disk } = await vmAndDisk(c, name);
  await ctl.write(vm.value, disk.key, 0, pattern(24 * MiB, 41));
  const repo = await Repository.open(await FsStore.open(join(dir, 'repo'), { create: true }), { create: true });
  let killed = false;
  const r = await runVmSync(sourceFor(dir, 'nbd'), name, repo, { readers: 1, writers: 1, releaseCpuMsPerMb: 50 }, (e) => {
    if (e.type === 'block' && !killed) {
      killed = true;
      spawn('pkill', ['-KILL', '-f', `qemu-nbd .*--socket ${dir}/nbdkit/`]);
    }
  });
  assert.ok(killed);
  assert.is(r.failed.length, 1);
  assert.match(r.failed[0]!.error.message, /connection to .*nbd\.sock (lost|closed|failed)/);
  assert.equal(await repo.listVersions(name, r.failed[0]!.disk), []);
  assert.equal(await listSnapshots(c, vm), [], 'snapshot removed');
  await rm(dir, { recursive: true, force: true });
  await c.logout();
});

test.run();
