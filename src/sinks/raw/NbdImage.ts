import { NbdClient } from '../../nbd/NbdClient.ts';
import { HamalError, UsageError } from '../../errors.ts';
import type { RawImageOptions } from './RawImage.ts';

/** Whether `out` names an NBD export rather than a path. */
export function isNbdUrl(out: string): boolean {
  return /^nbd(\+unix)?:\/\//.test(out);
}

/**
 * An NBD export a restore writes, such as a target volume served by qemu-nbd (a qcow2
 * image, an RBD image through qemu's rbd driver): like a block device, written in place,
 * so only with `force` (whole) or `replica` (only blocks that differ from the version it
 * holds). URLs as the NBD URI specification has them: `nbd+unix:///EXPORT?socket=PATH`,
 * `nbd://HOST[:PORT]/EXPORT` (plain TCP: no TLS in hamal's NBD client, keep it on a
 * trusted network or use a socket).
 */
export class NbdImage {
  readonly inPlace = true;
  private constructor(
    readonly path: string,
    private readonly _client: NbdClient,
  ) {}

  static async open(url: string, capacity: number, options: RawImageOptions = {}): Promise<NbdImage> {
    if (!options.force && !options.replica) {
      throw new UsageError('OUTPUT_EXISTS', `${url} is an NBD export: writing it destroys what it holds; use --force to write it, or --from VERSION when it holds that version`, { subject: url });
    }
    const { address, exportName } = parseNbdUrl(url);
    let client: NbdClient;
    try {
      client = await NbdClient.connect(address, { exportName, metaContexts: [] });
    } catch (err) {
      throw new HamalError('OUTPUT_NOT_WRITABLE', `cannot open NBD export ${url}: ${(err as Error).message}`, { subject: url, cause: err });
    }
    const refuse = (why: string) => client.close().then(() => Promise.reject(new UsageError('OUTPUT_NOT_WRITABLE', `NBD export ${url} ${why}`, { subject: url })));
    if (!client.writable) return refuse('is read-only');
    // A replica must be exactly the version's size (a grown disk: resize the target first).
    if (options.replica ? client.size !== capacity : client.size < capacity) {
      return refuse(`holds ${client.size} bytes; the version is ${capacity}${options.replica ? ' (a replica must be its size: resize the target first)' : ''}`);
    }
    return new NbdImage(url, client);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this._client.write(offset, data);
  }

  async commit(): Promise<void> {
    try {
      await this._client.flush();
    } catch (err) {
      throw new HamalError('OUTPUT_WRITE_FAILED', `cannot flush NBD export ${this.path}: ${(err as Error).message}`, { subject: this.path, cause: err });
    } finally {
      await this._client.close();
    }
  }

  async abandon(): Promise<void> {
    await this._client.flush().catch(() => {});
    await this._client.close();
  }
}

function parseNbdUrl(url: string): { address: string | { host: string; port: number }; exportName: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError('BAD_OUTPUT', `${url} is not an NBD URL (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT)`, { subject: url });
  }
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (u.protocol === 'nbd+unix:') {
    const socket = u.searchParams.get('socket');
    if (!socket || u.host) throw new UsageError('BAD_OUTPUT', `${url}: an nbd+unix URL names no host and gives ?socket=PATH`, { subject: url });
    return { address: socket, exportName };
  }
  if (!u.hostname) throw new UsageError('BAD_OUTPUT', `${url}: an nbd URL names a host`, { subject: url });
  return { address: { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 10809) }, exportName };
}
