import ini from 'ini';
import { UsageError } from '../errors.ts';

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
 * - a duplicate section or key is an error, as with configparser's strict mode.
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
    if (eq <= 0) throw fail(n, `expected "key = value" or "[section]", found ${JSON.stringify(trimmed.slice(0, 40))}`);
    if (section === null) throw fail(n, 'a key before any [section]');
    const key = trimmed.slice(0, eq).trim().toLowerCase();
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
