import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { lastValueFrom, NEVER, of, throwError, toArray } from 'rxjs';
import { usingResource } from '../src/streams/usingResource.ts';

const tracked = () => {
  const log: string[] = [];
  const acquire = async () => {
    log.push('acquire');
    return 'r';
  };
  const release = async (r: string) => {
    await new Promise((ok) => setTimeout(ok, 5));
    log.push(`release ${r}`);
  };
  return { log, acquire, release };
};

test('releases once after the body completes, before the result completes', async () => {
  const { log, acquire, release } = tracked();
  const out = await lastValueFrom(usingResource(acquire, release, (r) => of(`${r}1`, `${r}2`)).pipe(toArray()));
  log.push('completed');
  assert.equal(out, ['r1', 'r2']);
  assert.equal(log, ['acquire', 'release r', 'completed']);
});

test('releases on error, then rethrows it', async () => {
  const { log, acquire, release } = tracked();
  const err = await lastValueFrom(usingResource(acquire, release, () => throwError(() => new Error('boom')))).catch((e) => e);
  assert.is(err.message, 'boom');
  assert.equal(log, ['acquire', 'release r']);
});

test('releases on unsubscription', async () => {
  const { log, acquire, release } = tracked();
  const sub = usingResource(acquire, release, () => NEVER).subscribe();
  await new Promise((ok) => setTimeout(ok, 1));
  sub.unsubscribe();
  await new Promise((ok) => setTimeout(ok, 20));
  assert.equal(log, ['acquire', 'release r']);
});

test.run();
