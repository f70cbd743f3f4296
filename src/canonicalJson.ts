/**
 * The canonical JSON form signatures and MACs are computed over (signed tasks, the
 * sealed repository config): object keys sorted by UTF-16 code
 * units, no whitespace, strings and numbers as JSON.stringify writes them (the subset of
 * RFC 8785 that task payloads use: no floats that need ECMAScript number formatting rules
 * beyond what JSON.stringify already follows).
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    const s = JSON.stringify(value);
    if (s === undefined) throw new TypeError(`cannot sign a ${typeof value}`);
    return s;
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
}
