import { promises as fsp } from 'node:fs';
import { replaceFile } from './replaceFile.ts';

/**
 * `ip_mapping.backup`: each VM's NICs and IPs as its source last reported them, so an
 * operator who restores a VM elsewhere knows what addresses it had. One JSON object keyed
 * by VM, replaced atomically after each sync that reported NICs.
 */
export async function recordIpMapping(file: string, vm: string, nics: unknown, at = new Date()): Promise<void> {
  if (!Array.isArray(nics) || !nics.length) return;
  let all: Record<string, unknown> = {};
  try {
    all = JSON.parse(await fsp.readFile(file, 'utf8'));
  } catch {
    all = {};
  }
  all[vm] = { nics, at: at.toISOString() };
  await replaceFile(file, JSON.stringify(all, null, 2) + '\n');
}
