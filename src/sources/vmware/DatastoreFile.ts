import { HamalError } from '../../errors.ts';
import type { VsphereClient } from './VsphereClient.ts';

/**
 * A file on a datastore read over HTTPS, the `https` transport: Range GETs of
 * `/folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with the session cookie.
 * `name` is a datastore path as vSphere writes it: `[datastore] folder/file-flat.vmdk`.
 */
export class DatastoreFile {
  readonly name: string;
  private readonly _path: string;

  constructor(
    readonly client: VsphereClient,
    readonly datacenter: string,
    name: string,
  ) {
    const m = /^\[([^\]]+)\]\s*(.+)$/.exec(name);
    if (!m) throw new HamalError('BAD_DATASTORE_PATH', `${name} is not a datastore path ([datastore] path)`, { subject: name });
    this.name = name;
    const file = m[2]!.split('/').map(encodeURIComponent).join('/');
    this._path = `/folder/${file}?dcPath=${encodeURIComponent(datacenter)}&dsName=${encodeURIComponent(m[1]!)}`;
  }

  /** The file's first bytes, at most `max` (a descriptor: text of a few hundred bytes). */
  async head(max: number): Promise<Buffer> {
    const { status, body } = await this.client.get(this._path, { range: [0, max + 1], limit: max + 1 });
    // 416: the Range starts past the end, i.e. the file is empty.
    if (status === 416) return Buffer.alloc(0);
    if (status !== 206 && status !== 200) {
      throw new HamalError('DATASTORE_READ_FAILED', `read of ${this.name} failed: HTTP ${status}`, { subject: this.name, retryable: status >= 500 });
    }
    return body;
  }

  /** The datastore path of `file`, relative to this file's folder. */
  sibling(file: string): string {
    const m = /^(\[[^\]]+\]\s*)(.*?)([^/]*)$/.exec(this.name)!;
    return `${m[1]}${m[2]}${file}`;
  }

  /** Exactly `length` bytes at `offset`, into `into` when given. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    const { status, body, contentRange } = await this.client.get(this._path, { range: [offset, length], into: buf });
    const fail = (why: string, retryable: boolean) => new HamalError('DATASTORE_READ_FAILED', `read of ${this.name} at ${offset} ${why}`, { subject: this.name, retryable });
    if (status === 200) throw fail('got the whole file (HTTP 200): the server or a proxy ignores Range requests', false);
    if (status !== 206) throw fail(`failed: HTTP ${status}`, status >= 500);
    // The part sent must be the part asked for, or the disk would be stored shifted.
    const start = /^bytes (\d+)-/.exec(contentRange ?? '')?.[1];
    if (start !== undefined && Number(start) !== offset) throw fail(`was answered with the part at ${start} (Content-Range ${contentRange})`, false);
    if (body.length !== length) throw fail(`returned ${body.length} of ${length} bytes`, true);
    return body;
  }
}
