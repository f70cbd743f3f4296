import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { promises as fsp, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig, parseConfig, formatConfig } from '../src/config/loadConfig.ts';
import { renderConfigDoc } from '../src/config/configDoc.ts';
import { SCHEMA } from '../src/config/schema.ts';
import { hamal } from './helpers/cli.ts';
import { tempDir } from './helpers/disks.ts';
import { REPO_ROOT } from './helpers/repoRoot.ts';

const root = REPO_ROOT;
const SEED = join(root, 'tests/fixtures/hamal.conf');

test("the seed's hamal.conf loads unchanged with its values", async () => {
  // As install.sh lays it out: mode 0600, since it holds auth_key.
  const dir = await tempDir();
  const conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, readFileSync(SEED), { mode: 0o600 });
  const c = await loadConfig(conf);
  assert.equal(c.warnings, []);
  const v = c.values;
  assert.is(v.DEFAULT.debug, false);
  assert.is(v.DEFAULT.log_rotation_type, 'size');
  assert.is(v.DEFAULT.max_logfile_size_mb, 64);
  assert.is(v.DEFAULT.hamal_lib_dir, '/var/lib/hamal/');
  assert.is(v.period.interval, 60);
  assert.is(v.mass.mass_endpoint, 'https://192.168.7.141:10443/hypermotion/v1');
  assert.is(v.mass.hyper_exporter_id, 'aaeb0d1fbbb14093837fb5f900b9f8ce');
  assert.is(v.mass.enable_heartbeat_msg, true);
  assert.is(v.vmware.disk_flag_size, 48);
  assert.is(v.vmware.max_read_blocks, 1024);
  assert.is(v.data_sync_v2.parallel_sync_disks_count, 4);
  assert.is(v.data_sync_v2.max_pre_disk_readers_count, 16);
  assert.is(v.fusion_compute.local_host_ip, '');
  assert.is(v.fusion_compute.max_writer_num, 10);
});

test('every key of the seed is declared, and the seed sets no key we do not know', () => {
  const seed = readFileSync(SEED, 'utf8');
  let section = '';
  for (const line of seed.split('\n')) {
    const h = /^\[(.+)\]/.exec(line);
    if (h) section = h[1]!;
    const k = /^(\w+)\s*=/.exec(line);
    if (k) assert.ok((SCHEMA as Record<string, Record<string, unknown>>)[section]?.[k[1]!], `[${section}] ${k[1]}`);
  }
});

test('[DEFAULT] values are visible in every section, unless the section sets its own', () => {
  const c = parseConfig('[DEFAULT]\ninterval = 30\ndisk_flag_size = 10\n[vmware]\ndisk_flag_size = 20\n[period]\n', 'x.conf');
  assert.is(c.values.period.interval, 30);
  assert.is(c.values.vmware.disk_flag_size, 20);
  assert.is(c.values.openstack_ceph.disk_flag_size, 10);
  assert.is(c.origin['period.interval'], 'DEFAULT');
  assert.is(c.origin['vmware.disk_flag_size'], 'file');
  assert.is(c.origin['mass.auth_key'], 'default');
});

test('inline comments need whitespace before # or ;, quotes are removed', () => {
  const c = parseConfig(
    [
      '[mass]',
      'auth_key = ab#cd',
      'hyper_exporter_id = x;y ; comment',
      '[fusion_compute]',
      'local_host_ip = ""   # empty',
      '[hamal]',
      "target = 'file:///a #b' ; quoted keeps its #",
      '[DEFAULT]',
      'DEBUG: True',
    ].join('\n'),
    'x.conf',
  );
  assert.is(c.values.mass.auth_key, 'ab#cd');
  assert.is(c.values.mass.hyper_exporter_id, 'x;y');
  assert.is(c.values.fusion_compute.local_host_ip, '');
  assert.is(c.values.hamal.target, 'file:///a #b');
  assert.is(c.values.DEFAULT.debug, true);
});

test('a config holding secrets that group or others can read is a warning naming the fix', async () => {
  const dir = await tempDir();
  const conf = join(dir, 'hamal.conf');
  await fsp.writeFile(conf, readFileSync(SEED), { mode: 0o644 });
  await fsp.chmod(conf, 0o644);
  const c = await loadConfig(conf);
  assert.equal(c.warnings, [`${conf} holds secrets and is readable by group or others (mode 644): chmod 600 ${conf}`]);
  await fsp.writeFile(conf, '[DEFAULT]\ndebug = False\n');
  assert.equal((await loadConfig(conf)).warnings, [], 'no secret, no warning');
});

