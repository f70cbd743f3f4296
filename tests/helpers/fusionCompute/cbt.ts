// CBT bitmaps: POST {volumeUri}/getcbt (eSDK BackupOperationResourceImpl.queryVMVolumeCBT,
// ESDKURL queryVMVolumeCBT "/getcbt"), body QueryVMVolumeCBTReq {type, snapUuid,
// volCBTCreateTime, chgID, startBlock, blockNum}, reply VMVolumeCBT {sectorOfBlock, bitNum,
// bit1Num, bitMap}. BackupOperationResource javadoc:
//  - type: DiffBitmapAndBit1Num (bitmap and count) or DiffBitmapBit1Num (count only);
//  - snapUuid optional: without it the volume's own CBT file, "requires the volume unused";
//  - volCBTCreateTime required ("CBT initial full file creation time");
//  - chgID optional: absent = from the first CBT version, i.e. the full bitmap;
//  - startBlock (default 0) and blockNum: when both are given, multiples of 8; when either
//    is absent, the whole volume.
// VMVolumeCBT javadoc: bitNum < blockNum means the disk ended; bitMap "length
// roundup(bitNum/4)", "low bit of each byte = lower block", "needs converting". Four blocks
// per character is a hex string: each byte as two hex digits (high nibble first, lowercase:
// GUESSED, as SHA256Utils.bytes2Hex writes hex), byte k = blocks 8k..8k+7, bit i = block 8k+i.
// chgID values are decimal counters per tracking period (GUESSED format).
import { ERR, fail, type Ctx, type Reply } from './http.ts';
import { SECTORS_PER_BLOCK, BLOCK, cbtKey, type Volume } from './model.ts';
import type { FcState } from './state.ts';

const TYPES = ['DiffBitmapAndBit1Num', 'DiffBitmapBit1Num'];

function range(c: Ctx, total: number): { start: number; count: number } {
  const { startBlock, blockNum } = c.body;
  for (const [n, v] of Object.entries({ startBlock, blockNum })) {
    if (v !== undefined && v !== null && (!Number.isInteger(v) || (v as number) < 0)) fail(400, ERR.badParam, `${n} must be a non-negative integer`);
  }
  if (startBlock == null || blockNum == null) return { start: 0, count: total };
  if ((startBlock as number) % 8 || (blockNum as number) % 8) fail(400, ERR.badParam, 'startBlock and blockNum must be multiples of 8');
  return { start: startBlock as number, count: blockNum as number };
}

export function getCbt(st: FcState, v: Volume, c: Ctx): Reply {
  const { type, snapUuid, volCBTCreateTime, chgID } = c.body;
  if (typeof type !== 'string' || !TYPES.includes(type)) fail(400, ERR.badParam, `type must be one of ${TYPES.join(', ')}`);
  if (snapUuid == null) fail(400, ERR.busy, 'The volume is in use; give the snapUuid of a snapshot.');
  const vs = st.snaps.flatMap((s) => [...s.vols.values()]).find((x) => x.volume === v && x.snapUuid === snapUuid);
  if (!vs) return fail(404, ERR.snapshotNotFound, `No snapshot of this volume has snapUuid ${String(snapUuid)}.`);
  if (!vs.cbt) return fail(400, ERR.cbtInvalid, 'The snapshot has no CBT data (not a CBTbackup snapshot).');
  if (typeof volCBTCreateTime !== 'string') return fail(400, ERR.badParam, 'volCBTCreateTime is required');
  if (volCBTCreateTime !== vs.cbt.createTime) return fail(400, ERR.cbtInvalid, `volCBTCreateTime ${volCBTCreateTime} does not match the snapshot's CBT.`);
  let since = -1;
  if (chgID != null) {
    const g = v.chgHistory.get(cbtKey(vs.cbt.createTime, vs.cbt.restart, String(chgID)));
    if (g === undefined || Number(chgID) > Number(vs.cbt.chgID)) fail(400, ERR.cbtInvalid, `chgID ${String(chgID)} is not a CBT version of this volume before the snapshot.`);
    since = g!;
  }
  const total = (v.quantityGB * 1024 ** 3) / BLOCK;
  const { start, count } = range(c, total);
  const bitNum = Math.max(0, Math.min(count, total - start));
  const bytes = Buffer.alloc(Math.ceil(bitNum / 8));
  let bit1Num = 0;
  for (const [b, gen] of v.writes) {
    const i = b - start;
    if (i < 0 || i >= bitNum || gen <= since || gen > vs.gen) continue;
    bytes[i >> 3]! |= 1 << (i & 7);
    bit1Num++;
  }
  const shown = st.shortBitmap ? bytes.subarray(0, Math.max(0, bytes.length - 1)) : bytes;
  const body: Record<string, unknown> = { sectorOfBlock: SECTORS_PER_BLOCK, bitNum, bit1Num };
  if (type === 'DiffBitmapAndBit1Num') body.bitMap = shown.toString('hex');
  return { body };
}
