import { randomBytes } from 'node:crypto';

/** `YYYYMMDDTHHMMSSmmmZ-<8 hex>`: string order is creation order (docs/format.md). */
export type VersionId = string;

export function newVersionId(now = new Date()): VersionId {
  const stamp = now.toISOString().replace(/[-:.]/g, '');
  return `${stamp}-${randomBytes(4).toString('hex')}`;
}

export function isVersionId(value: string): boolean {
  return /^\d{8}T\d{9}Z-[0-9a-f]{8}$/.test(value);
}
