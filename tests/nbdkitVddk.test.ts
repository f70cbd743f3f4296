// The VMware nbd transport's server when it cannot start, and `hamal doctor`'s word on the
// vddk plugin and VDDK. Debian's nbdkit has no vddk plugin, so the real nbdkit fails here
// as it does in a stock container; the one stand-in is a script printing what nbdkit's
// vddk plugin prints for --dump-plugin (nbdkit plugins/vddk/vddk.c, vddk_dump_plugin).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { NbdkitExport, VDDK_TEMPLATE, type NbdkitValues } from '../src/sources/vmware/NbdkitExport.ts';
import { NbdServerProcess, serverReason } from '../src/sources/nbd/NbdServerProcess.ts';
import { vddkChecks } from '../src/cli/doctor.ts';
import { hamal } from './helpers/cli.ts';
import { tempDir } from './helpers/disks.ts';

const PASSWORD = 'vddk-Pa55-not-logged';
const values: NbdkitValues = { server: 'vc.example', user: 'backup', thumbprint: 'AA:BB', moref: 'vm-42', snapshot: 'snapshot-7', file: '[ds1] vm/vm.vmdk', datastore: 'ds1', path: 'vm/vm.vmdk' };
let dir: string;
test.before(async () => {
  dir = await tempDir();
});
test.after(() => fsp.rm(dir, { recursive: true, force: true }));

const failure = (p: Promise<unknown>): Promise<Error & { code?: string }> => p.then(() => { throw new Error("it started"); }, (e: Error & { code?: string }) => e);

test('nbdkit without the vddk plugin: the error carries nbdkit\'s own reason, not its usage hint, nor the password', async () => {
  const err = await failure(NbdkitExport.start(VDDK_TEMPLATE, values, PASSWORD, dir, 1 << 20));
  assert.is(err.code, 'NBDKIT_FAILED');
  assert.match(err.message, /^nbdkit for \[ds1\] vm\/vm\.vmdk did not start: nbdkit: error: cannot open plugin 'vddk'/);
  assert.not.match(err.message, /--help|manual/);
  assert.not.match(err.message, PASSWORD);
  assert.equal(await fsp.readdir(join(dir, 'nbdkit')), [], 'its private directory (and password file) removed');
});

test('nbdkit given an option it does not know: the "unrecognized option" line, not the usage block after it', async () => {
  const err = await failure(NbdkitExport.start('nbdkit --no-such-option --unix {socket} memory 1M', values, PASSWORD, dir, 1 << 20));
  assert.match(err.message, /did not start: nbdkit: unrecognized option '--no-such-option'$/);
});

test("qemu-nbd that cannot open its image: qemu-nbd's reason, not its \"Try --help\" line", async () => {
  const d = await NbdServerProcess.privateDir(dir, 'qemu');
  const err = await failure(NbdServerProcess.start(['qemu-nbd', '--read-only', '--socket', join(d, 's'), join(dir, 'missing.img')], d, join(d, 's'), 'disk-0', 1 << 20));
  assert.match(err.message, /^qemu-nbd for disk-0 (did not start|exited): qemu-nbd: Failed to blk_new_open .*missing\.img.*No such file/);
  assert.is(serverReason("qemu-nbd: unrecognized option '--x'\nqemu-nbd: Try `qemu-nbd --help' for more information.\n", 'qemu-nbd'), "qemu-nbd: unrecognized option '--x'");
});

/** A stand-in nbdkit that prints, for `vddk --dump-plugin`, what nbdkit's vddk.c prints. */
async function fakeNbdkit(name: string, installed: boolean): Promise<string> {
  const path = join(dir, name);
  const base = ['path=/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-vddk-plugin.so', 'name=vddk', 'version=1.42.6', 'vddk_default_libdir=/usr/lib64/vmware-vix-disklib', 'vddk_has_nfchostport=1'];
  const lib = ['vddk_library_version=8', 'vddk_dll=/opt/vmware-vix-disklib-distrib/lib64/libvixDiskLib.so.8.0.3', 'VixDiskLib_Open=1'];
  // The library lines only when VDDK is at the libdir= given, as the plugin loads it.
  const script = ['#!/bin/sh', '[ "$1 $2" = "vddk --dump-plugin" ] || exit 1', `printf '%s\\n' ${base.join(' ')}`];
  if (installed) script.push(`[ "$3" = libdir=/opt/vmware-vix-disklib-distrib ] && printf '%s\\n' ${lib.join(' ')}`);
  await fsp.writeFile(path, script.join('\n') + '\nexit 0\n', { mode: 0o700 });
  return path;
}

test('doctor: the vddk plugin missing is a warn with nbdkit\'s reason; VDDK loaded or not from the template\'s libdir', async () => {
  const [missing] = await vddkChecks(VDDK_TEMPLATE);
  assert.is(missing!.status, 'warn');
  assert.match(missing!.detail, /cannot open plugin 'vddk'/);
  assert.match(missing!.fix!, /docs\/vddk\.md/);

  const without = await vddkChecks(VDDK_TEMPLATE.replace(/^nbdkit/, await fakeNbdkit('nbdkit-novddk', false)));
  assert.equal(without.map((c) => `${c.what}: ${c.status}`), ['nbdkit vddk: ok', 'VDDK: warn']);
  assert.match(without[1]!.detail, /could not load VDDK from \/opt\/vmware-vix-disklib-distrib \(libdir= of \[hamal\] vmware_nbdkit_command\)/);

  const withIt = await vddkChecks(VDDK_TEMPLATE.replace(/^nbdkit/, await fakeNbdkit('nbdkit-vddk', true)));
  assert.equal(withIt.map((c) => `${c.what}: ${c.status}`), ['nbdkit vddk: ok', 'VDDK: ok']);
  assert.match(withIt[1]!.detail, /VDDK 8 loaded from \/opt\/vmware-vix-disklib-distrib\/lib64\/libvixDiskLib\.so\.8\.0\.3/);

  const own = await vddkChecks('qemu-nbd --read-only --socket {socket} /srv/{path}');
  assert.equal(own.map((c) => c.status), ['ok'], "an operator's own command is not second-guessed");
});

test('hamal doctor --json reports the configured command\'s vddk plugin', async () => {
  const conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${join(dir, 'lib')}\n[hamal]\nlog_dir = ${join(dir, 'log')}\ntasks_dir = ${join(dir, 'tasks')}\n`);
  const r = await hamal(['doctor', '--json', '--config', conf]);
  const by = Object.fromEntries((JSON.parse(r.stdout) as Array<{ what: string; status: string; detail: string }>).map((c) => [c.what, c]));
  assert.is(by['nbdkit vddk']!.status, 'warn');
  assert.match(by['nbdkit vddk']!.detail, /cannot open plugin 'vddk'/);
});

test.run();
