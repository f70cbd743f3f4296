import ini from 'ini';
import { UsageError } from '../errors.ts';
import { SCHEMA } from './schema.ts';

export interface IniValue {
  value: string;
  line: number;
}

/** Section name -> key -> value with its line; `DEFAULT` is a section like the others here. */
export type IniFile = Map<string, Map<string, IniValue>>;

/**
 * Reads an INI file by the rules of Python's configparser, which the product hamal
 * replaces used, plus the two docs/configuration.md adds:
 * - `key = value` or `key: value`; keys are case-insensitive (stored lower case);
 * - whole-line comments start with `#` or `;`; an inline comment starts at a `#` or `;`
 *   that follows whitespace, so `auth_key = ab#cd` keeps `ab#cd`;
 * - one pair of surrounding quotes is removed, so `local_host_ip = ""` is empty;
 * - an indented line continues the value above it;
 * - a duplicate section or key is an error, as with configparser's strict mode;
 * - a key is one word of letters, digits, `_`, `.` or `-` (configparser allows more;
 *   hamal's keys never need it, and a "key" with spaces or `/` is almost always a value
 *   whose `=` is missing, which the unknown-key warning would then print).
 *
 * Syntax errors name file and line, and the key when the line starts with one of hamal's
 * keys, but never show the line: it may hold a secret (`secret_access_key  abc` with its
 * `=` missing), and these errors come before any key is known to be secret.
 *
 * The `ini` package alone strips `#` anywhere in a value and has no line numbers, so the
 * lines are tokenised here and ini builds the section map from normalised text in which
 * every value is a JSON string (which ini takes literally).
 */
export function readIni(text: string, file: string): IniFile {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const order: Array<{ section: string; key: string; value: string; line: number }> = [];
  const seen = new Map<string, Set<string>>();
  let section: string | null = null;
  let last: (typeof order)[number] | null = null;
  const fail = (line: number, what: string) =>
    new UsageError('CONFIG_SYNTAX', `${file}, line ${line}: ${what}`, { subject: `${file}:${line}` });

  lines.forEach((raw, i) => {
    const n = i + 1;
    const trimmed = raw.trim();
    if (trimmed === '' || trimmed.startsWith('#') || trimmed.startsWith(';')) {
      if (trimmed === '') last = null;
      return;
    }
    if (/^\s/.test(raw) && last) {
      // `  secret_access_key = ...` indented by mistake would become part of the value
      // above, which a bad-value error prints: refuse it instead.
      const key = knownKeyAt(trimmed);
      if (key) throw fail(n, `${key} is indented, so it would continue the value of ${last.key} (line ${last.line}); start it at the beginning of its line`);
      last.value += '\n' + parseValue(trimmed);
      return;
    }
    const header = /^\[([^\]]+)\]\s*(?:[#;].*)?$/.exec(trimmed);
    if (header) {
      section = header[1]!.trim();
      if (seen.has(section)) throw fail(n, `section [${section}] appears twice`);
      seen.set(section, new Set());
      last = null;
      return;
    }
    const eq = trimmed.search(/[=:]/);
    const key = eq > 0 ? trimmed.slice(0, eq).trim().toLowerCase() : '';
    if (!KEY.test(key)) {
      const known = knownKeyAt(trimmed);
      if (known) throw fail(n, `"=" missing after ${known} (the value is not shown)`);
      if (trimmed.startsWith('[')) throw fail(n, 'a line starting with "[" must be a [section] header alone on its line (the line is not shown)');
      if (eq === 0) throw fail(n, `a "${trimmed[0]}" with no key before it (the line is not shown: it may hold a secret)`);
      throw fail(n, `expected "key = value" or "[section]"${eq > 0 ? ', a key being one word of letters, digits, "_", "." or "-"' : ''} (the line is not shown: it may hold a secret)`);
    }
    if (section === null) throw fail(n, 'a key before any [section]');
    const keys = seen.get(section)!;
    if (keys.has(key)) throw fail(n, `key ${key} appears twice in [${section}]`);
    keys.add(key);
    last = { section, key, value: parseValue(trimmed.slice(eq + 1).trim()), line: n };
    order.push(last);
  });

  const normalised: string[] = [];
  for (const name of seen.keys()) {
    normalised.push(`[${name.replace(/\./g, '\\.')}]`);
    for (const e of order) if (e.section === name) normalised.push(`${e.key} = ${JSON.stringify(e.value)}`);
  }
  const parsed = ini.parse(normalised.join('\n')) as Record<string, Record<string, unknown>>;
  const out: IniFile = new Map();
  for (const name of seen.keys()) {
    const values = new Map<string, IniValue>();
    for (const e of order) {
      if (e.section !== name) continue;
      // ini turns the strings true, false and null into values; String() turns them back.
      const v = parsed[name]?.[e.key];
      values.set(e.key, { value: v === undefined ? '' : String(v), line: e.line });
    }
    out.set(name, values);
  }
  return out;
}

/** One key: letters, digits, `_`, `.`, `-`. */
const KEY = /^[a-z0-9_.-]+$/;
/** Every key hamal knows, in any section: only these are named in syntax errors. */
const KNOWN_KEYS = new Set(Object.values(SCHEMA).flatMap((section) => Object.keys(section)));

/** The line's first word, lower case, when it is one of hamal's keys (followed by a separator, a space or nothing). */
function knownKeyAt(line: string): string | undefined {
  const word = /^([A-Za-z0-9_.-]+)(?=[\s=:]|$)/.exec(line)?.[1]!.toLowerCase();
  return word !== undefined && KNOWN_KEYS.has(word) ? word : undefined;
}

/** A quoted value ends at its closing quote (a comment may follow); otherwise at an inline comment. */
function parseValue(value: string): string {
  const q = value[0];
  if (q === '"' || q === "'") {
    const close = value.indexOf(q, 1);
    if (close > 0 && /^(\s*$|\s+[#;])/.test(value.slice(close + 1))) return value.slice(1, close);
  }
  const m = /\s[#;]/.exec(value);
  return (m ? value.slice(0, m.index) : value).trim();
}
