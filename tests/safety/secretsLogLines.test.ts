// A log line is one line: control characters in names and messages (a VM called
// "evil\nINFO  [sync] forged", an ESC sequence in a child's stderr) are escaped, after
// redaction, on stderr and in the per-VM log.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { hamal } from '../helpers/cli.ts';
import { MiB, makeImage, pattern, tempDir } from '../helpers/disks.ts';
import { Logger } from '../../src/log/Logger.ts';
import { setSubprocessSink, subprocessOutput } from '../../src/log/subprocessLog.ts';

const SECRET = 's3cr3t-Pa55word-for-tests';
/** The logger's own start of a line: an ISO time stamp, then the level. */
const LINE_START = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (ERROR|WARN|INFO|VERBOSE|DEBUG) +\[/;

test('the logger escapes C0, DEL, C1, U+2028/2029 and bidi overrides in messages and fields, after redaction', () => {
  const lines: string[] = [];
  const logger = new Logger({ level: 'debug', sink: (l) => lines.push(l), secrets: [SECRET] });
  logger.info(`VM a\nb\r\tc\x1b[2J\x7f\x85\u2028\u2029\u202e ${SECRET}\n`, { vm: 'x\ny', name: 'p\x1bq', path: 'plain' });
  assert.is(lines.length, 1);
  const l = lines[0]!;
  assert.not.match(l, /[\x00-\x1f\x7f-\x9f\u2028\u2029\u202e]/);
  assert.ok(l.includes('VM a\\nb\\r\\tc\\x1b[2J\\x7f\\x85\\u2028\\u2029\\u202e ***\\n '), l);
  assert.ok(l.includes('vm="x\\ny"'), l);
  assert.ok(l.includes('name=p\\x1bq'), l);
  assert.ok(l.includes('path=plain'), l);
  assert.not.ok(l.includes(SECRET));
  // line() too (what taskRunner writes to a VM's log).
  assert.not.match(logger.line('error', 'task t: VM a\nb'), '\n');
});

test("a child's stderr in the subprocess log: one line per line it wrote, \\r and ESC escaped", () => {
  const lines: string[] = [];
  setSubprocessSink((l) => lines.push(l));
  try {
    const out = subprocessOutput('nbdkit', 42);
    out('first\rforged\x1b[1A\x1b[2K\nsecond\u2028third\n');
  } finally {
    setSubprocessSink(undefined);
  }
  assert.is(lines.length, 2);
  assert.ok(lines[0]!.endsWith('[nbdkit:42] first\\rforged\\x1b[1A\\x1b[2K'), lines[0]);
  assert.ok(lines[1]!.endsWith('[nbdkit:42] second\\u2028third'), lines[1]);
});

test('a VM named "evil\\nINFO  [sync] forged": every stderr and VM-log line of a real sync starts with the logger\'s time stamp, the name escaped inside one', async () => {
  const dir = await tempDir();
  try {
    const logDir = join(dir, 'log');
    await fsp.mkdir(logDir, { mode: 0o700 });
    const conf = join(dir, 'hamal.conf');
    await fsp.writeFile(conf, `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\n[hamal]\nlog_dir = ${logDir}\n`, { mode: 0o600 });
    const disk = join(dir, 'disk.img');
    await makeImage(disk, 2 * MiB, [[0, pattern(8192, 9)]]);
    const vm = 'evil\nINFO  [sync] forged\r\x1b[31m\u2028end';
    const escaped = 'evil\\nINFO  [sync] forged\\r\\x1b[31m\\u2028end';
    const r = await hamal(['--config', conf, 'sync', '--vm', vm, '--disk', `d=${disk}`, '--target', join(dir, 'repo'), '--verbose']);
    assert.is(r.code, 0, r.stderr);
    const stderr = r.stderr.split('\n').filter(Boolean);
    for (const line of stderr) assert.match(line, LINE_START, line);
    assert.ok(stderr.some((line) => line.includes(`VM ${escaped}`)), r.stderr);
    const [vmLogName] = (await fsp.readdir(logDir)).filter((n) => n.startsWith('vm-'));
    assert.ok(vmLogName, 'a VM log was written');
    const vmLog = (await fsp.readFile(join(logDir, vmLogName!), 'utf8')).split('\n').filter(Boolean);
    assert.ok(vmLog.length >= 2, String(vmLog.length));
    for (const line of vmLog) assert.match(line, LINE_START, line);
    assert.ok(vmLog.some((line) => line.includes(`VM ${escaped}`)), vmLog.join('\n'));
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test.run();
