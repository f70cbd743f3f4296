import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { HamalError } from '../errors.ts';
import { log } from '../log/Logger.ts';

/**
 * zstd through @bokuweb/zstd-wasm: WebAssembly, so it installs offline from the npm
 * registry and loads the same under Node and Deno (native bindings do neither here; Node
 * 20's zlib has no zstd). Loaded on first use only: repositories without compression never
 * pay for it. The single executable carries the .wasm as an asset (scripts/build-binary).
 */
export interface Zstd {
  compress(data: Uint8Array, level: number): Uint8Array;
  decompress(data: Uint8Array): Uint8Array;
}

let loading: Promise<Zstd> | undefined;

export function zstd(): Promise<Zstd> {
  loading ??= (async () => {
    try {
      const lib = await import('@bokuweb/zstd-wasm');
      await lib.init();
      return { compress: lib.compress, decompress: lib.decompress };
    } catch (err) {
      loading = undefined;
      throw new HamalError('ZSTD_UNAVAILABLE', `zstd (@bokuweb/zstd-wasm) cannot be loaded: ${(err as Error).message}`, { cause: err });
    }
  })();
  return loading;
}

/**
 * The same zstd for the hash threads (HashWorkers): the library's own glue code
 * (CommonJS, self-contained) and its WebAssembly, compiled once here. A worker runs from a
 * string, so it cannot import the package itself. The single executable's shim of the
 * package hands both from its assets (`sources`).
 */
export interface ZstdSources {
  glue: string;
  /** A WebAssembly.Module (this build has no DOM types): posted to the threads as it is. */
  wasm: object;
}

const { WebAssembly: wasm } = globalThis as unknown as { WebAssembly: { compile(bytes: Uint8Array): Promise<object> } };

let sources: Promise<ZstdSources | null> | undefined;

/** null where the threads cannot have zstd (Deno: not tried there); compression then stays on the calling thread. */
export function zstdSources(): Promise<ZstdSources | null> {
  sources ??= (async () => {
    if ('Deno' in globalThis) return null;
    try {
      const lib = (await import('@bokuweb/zstd-wasm')) as { sources?: () => { glue: string; wasm: Uint8Array } };
      const raw = lib.sources ? lib.sources() : await packageSources();
      return { glue: raw.glue, wasm: await wasm.compile(raw.wasm) };
    } catch (err) {
      log.warn(`zstd cannot run on the hash threads (${(err as Error).message}): chunks are compressed on the main thread, about one core's worth`);
      return null;
    }
  })();
  return sources;
}

/** zstd.js and zstd.wasm beside the package's CommonJS entry (dist/common/index.node.js). */
async function packageSources(): Promise<{ glue: string; wasm: Uint8Array }> {
  const dir = dirname(createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm'));
  return { glue: await readFile(join(dir, 'zstd.js'), 'utf8'), wasm: await readFile(join(dir, 'zstd.wasm')) };
}
