import { HamalError } from '../../errors.ts';
import type { VsphereClient } from './VsphereClient.ts';

/**
 * A file on a datastore read over HTTPS, the `https` transport: Range GETs of
 * `/folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with the session cookie.
 * `name` is a datastore path as vSphere writes it: `[datastore] folder/file-flat.vmdk`.
 */
export class DatastoreFile {
  readonly name: string;
  private readonly _client: VsphereClient;
  private readonly _path: string;

  constructor(client: VsphereClient, datacenter: string, name: string) {
    const m = /^\[([^\]]+)\]\s*(.+)$/.exec(name);
    if (!m) throw new HamalError('BAD_DATASTORE_PATH', `${name} is not a datastore path ([datastore] path)`, { subject: name });
    this.name = name;
    this._client = client;
    const file = m[2]!.split('/').map(encodeURIComponent).join('/');
    this._path = `/folder/${file}?dcPath=${encodeURIComponent(datacenter)}&dsName=${encodeURIComponent(m[1]!)}`;
  }

  /** Exactly `length` bytes at `offset`, into `into` when given. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const { status, body } = await this._client.get(this._path, [offset, length], into);
    if (status !== 206 && status !== 200) {
      throw new HamalError('DATASTORE_READ_FAILED', `read of ${this.name} at ${offset} failed: HTTP ${status}`, { subject: this.name, retryable: status >= 500 });
    }
    // A server that ignores Range answers 200 with the whole file: take the part asked for.
    const part = status === 200 ? body.subarray(offset, offset + length) : body;
    if (part.length !== length) {
      throw new HamalError('DATASTORE_READ_FAILED', `read of ${this.name} at ${offset} returned ${part.length} of ${length} bytes`, { subject: this.name, retryable: true });
    }
    return part;
  }
}
