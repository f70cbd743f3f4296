// A deliberately minimal NBD client over a raw Unix socket, for what real clients never
// send: garbage, oversized options, out-of-range and unknown requests. Simple replies only.
import net from 'node:net';
import tls from 'node:tls';

export class RawNbd {
  private readonly _chunks: Buffer[] = [];
  private _buffered = 0;
  private _wake: (() => void) | null = null;
  closed = false;
  readonly socket: net.Socket;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      this._chunks.push(c);
      this._buffered += c.length;
      this._wake?.();
    });
    const end = () => {
      this.closed = true;
      this._wake?.();
    };
    socket.on('close', end);
    socket.on('error', end);
  }

  static connect(path: string): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ path }, () => resolve(new RawNbd(s)));
      s.once('error', reject);
    });
  }

  static connectTcp(host: string, port: number): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port }, () => resolve(new RawNbd(s)));
      s.once('error', reject);
    });
  }

  /**
   * NBD_OPT_STARTTLS, then TLS on the same socket with `options` (a client certificate of
   * our choosing, the CA it trusts): a client over TLS, or null when refused.
   */
  async startTls(options: tls.ConnectionOptions): Promise<RawNbd | null> {
    this.option(5);
    const r = await this.optionReply();
    if (!r || r.type !== 1) return null;
    const socket = this.socket as net.Socket;
    socket.removeAllListeners('data');
    return new Promise((resolve) => {
      const secure = tls.connect({ ...options, socket }, () => resolve(new RawNbd(secure)));
      secure.once('error', () => resolve(null));
    });
  }

  send(...parts: Buffer[]): void {
    if (!this.closed) this.socket.write(Buffer.concat(parts));
  }

  /** Exactly n bytes, or null when the server closed first (or nothing came in `ms`). */
  async read(n: number, ms = 5000): Promise<Buffer | null> {
    const end = Date.now() + ms;
    while (this._buffered < n) {
      if (this.closed || Date.now() > end) return null;
      await new Promise<void>((r) => {
        this._wake = r;
        setTimeout(r, 50);
      });
    }
    const all = Buffer.concat(this._chunks);
    this._chunks.length = 0;
    this._chunks.push(all.subarray(n));
    this._buffered -= n;
    return all.subarray(0, n);
  }

  /** Resolves true once the server has closed the connection (within `ms`). */
  async closedByServer(ms = 5000): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  /** The greeting, then fixed-newstyle client flags. */
  async greet(clientFlags = 1): Promise<void> {
    const g = await this.read(18);
    if (!g || g.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT') throw new Error('no NBD greeting');
    this.send(u32(clientFlags));
  }

  option(opt: number, data: Buffer = Buffer.alloc(0), length = data.length): void {
    this.send(Buffer.from('IHAVEOPT'), u32(opt), u32(length), data);
  }

  /** One option reply: its type and data. */
  async optionReply(): Promise<{ opt: number; type: number; data: Buffer } | null> {
    const h = await this.read(20);
    if (!h) return null;
    const data = (await this.read(h.readUInt32BE(16))) ?? Buffer.alloc(0);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** NBD_OPT_GO for the default export; the transmission flags, or null if refused. */
  async go(): Promise<number | null> {
    this.option(7, Buffer.concat([u32(0), u16(0)]));
    for (;;) {
      const r = await this.optionReply();
      if (!r) return null;
      if (r.type === 1) return this._flags ?? null;
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) this._flags = r.data.readUInt16BE(10);
      if (r.type >= 2 ** 31) return null;
    }
  }
  private _flags: number | undefined;

  request(type: number, offset: bigint, length: number, cookie: number, flags = 0, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(BigInt(cookie), 8);
    h.writeBigUInt64BE(offset, 16);
    h.writeUInt32BE(length, 24);
    this.send(h, payload ?? Buffer.alloc(0));
  }

  /** A simple reply: error and cookie (a read's data follows; read it with read()). */
  async simpleReply(): Promise<{ error: number; cookie: number } | null> {
    const h = await this.read(16);
    if (!h || h.readUInt32BE(0) !== 0x67446698) return null;
    return { error: h.readUInt32BE(4), cookie: Number(h.readBigUInt64BE(8)) };
  }

  close(): void {
    this.socket.destroy();
  }
}

export const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n, 0);
  return b;
};
export const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
};
