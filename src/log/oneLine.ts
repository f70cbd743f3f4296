/**
 * Control characters, which would let a name or a message forge log lines (a VM named
 * "web\n2025-01-01T00:00:00.000Z INFO ...") or rewrite the terminal (ESC sequences):
 * C0 (newline, carriage return, tab, ESC, ...), DEL, C1 (NEL among them), the Unicode line
 * and paragraph separators, and the bidirectional overrides and isolates, which reorder
 * what a reader sees.
 */
const CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * `text` as one line: each control character becomes a visible escape (`\n`, `\x1b`,
 * `\u2028`). Backslashes stay as they are, so a name holding the two characters `\n`
 * reads the same as an escaped newline, but it is still inside the one line.
 */
export function oneLine(text: string): string {
  return text.replace(CONTROL, (c) => {
    const code = c.charCodeAt(0);
    return SHORT[c] ?? (code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`);
  });
}
