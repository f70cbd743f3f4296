// The Deno commands README documents, as a person types them: `npx deno task ...` from the
// repository, with the pinned deno of node_modules.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/repoRoot.ts';
import { VERSION } from '../src/version.ts';

const root = REPO_ROOT;

interface Run {
  code: number;
  out: string;
}

/** `npx deno task ARGS` in the repository; resolves with its exit code and all it printed. */
function denoTask(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> {
  return new Promise((resolve) => {
    execFile('npx', ['deno', 'task', ...args], { cwd: root, env: { ...env, NO_COLOR: '1' }, maxBuffer: 64 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: `${stdout}\n${stderr}` });
    });
  });
}

test('deno task demo syncs, restores and compares', async () => {
  const r = await denoTask(['demo']);
  assert.is(r.code, 0, r.out);
  assert.match(r.out, 'demo passed');
});

test('deno task hamal --version prints the version', async () => {
  const r = await denoTask(['hamal', '--version']);
  assert.is(r.code, 0, r.out);
  assert.match(r.out, new RegExp(`^${VERSION.replace(/\./g, '\\.')}$`, 'm'));
});

test('deno task compile builds a hamal that runs', async () => {
  const out = join(root, 'build/hamal-deno');
  const hadBuild = existsSync(join(root, 'build'));
  try {
    const r = await denoTask(['compile']);
    // The compile runtime (denort) comes from Deno's release host, not from npm: where it
    // cannot be reached (no network, no DENORT_BIN) the task must still get as far as that.
    if (r.code !== 0 && /denort-[\w-]+\.zip|dl\.deno\.land/.test(r.out) && !process.env.DENORT_BIN) {
      assert.match(r.out, /Compile\b.*src\/cli\/hamal\.ts/, r.out);
      console.log('  deno task compile: type-checked and bundled; the compile runtime could not be downloaded here, so the binary was not run');
      return;
    }
    assert.is(r.code, 0, r.out);
    const version = await new Promise<string>((resolve, reject) =>
      execFile(out, ['--version'], (err, stdout, stderr) => (err ? reject(new Error(`${out} --version: ${err.message}\n${stderr}`)) : resolve(stdout.trim()))),
    );
    assert.is(version, VERSION);
  } finally {
    rmSync(out, { force: true });
    if (!hadBuild && existsSync(join(root, 'build')) && readdirSync(join(root, 'build')).length === 0) rmdirSync(join(root, 'build'));
  }
});

test.run();
