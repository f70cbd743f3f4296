// VMDK descriptors as another implementation of VMware's format writes them (qemu-img),
// and the files that are not descriptors.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseVmdkDescriptor } from '../src/sources/vmware/VmdkDescriptor.ts';
import { tempDir } from './helpers/disks.ts';

async function qemuVmdk(subformat: string, size: string): Promise<Buffer> {
  const dir = await tempDir();
  try {
    const file = join(dir, 'd.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`, file, size]);
    return await readFile(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('monolithicFlat (qemu-img): one FLAT extent with its offset, no parent', async () => {
  const d = parseVmdkDescriptor(await qemuVmdk('monolithicFlat', '3M'), '[ds] vm/d.vmdk');
  assert.is(d.createType, 'monolithicFlat');
  assert.is(d.parentCID, 'ffffffff');
  assert.equal(d.extents, [{ access: 'RW', sectors: 6144, type: 'FLAT', file: 'd-flat.vmdk', offset: 0 }]);
});

test('twoGbMaxExtentFlat (qemu-img): extents in order', async () => {
  const d = parseVmdkDescriptor(await qemuVmdk('twoGbMaxExtentFlat', '5G'), 'd.vmdk');
  assert.equal(
    d.extents.map((e) => [e.file, e.sectors]),
    [['d-f001.vmdk', 4194304], ['d-f002.vmdk', 4194304], ['d-f003.vmdk', 2097152]],
  );
});

test('an ESXi descriptor and a delta of it (VMDK spec 1.1 layout)', () => {
  const base = parseVmdkDescriptor(
    Buffer.from('# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\nRW 2097152 VMFS "web-flat.vmdk"\n\nddb.thinProvisioned = "1"\n'),
    '[ds] web/web.vmdk',
  );
  assert.equal(base.extents, [{ access: 'RW', sectors: 2097152, type: 'VMFS', file: 'web-flat.vmdk', offset: 0 }]);
  const delta = parseVmdkDescriptor(
    Buffer.from('version=1\r\nCID=3a1b2c4d\r\nparentCID=fffffffe\r\ncreateType="vmfsSparse"\r\nparentFileNameHint="web.vmdk"\r\nRW 2097152 VMFSSPARSE "web-000001-delta.vmdk"\r\n'),
    '[ds] web/web-000001.vmdk',
  );
  assert.is(delta.parentCID, 'fffffffe');
  assert.is(delta.parentFileNameHint, 'web.vmdk');
  assert.is(delta.extents[0]!.type, 'VMFSSPARSE');
});

test('not descriptors: a hosted sparse disk, binary data, an empty file, a malformed extent; each error names the file', async () => {
  const sparse = await qemuVmdk('monolithicSparse', '1M');
  for (const [bytes, why] of [
    [sparse, /\[ds\] a\.vmdk is not a VMDK descriptor hamal can read: it is a hosted sparse disk/],
    [Buffer.from('COWD\x01\x00\x00\x00'), /ESX sparse extent/],
    [Buffer.from([1, 2, 0, 4]), /binary data/],
    [Buffer.alloc(0), /no createType/],
    [Buffer.from('createType="vmfs"\n'), /names no extent/],
    [Buffer.from('createType="vmfs"\nRW lots VMFS "a-flat.vmdk"\n'), /extent line "RW lots VMFS .*" is malformed/],
    [Buffer.from('createType="vmfs"\nRW 100 VMFS\n'), /names no file/],
    [Buffer.alloc(70 * 1024, 'a'), /not a descriptor of at most 65536/],
  ] as const) {
    assert.throws(() => parseVmdkDescriptor(bytes, '[ds] a.vmdk'), (e: Error) => (why as RegExp).test(e.message) && e.message.includes('[ds] a.vmdk'));
  }
});

test.run();