test('unknown sections and keys are warnings naming file and line', () => {
  const c = parseConfig('[nosuch]\na = 1\n[period]\nintervall = 5\n[vmware]\ndebug = True\n', 'x.conf');
  assert.equal(c.warnings, [
    'x.conf: unknown section [nosuch] ignored',
    'x.conf, line 4: unknown key [period] intervall ignored',
    'x.conf, line 6: [vmware] debug is read from [DEFAULT] only; this one is ignored',
  ]);
});

test('the effective config prints with secrets masked and reads back', () => {
  const c = parseConfig('[mass]\nauth_key = ab#cd-auth-key-for-tests\n', 'x.conf');
  const text = formatConfig(c);
  assert.not.match(text, 'ab#cd-auth-key-for-tests');
  assert.match(text, 'auth_key = ********');
  assert.is(parseConfig(text, 'y').values.data_sync_v2.fsync_period_frequency, 3);
});

const BAD: Array<[string, string, RegExp]> = [
  ['[DEFAULT]\ndebug = maybe\n', 'debug', /line 2: \[DEFAULT\] debug = "maybe": must be True or False/],
  ['[data_sync_v2]\nparallel_sync_disks_count = 17\n', 'parallel_sync_disks_count', /parallel_sync_disks_count = 17: must be from 1 to max_parallel_sync_disks_count \(16\)/],
  ['[data_sync_v2]\npre_disk_readers_count = 0\n', 'pre_disk_readers_count', /pre_disk_readers_count = "0": must be from 1 to 1024/],
  ['[period]\ninterval = 1m\n', 'interval', /\[period\] interval = "1m": must be a whole number seconds/],
  ['[mass]\nmass_endpoint = ftp://x\n', 'mass_endpoint', /mass_endpoint = "ftp:\/\/x": must be empty or a URL/],
  ['[fusion_compute]\nlocal_host_ip = 10.0.0.300\n', 'local_host_ip', /local_host_ip = "10.0.0.300": must be empty or an IPv4 or IPv6 address/],
  ['[DEFAULT]\nlog_rotation_type = daily\n', 'log_rotation_type', /must be one of size, time/],
  ['[DEFAULT]\nhamal_lib_dir = var/lib\n', 'hamal_lib_dir', /must be an absolute path/],
  ['[period]\ninterval = 5\ninterval = 6\n', 'interval', /line 3: key interval appears twice in \[period\]/],
];

test('each bad config exits 2 with one line naming file, key and what is allowed', async () => {
  const dir = await tempDir();
  for (const [i, [text, key, message]] of BAD.entries()) {
    const file = join(dir, `bad${i}.conf`);
    await fsp.writeFile(file, text);
    const r = await hamal(['config', 'check', '--config', file]);
    assert.is(r.code, 2, `${key}: exit ${r.code} ${r.stderr}`);
    assert.match(r.stderr, file);
    assert.match(r.stderr, key);
    assert.match(r.stderr, message);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  await fsp.rm(dir, { recursive: true });
});

test('a bad secret value is named by key, never shown', () => {
  try {
    parseConfig('[mass]\nauth_key = x\n[data_sync_v2]\nmax_parallel_sync_disks_count = 2\n', 'x.conf');
    assert.unreachable();
  } catch (err) {
    assert.match((err as Error).message, /parallel_sync_disks_count = 4: must be from 1 to max_parallel_sync_disks_count \(2\)/);
  }
});

test('a missing config file named on the command line exits 2 naming it', async () => {
  const r = await hamal(['config', 'check', '--config', '/no/such/hamal.conf']);
  assert.is(r.code, 2);
  assert.match(r.stderr, 'cannot read config file /no/such/hamal.conf: ENOENT');
});

test('config check prints the seed with auth_key masked', async () => {
  const r = await hamal(['config', 'check', '--config', SEED]);
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, 'auth_key = ********');
  assert.match(r.stdout, 'hyper_exporter_id = aaeb0d1fbbb14093837fb5f900b9f8ce');
});

test('docs/configuration.md is what the key declarations generate (npm run docs)', () => {
  assert.is(readFileSync(join(root, 'docs/configuration.md'), 'utf8'), renderConfigDoc());
});

test.run();
