/** A VM or disk name as one safe key segment (docs/format.md, Layout). */
export function encodeName(name: string): string {
  if (name === '') throw new RangeError('a VM or disk name cannot be empty');
  return encodeURIComponent(name).replace(/^\./, '%2E');
}

export function decodeName(segment: string): string {
  return decodeURIComponent(segment);
}
