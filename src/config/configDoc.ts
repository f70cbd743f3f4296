import type { ConfigKey } from './ConfigKey.ts';
import { SCHEMA } from './schema.ts';

const INTRO = `# hamal.conf

hamal reads \`/etc/hamal/hamal.conf\` (or \`--config PATH\`, or \`$HAMAL_CONFIG\`). The seed's
sample file loads as it is; every key it has is listed below with what it does here, or
why it is accepted and ignored. Keys hamal adds live in its own section, \`[hamal]\`; the
seed's keys are never renamed. \`hamal config check [--config PATH]\` prints the effective
configuration with secrets masked.

This file is generated from \`src/config/schema.ts\` by \`npm run docs\`; a test keeps the two equal.

## Syntax

The rules of Python's configparser, which the product hamal replaces used, and two more:

- \`key = value\` or \`key: value\`; keys are case-insensitive. Whole-line comments start
  with \`#\` or \`;\`.
- **Inline comments** start at a \`#\` or \`;\` that follows whitespace: \`debug = False # note\`
  is \`False\`, while \`auth_key = ab#cd\` keeps \`ab#cd\`.
- **Quotes**: one pair of surrounding quotes is removed: \`local_host_ip = ""\` is empty,
  \`auth_key = "a #b"\` is \`a #b\`.
- **\`[DEFAULT]\`** values are visible in every section, as in configparser: a key missing
  from its section takes \`[DEFAULT]\`'s value of the same name, then the built-in default.
  The keys of \`[DEFAULT]\` itself are read from \`[DEFAULT]\` only.
- An indented line continues the value above it. A section or key given twice is an error.
- Booleans: \`True\`/\`False\` (also yes/no, on/off, 1/0, any case). Numbers are whole numbers
  in the unit given below.
- Unknown sections and keys are reported as warnings and ignored. A bad value stops hamal
  with exit code 2 and one line naming the file, line, section, key, value (masked for
  secrets) and what is allowed.

The \`ini\` package builds the section map, but alone it strips \`#\` anywhere in a value and
keeps quotes wrongly, so hamal tokenises the lines itself first (\`src/config/readIni.ts\`)
and hands ini normalised text in which every value is a JSON string.

## Keys

*used*: hamal acts on it in this release. *accepted*: loaded and checked (a bad value is
still an error), then ignored for the reason given.
`;

function typeText(k: ConfigKey): string {
  const t = k.type;
  switch (t.kind) {
    case 'bool':
      return 'boolean';
    case 'int':
      return `integer ${t.min}..${t.max}${t.unit ? ` (${t.unit})` : ''}`;
    case 'enum':
      return t.values.join(' \\| ');
    case 'url':
      return `empty or URL (${t.schemes.join(', ')})`;
    case 'ip':
      return 'empty or IP address';
    case 'path':
      return 'absolute path';
    case 'string':
      return 'string';
  }
}

/** docs/configuration.md, from the key declarations. */
export function renderConfigDoc(): string {
  const out = [INTRO];
  for (const [section, keys] of Object.entries(SCHEMA) as Array<[string, Record<string, ConfigKey>]>) {
    out.push(`\n### [${section}]${section === 'hamal' ? " (hamal's own)" : ''}\n`);
    out.push('| key | type | default | status | meaning |');
    out.push('|---|---|---|---|---|');
    for (const [key, k] of Object.entries(keys)) {
      const def = k.default === '' ? '(empty)' : `\`${k.default}\``;
      out.push(`| \`${key}\` | ${typeText(k)} | ${def} | ${k.status}${k.secret ? ', secret' : ''} | ${k.doc.replace(/\|/g, '\\|')} |`);
    }
  }
  out.push('\nCross-checks: `parallel_sync_disks_count` must not exceed `max_parallel_sync_disks_count`, and `pre_disk_readers_count` must not exceed `max_pre_disk_readers_count`.\n');
  return out.join('\n');
}
