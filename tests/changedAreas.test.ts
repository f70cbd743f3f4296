import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { changedAreasPage } from '../src/sources/vmware/changedAreas.ts';

// Replies shaped as the SOAP layer hands them over: numbers may arrive as strings.
const MiB = 1 << 20;
const capacity = 64 * MiB;
const where = 'disk 2000 of vm-42';

test('a page with areas gives them and the next start; the last page ends the listing', () => {
  const page = changedAreasPage({ startOffset: '0', length: String(32 * MiB), changedArea: [{ start: 0, length: 4096 }, { start: '8192', length: '4096' }] }, 0, capacity, where);
  assert.equal(page, { extents: [{ offset: 0, length: 4096 }, { offset: 8192, length: 4096 }], next: 32 * MiB });
  const last = changedAreasPage({ startOffset: 32 * MiB, length: 32 * MiB, changedArea: { start: 40 * MiB, length: MiB } }, 32 * MiB, capacity, where);
  assert.equal(last, { extents: [{ offset: 40 * MiB, length: MiB }], next: null });
});

test('a reply that would end the listing before the capacity is refused, naming the disk: the rest of its changes would go unsynced', () => {
  const replies: Array<[unknown, RegExp]> = [
    [undefined, /not a DiskChangeInfo/],
    [{}, /length undefined is not a whole number/],
    [{ startOffset: -10, length: capacity + 20, changedArea: { start: -5, length: 10 } }, /startOffset -10 is not a whole number of bytes, 0 or more/],
    [{ startOffset: 8 * MiB, length: MiB, changedArea: { start: 8 * MiB, length: -4096 } }, /changedArea length -4096/],
    [{ startOffset: 0, changedArea: [] }, /length undefined/],
    [{ length: 4096 }, /startOffset undefined/],
    [{ startOffset: 8 * MiB, length: 0 }, /does not move on from 8388608/],
    [{ startOffset: 16 * MiB, length: MiB }, /\[16777216, 17825792\), which does not move on from 8388608/],
  ];
  for (const [reply, why] of replies) {
    const err = (() => {
      try {
        changedAreasPage(reply, 8 * MiB, capacity, where);
      } catch (e) {
        return e as Error & { code?: string; subject?: string };
      }
    })();
    assert.ok(err, `accepted ${JSON.stringify(reply)}`);
    assert.is(err.code, 'CBT_BAD_REPLY');
    assert.is(err.subject, where);
    assert.match(err.message, where);
    assert.match(err.message, why);
  }
});

test('an area outside the page or the disk is refused', () => {
  assert.throws(() => changedAreasPage({ startOffset: 0, length: MiB, changedArea: { start: MiB - 10, length: 20 } }, 0, capacity, where), /lies outside the page/);
  assert.throws(() => changedAreasPage({ startOffset: 0, length: 2 * capacity, changedArea: { start: capacity, length: 1 } }, 0, capacity, where), /or the disk/);
});

test.run();
