/**
 * The per-VM log file name of the seed, `vm-<name>_Agent-<uuid>.log`, with both parts
 * made safe for one path segment: no separators, no `..`, no control characters.
 */
export function vmLogFileName(vmName: string, uuid: string): string {
  return `vm-${safeSegment(vmName)}_Agent-${safeSegment(uuid)}.log`;
}

function safeSegment(s: string): string {
  const out = s
    .normalize('NFC')
    .replace(/[^\p{L}\p{N}._-]/gu, '_')
    .replace(/\.{2,}/g, '_')
    .replace(/^[.-]+/, '_')
    .slice(0, 96);
  return out || '_';
}
