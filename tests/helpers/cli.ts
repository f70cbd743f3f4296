// Runs the built hamal CLI as a real child process and keeps everything it printed, so a
// test can check that no secret ever reached the output.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Under Deno the tests run from source (tests/*.ts) and so does the CLI they start. */
export const UNDER_DENO = 'Deno' in globalThis;
// HAMAL_TEST_CLI runs the tests against another build (e.g. an older main, to see a new test fail there).
export const HAMAL = process.env.HAMAL_TEST_CLI || fileURLToPath(new URL(`../../src/cli/hamal.${UNDER_DENO ? 'ts' : 'js'}`, import.meta.url));
/** The command line that runs the CLI: `node hamal.js`, or `deno run -A hamal.ts`. */
export const HAMAL_ARGV: readonly string[] = UNDER_DENO ? [process.execPath, 'run', '--allow-all', HAMAL] : [process.execPath, HAMAL];
export const allOutput: string[] = [];

/** A hamal.conf whose hamal_lib_dir is a temporary directory, so tests never touch /var/lib/hamal. */
export const TEST_LIB_DIR = mkdtempSync(join(tmpdir(), 'hamal-lib-'));
export const TEST_CONFIG = join(TEST_LIB_DIR, 'hamal.conf');
writeFileSync(TEST_CONFIG, `[DEFAULT]\nhamal_lib_dir = ${TEST_LIB_DIR}\n[data_sync_v2]\nfsync_period_frequency = 1\n`);
process.on('exit', () => rmSync(TEST_LIB_DIR, { recursive: true, force: true }));

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `hamal ARGS`; `via` runs it under another command (e.g. setpriv to drop privileges). */
export function hamal(args: string[], env: Record<string, string> = {}, via: string[] = []): Promise<Run> {
  return new Promise((resolve, reject) => {
    const argv = [...via, ...HAMAL_ARGV, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      env: { ...process.env, HAMAL_CONFIG: TEST_CONFIG, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      allOutput.push(stdout, stderr);
      resolve({ code, signal, stdout, stderr });
    });
  });
}
