// What an embedder gets from npm: the packed package installed into a scratch project,
// its docs' examples and a consumer type-checked under --strict against it, and the
// consumer run under Node and Deno (a real sync and restore, compared by SHA-256).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT } from './helpers/repoRoot.ts';

// This file runs from <build>/tests/: <build> is what `dist/` holds in the package.
const built = fileURLToPath(new URL('..', import.meta.url));
const root = REPO_ROOT;
const tsc = join(root, 'node_modules/typescript/bin/tsc');
const deno = join(root, 'node_modules/.bin/deno');

/** Runs `cmd args` in `cwd`; rejects with what it printed, naming the command. */
function run(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, maxBuffer: 64 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} in ${cwd} failed: ${err.message}\n${stdout}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** The package folder as `npm pack` would see it in the repository, with this build as dist/. */
function stage(dir: string): string {
  const pkg = join(dir, 'pkg');
  mkdirSync(pkg);
  for (const f of ['package.json', 'README.md', 'LICENSE', 'CHANGELOG.md', 'docs']) cpSync(join(root, f), join(pkg, f), { recursive: true });
  // The whole build, tests and bench included: the files list must leave them out.
  cpSync(built, join(pkg, 'dist'), { recursive: true });
  return pkg;
}

/** The `ts` blocks of docs/embedding.md, each a module of its own. */
function docExamples(): string[] {
  const md = readFileSync(join(root, 'docs/embedding.md'), 'utf8');
  return [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

const CONSUMER = `
import { createHash } from 'node:crypto';
import { Buffer } from 'node:buffer';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FsStore, LocalSource, Repository, restoreDisk, runVmSync, VERSION, type SyncEvent } from 'hamal';

const dir = process.argv[2]!;
const disk = join(dir, 'disk.img');
const data = Buffer.alloc(3 * 1024 * 1024 + 5);
for (let i = 0; i < data.length; i += 7) data[i] = (i * 31) & 0xff;
writeFileSync(disk, data);
const store = await FsStore.open(join(dir, 'repo'), { create: true });
const repo = await Repository.open(store, { create: true, compression: 'zstd', blockSize: 1024 * 1024 });
let blocks = 0;
const onEvent = (e: SyncEvent) => { if (e.type === 'block') blocks++; };
const r = await runVmSync(new LocalSource({ vms: { vm: [{ id: 'd0', path: disk }] } }), 'vm', repo, {}, onEvent);
if (r.failed.length) throw r.failed[0]!.error;
const out = join(dir, 'restored.img');
await restoreDisk(repo, await repo.readManifest('vm', 'd0', 'latest'), out);
await store.close();
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
console.log(JSON.stringify({ version: VERSION, blocks, source: sha(disk), restored: sha(out) }));
`;

test('the packed package installs, type-checks under --strict and syncs under Node and Deno', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hamal-test-pack-'));
  try {
    const packed = JSON.parse(await run('npm', ['pack', '--json', '--pack-destination', dir], stage(dir)))[0];
    const files: string[] = packed.files.map((f: { path: string }) => f.path);
    for (const f of ['LICENSE', 'CHANGELOG.md', 'README.md', 'dist/mod.js', 'dist/mod.d.ts', 'dist/src/cli/hamal.js', 'docs/embedding.md']) assert.ok(files.includes(f), `${f} is packed`);
    assert.equal(files.filter((f) => /^dist\/(tests|bench)\//.test(f)), [], 'no tests or benchmarks packed');

    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    // From the npm cache when it holds everything (CI ran npm ci): no network needed.
    await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', join(dir, packed.filename)], app);
    const examples = docExamples();
    assert.ok(examples.length >= 5, `docs/embedding.md has ${examples.length} ts blocks`);
    examples.forEach((code, i) => writeFileSync(join(app, `example${i}.ts`), code));
    writeFileSync(join(app, 'consumer.ts'), CONSUMER);
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: false,
          typeRoots: [join(root, 'node_modules/@types')], types: ['node'], outDir: 'out',
        },
        include: ['*.ts'],
      }),
    );
    await run(process.execPath, [tsc, '-p', 'tsconfig.json'], app);

    const work = (name: string) => {
      const w = join(dir, name);
      mkdirSync(w);
      return w;
    };
    for (const [runtime, argv] of [
      ['node', [process.execPath, 'out/consumer.js', work('node')]],
      ['deno', [deno, 'run', '--allow-all', 'out/consumer.js', work('deno')]],
    ] as const) {
      const result = JSON.parse((await run(argv[0], argv.slice(1), app)).trim().split('\n').pop()!);
      assert.is(result.restored, result.source, `${runtime}: the restored image equals the source`);
      assert.is(result.blocks, 4, `${runtime}: every block synced`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
