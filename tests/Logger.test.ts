import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Logger } from '../src/log/Logger.ts';
import { vmLogFileName } from '../src/log/vmLogFileName.ts';

const capture = (level: 'info' | 'debug' = 'debug') => {
  const lines: string[] = [];
  const logger = new Logger({ level, sink: (l) => lines.push(l), secrets: ['315d65ca-ef28-4e63-ad72-1260a91adf23'] });
  return { logger, lines };
};

test('registered secrets are redacted wherever they appear', () => {
  const { logger, lines } = capture();
  logger.info('auth with 315d65ca-ef28-4e63-ad72-1260a91adf23 failed', { detail: 'key was 315d65ca-ef28-4e63-ad72-1260a91adf23' });
  logger.addSecret('s3cr3t-Pa55word-for-tests');
  logger.child('vmware').error('login', { nested: { deep: ['s3cr3t-Pa55word-for-tests'] } });
  assert.is(lines.length, 2);
  for (const l of lines) {
    assert.not.match(l, '315d65ca');
    assert.not.match(l, 's3cr3t');
  }
  assert.match(lines[1]!, '[vmware]');
});

test('fields named like secrets are redacted whatever they hold', () => {
  const { logger, lines } = capture();
  logger.info('connect', { password: 'hunter2-xyz', auth_key: 'k-1', secretAccessKey: 'abc', sessionToken: 'tok', user: 'admin', cfg: { keyring: 'AQD==', host: 'h' } });
  const l = lines[0]!;
  for (const s of ['hunter2-xyz', 'k-1', 'abc', 'tok', 'AQD==']) assert.not.match(l, s);
  assert.match(l, 'user=admin');
  assert.match(l, '"host":"h"');
});

test('secret-looking pairs and URL passwords inside messages are redacted', () => {
  const { logger, lines } = capture();
  logger.warn('retry with password=hunter2 and "token": "abc.def" to https://admin:pw0rd@vc.local/sdk auth_key = zz9');
  const l = lines[0]!;
  for (const s of ['hunter2', 'abc.def', 'pw0rd', 'zz9']) assert.not.match(l, s);
  assert.match(l, 'https://admin:***@vc.local/sdk');
});

test('levels: debug lines only at debug, verbose at verbose and debug', () => {
  const { logger, lines } = capture('info');
  logger.debug('d');
  logger.verbose('v');
  logger.info('i');
  logger.configure({ level: 'verbose' });
  logger.verbose('v2');
  logger.debug('d2');
  assert.equal(lines.map((l) => l.split('] ')[1]), ['i', 'v2']);
});

test('per-VM log file names follow the seed and cannot escape the log directory', () => {
  assert.is(vmLogFileName('kylin_v10', '4211d3c4-aaaa'), 'vm-kylin_v10_Agent-4211d3c4-aaaa.log');
  assert.is(vmLogFileName('../../etc/passwd', 'x/y'), 'vm-____etc_passwd_Agent-x_y.log');
  assert.is(vmLogFileName('..', '.'), 'vm-__Agent-_.log');
  assert.is(vmLogFileName('web 01\n', 'u'), 'vm-web_01__Agent-u.log');
  assert.ok(!vmLogFileName('a/b\\c\0d', 'u').match(/[/\\\0]/));
});

test.run();
