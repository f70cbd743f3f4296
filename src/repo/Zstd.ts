import { HamalError } from '../errors.ts';

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
