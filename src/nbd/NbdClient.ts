import net from 'node:net';
import { HamalError } from '../errors.ts';
import * as P from './NbdProtocol.ts';
import { copyBytes } from '../copyBytes.ts';

export interface NbdClientOptions {
  /** Export name. @default '' */
  exportName?: string;
  /**
   * Largest single read request; longer reads are split (the seed's `max_read_blocks` x
   * 512 bytes for VMware). Servers refuse requests past their maximum (nbdkit: 64 MiB).
   * @default 4 MiB
   */
  maxRequestBytes?: number;
  /**
   * Metadata contexts asked for (NBD_OPT_SET_META_CONTEXT), when the server offers
   * structured replies: `base:allocation` (holes), `qemu:dirty-bitmap:NAME` (QEMU's dirty
   * blocks, flag 1 = dirty). @default ['base:allocation']
   */
  metaContexts?: readonly string[];
}

/** An extent as block status reports it. */
export interface NbdExtent {
  offset: number;
  length: number;
  /** base:allocation's hole flag (bit 0); for other contexts, bit 0 of `flags`. */
  hole: boolean;
  /** The context's flags as sent (qemu:dirty-bitmap: 1 = dirty). */
  flags: number;
}

interface Pending {
  kind: 'read' | 'status' | 'write' | 'flush';
  offset: number;
  length: number;
  into?: Buffer;
  extents?: NbdExtent[];
  /** The context a block status asked for: chunks of the others are skipped. */
  contextId?: number;
  /** The [start, end) of each chunk of a structured read so far: they must tile the request. */
  covered?: Array<[number, number]>;
  error?: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * A client of the NBD protocol, the way hamal reads VMware disks (through `nbdkit vddk`)
 * and any NBD export: fixed-newstyle handshake, NBD_OPT_GO, structured replies and
 * `base:allocation` block status when the server offers them, many reads in flight on
 * one connection. Replies are parsed synchronously as bytes arrive, and while a read's
 * payload is due the socket reads straight into the caller's buffer (`onread`): no
 * promise per chunk, no copy.
 */
export class NbdClient {
  /** Export size in bytes. */
  size = 0;
  /** Whether the server agreed to structured replies and base:allocation. */
  blockStatus = false;
  /** Whether the export takes writes (its transmission flags do not say read-only). */
  writable = false;
  /** Whether the export wants NBD_CMD_FLUSH to make writes durable. */
  canFlush = false;
  private readonly _socket: net.Socket;
  private readonly _where: string;
  private readonly _maxRequest: number;
  private readonly _chunks: Buffer[] = [];
  private _buffered = 0;
  private _waiter: (() => void) | null = null;
  private _closed: Error | null = null;
  private _structured = false;
  private _metaContextId = -1;
  /** Negotiated metadata contexts, by name. */
  private readonly _contexts = new Map<string, number>();
  private _nextHandle = 1n;
  private readonly _pending = new Map<bigint, Pending>();
  private readonly _scratch: Buffer;
  /** Handshake: bytes queue for `_take`. Replies: the synchronous parser below. */
  private _replies = false;
  /** What the parser waits for: `n` bytes gathered into `small`, or payload copied into `dest`. */
  private _need: { kind: 'small'; n: number; got: number; then: (b: Buffer) => void } | { kind: 'copy'; dest: Buffer | null; at: number; left: number; then: () => void } | null = null;
  private readonly _small = Buffer.allocUnsafe(64);

  private constructor(socket: net.Socket, where: string, options: NbdClientOptions, scratch: Buffer) {
    this._scratch = scratch;
    this._socket = socket;
    this._where = where;
    this._maxRequest = options.maxRequestBytes ?? 4 * 1024 * 1024;
    // Runtimes without `onread` (see connect) deliver chunks as 'data' events instead.
    socket.on('data', (chunk: Buffer) => this._onBytes(chunk, false));
    const end = (err?: Error) => {
      if (this._closed) return;
      this._closed = err ?? new Error('connection closed');
      const failure = this._fail(`connection to ${where} lost`, this._closed);
      for (const p of this._pending.values()) p.reject(failure);
      this._pending.clear();
      const w = this._waiter;
      this._waiter = null;
      w?.();
    };
    socket.on('error', end);
    socket.on('close', () => end());
  }

  /** Connects to `path` (a Unix socket) or `{ host, port }` and negotiates the export. */
  static async connect(address: string | { host: string; port: number }, options: NbdClientOptions = {}): Promise<NbdClient> {
    const where = typeof address === 'string' ? address : `${address.host}:${address.port}`;
    // `onread`: the kernel reads straight into the caller's buffer while a read reply's
    // payload is due (no copy, no chunk allocation); into a reused scratch buffer otherwise.
    let client: NbdClient | undefined;
    const scratch = Buffer.allocUnsafe(256 * 1024);
    const onread = {
      buffer: () => client?._nextReadBuffer() ?? scratch,
      callback: (n: number, buf: Uint8Array) => {
        client?._onBytes(Buffer.from(buf.buffer, buf.byteOffset, n), buf !== scratch);
        return true;
      },
    };
    const socket =
      typeof address === 'string' ? net.connect({ path: address, onread }) : net.connect({ port: address.port, host: address.host, onread });
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new HamalError('NBD_CONNECT_FAILED', `cannot connect to NBD server ${where}`, { subject: where, cause: err, retryable: true })));
    });
    client = new NbdClient(socket, where, options, scratch);
    try {
      await client._handshake(options.exportName ?? '', options.metaContexts ?? ['base:allocation']);
    } catch (err) {
      socket.destroy();
      throw err;
    }
    client._startReplies();
    return client;
  }

  private _fail(message: string, cause?: unknown): HamalError {
    return new HamalError('NBD_FAILED', message, { subject: this._where, cause, retryable: true });
  }

  private async _take(n: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    await this._takeInto(out, 0, n);
    return out;
  }

  /** Copies the next `n` bytes of the handshake into `dest` at `at`. */
  private async _takeInto(dest: Buffer, at: number, n: number): Promise<void> {
    let done = 0;
    while (done < n) {
      if (this._buffered === 0) {
        if (this._closed) throw this._fail(`connection to ${this._where} closed`, this._closed);
        await new Promise<void>((resolve) => (this._waiter = resolve));
        continue;
      }
      const head = this._chunks[0]!;
      const take = Math.min(head.length, n - done);
      copyBytes(head.subarray(0, take), dest, at + done);
      done += take;
      this._buffered -= take;
      if (take === head.length) this._chunks.shift();
      else this._chunks[0] = head.subarray(take);
    }
  }

  private async _handshake(exportName: string, contexts: readonly string[]): Promise<void> {
    const hello = await this._take(18);
    if (!hello.subarray(0, 8).equals(P.NBDMAGIC) || !hello.subarray(8, 16).equals(P.IHAVEOPT)) {
      throw this._fail(`${this._where} is not a newstyle NBD server`);
    }
    const flags = hello.readUInt16BE(16);
    if (!(flags & P.FLAG_FIXED_NEWSTYLE)) throw this._fail(`${this._where} does not speak fixed newstyle NBD`);
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(P.FLAG_FIXED_NEWSTYLE | (flags & P.FLAG_NO_ZEROES));
    this._socket.write(clientFlags);

    // Structured replies, then the metadata contexts asked for, all optional.
    this._structured = (await this._option(P.OPT_STRUCTURED_REPLY, Buffer.alloc(0))).ok;
    if (this._structured && contexts.length) {
      const name = Buffer.from(exportName);
      const queries = contexts.map((c) => Buffer.from(c));
      const data = Buffer.alloc(4 + name.length + 4 + queries.reduce((n, q) => n + 4 + q.length, 0));
      data.writeUInt32BE(name.length, 0);
      name.copy(data, 4);
      data.writeUInt32BE(queries.length, 4 + name.length);
      let at = 8 + name.length;
      for (const q of queries) {
        data.writeUInt32BE(q.length, at);
        q.copy(data, at + 4);
        at += 4 + q.length;
      }
      const reply = await this._option(P.OPT_SET_META_CONTEXT, data);
      if (reply.ok) for (const r of reply.replies.filter((x) => x.type === P.REP_META_CONTEXT)) this._contexts.set(r.data.subarray(4).toString(), r.data.readUInt32BE(0));
      this._metaContextId = this._contexts.get('base:allocation') ?? -1;
    }

    const name = Buffer.from(exportName);
    const go = Buffer.alloc(4 + name.length + 2 + 2);
    go.writeUInt32BE(name.length, 0);
    name.copy(go, 4);
    go.writeUInt16BE(1, 4 + name.length);
    go.writeUInt16BE(P.INFO_EXPORT, 6 + name.length);
    const reply = await this._option(P.OPT_GO, go);
    if (!reply.ok) throw this._fail(`NBD server ${this._where} refused export ${JSON.stringify(exportName)} (reply ${reply.error})`);
    const info = reply.replies.find((r) => r.type === P.REP_INFO && r.data.readUInt16BE(0) === P.INFO_EXPORT);
    if (!info) throw this._fail(`NBD server ${this._where} sent no export size`);
    this.size = Number(info.data.readBigUInt64BE(2));
    const transmission = info.data.readUInt16BE(10);
    this.writable = (transmission & P.FLAG_READ_ONLY) === 0;
    this.canFlush = (transmission & P.FLAG_SEND_FLUSH) !== 0;
    this.blockStatus = this._metaContextId >= 0;
  }

  /** Sends one option and gathers its replies up to the final one. */
  private async _option(option: number, data: Buffer) {
    const head = Buffer.alloc(16);
    P.IHAVEOPT.copy(head, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(data.length, 12);
    this._socket.write(Buffer.concat([head, data]));
    const replies: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const r = await this._take(20);
      if (r.readBigUInt64BE(0) !== P.OPT_REPLY_MAGIC) throw this._fail(`bad option reply from ${this._where}`);
      const type = r.readUInt32BE(12);
      const body = await this._take(r.readUInt32BE(16));
      if (type & 0x80000000) return { ok: false, error: type, replies };
      if (type === P.REP_ACK) return { ok: true, error: 0, replies };
      replies.push({ type, data: body });
    }
  }

  /**
   * Writes `data` at `offset` (split at the largest request); resolves once the server
   * answered each part. Not durable before `flush`.
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw this._fail(`NBD export on ${this._where} is read-only`);
    if (offset < 0 || offset + data.length > this.size) {
      throw new RangeError(`NBD write of ${data.length} bytes at ${offset} is outside the export (${this.size} bytes)`);
    }
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < data.length; at += this._maxRequest) {
      const n = Math.min(this._maxRequest, data.length - at);
      parts.push(
        new Promise<void>((resolve, reject) => {
          this._send(P.CMD_WRITE, offset + at, n, { kind: 'write', offset: offset + at, length: n, resolve, reject });
          this._socket.write(data.subarray(at, at + n));
        }),
      );
    }
    await settled(parts);
  }

  /** Makes the writes answered so far durable (NBD_CMD_FLUSH), when the export wants it. */
  async flush(): Promise<void> {
    if (!this.canFlush) return;
    await new Promise<void>((resolve, reject) => this._send(P.CMD_FLUSH, 0, 0, { kind: 'flush', offset: 0, length: 0, resolve, reject }));
  }

  private _send(type: number, offset: number, length: number, pending: Pending): void {
    if (this._closed) throw this._fail(`connection to ${this._where} closed`, this._closed);
    const handle = this._nextHandle++;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(P.REQUEST_MAGIC, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(handle, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this._pending.set(handle, pending);
    this._socket.write(req);
  }

  /** Reads exactly `length` bytes at `offset` into `into` (or a new buffer); holes read as zeros. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (offset < 0 || offset + length > this.size) {
      throw new RangeError(`NBD read of ${length} bytes at ${offset} is outside the export (${this.size} bytes)`);
    }
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    const parts: Array<Promise<void>> = [];
    for (let at = 0; at < length; at += this._maxRequest) {
      const n = Math.min(this._maxRequest, length - at);
      parts.push(
        new Promise<void>((resolve, reject) =>
          this._send(P.CMD_READ, offset + at, n, { kind: 'read', offset: offset + at, length: n, into: buf.subarray(at, at + n), resolve, reject }),
        ),
      );
    }
    await settled(parts);
    return buf;
  }

  /** Whether the server agreed to metadata context `name`. */
  hasContext(name: string): boolean {
    return this._contexts.has(name);
  }

  /**
   * Block status of [offset, offset + length) in `context` (default base:allocation: data
   * and holes). The server may answer for less than asked: callers go on from the end.
   */
  async blockStatusOf(offset: number, length: number, context = 'base:allocation'): Promise<NbdExtent[]> {
    const id = this._contexts.get(context);
    if (id === undefined) throw this._fail(`NBD server ${this._where} offers no ${context} block status`);
    const extents: NbdExtent[] = [];
    await new Promise<void>((resolve, reject) =>
      this._send(P.CMD_BLOCK_STATUS, offset, Math.min(length, 0xffffffff), { kind: 'status', offset, length, extents, contextId: id, resolve, reject }),
    );
    return extents;
  }

  /** Every byte from the socket: queued during the handshake, parsed after it. */
  private _onBytes(chunk: Buffer, direct: boolean): void {
    if (!this._replies) {
      // The scratch buffer is reused by the next read: keep a copy.
      this._chunks.push(Buffer.from(chunk));
      this._buffered += chunk.length;
      const w = this._waiter;
      this._waiter = null;
      w?.();
      return;
    }
    try {
      if (direct) {
        // The kernel wrote these bytes where they belong: only account for them.
        const need = this._need as { kind: 'copy'; at: number; left: number; then: () => void };
        need.at += chunk.length;
        need.left -= chunk.length;
        if (need.left === 0) {
          this._need = null;
          need.then();
        }
        return;
      }
      this._parse(chunk);
    } catch (err) {
      this._abort(err);
    }
  }

  /** The buffer the next socket read goes into: the rest of a payload when one is due. */
  private _nextReadBuffer(): Buffer {
    const need = this._need;
    if (need && need.kind === 'copy' && need.dest && need.left >= 16 * 1024) return need.dest.subarray(need.at, need.at + need.left);
    return this._scratch;
  }

  private _parse(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (!this._need) this._expect(4, (b) => this._onMagic(b.readUInt32BE(0)));
      const need = this._need!;
      if (need.kind === 'small') {
        const take = Math.min(need.n - need.got, chunk.length - pos);
        chunk.copy(this._small, need.got, pos, pos + take);
        need.got += take;
        pos += take;
        if (need.got === need.n) {
          this._need = null;
          need.then(this._small.subarray(0, need.n));
        }
      } else {
        const take = Math.min(need.left, chunk.length - pos);
        if (need.dest) copyBytes(chunk.subarray(pos, pos + take), need.dest, need.at);
        need.at += take;
        need.left -= take;
        pos += take;
        if (need.left === 0) {
          this._need = null;
          need.then();
        }
      }
    }
  }

  private _expect(n: number, then: (b: Buffer) => void): void {
    if (n > this._small.length) {
      // Larger fields (block status, error messages) are gathered into their own buffer,
      // within reason: a server cannot make the proxy allocate gigabytes for metadata.
      if (n > 16 * 1024 * 1024) throw this._fail(`NBD server ${this._where} sent a ${n}-byte reply field`);
      const big = Buffer.allocUnsafe(n);
      this._copy(big, 0, n, () => then(big));
      return;
    }
    this._need = { kind: 'small', n, got: 0, then };
  }

  private _copy(dest: Buffer | null, at: number, n: number, then: () => void): void {
    if (n === 0) then();
    else this._need = { kind: 'copy', dest, at, left: n, then };
  }

  private _pendingFor(handle: bigint): Pending {
    const p = this._pending.get(handle);
    if (!p) throw this._fail(`NBD reply for an unknown request from ${this._where}`);
    return p;
  }

  private _onMagic(magic: number): void {
    if (magic === P.SIMPLE_REPLY_MAGIC) this._expect(12, (h) => this._onSimple(h));
    else if (magic === P.STRUCTURED_REPLY_MAGIC) this._expect(16, (h) => this._onStructured(h));
    else throw this._fail(`bad reply magic 0x${magic.toString(16)} from ${this._where}`);
  }

  private _onSimple(h: Buffer): void {
    const error = h.readUInt32BE(0);
    const handle = h.readBigUInt64BE(4);
    const p = this._pendingFor(handle);
    // The request stays pending until its payload is in: a connection lost meanwhile fails it.
    const finish = () => {
      this._pending.delete(handle);
      p.resolve();
    };
    if (error) {
      this._pending.delete(handle);
      p.reject(this._fail(`NBD server ${this._where} failed a ${p.kind} at ${p.offset}: error ${error}`));
    } else if (p.kind === 'read') this._copy(p.into!, 0, p.length, finish);
    else finish();
  }

  /** One structured reply chunk (NBD protocol, "Structured reply chunk message"). */
  private _onStructured(h: Buffer): void {
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    const handle = h.readBigUInt64BE(4);
    const len = h.readUInt32BE(12);
    const p = this._pendingFor(handle);
    const done = () => {
      if (flags & P.REPLY_FLAG_DONE) this._structuredDone(handle, p);
    };
    if (type === P.REPLY_TYPE_OFFSET_DATA) {
      this._expect(8, (b) => {
        const at = this._inside(p, Number(b.readBigUInt64BE(0)) - p.offset, len - 8);
        this._copy(p.into!, at, len - 8, done);
      });
    } else if (type === P.REPLY_TYPE_OFFSET_HOLE) {
      this._expect(12, (b) => {
        const n = b.readUInt32BE(8);
        const at = this._inside(p, Number(b.readBigUInt64BE(0)) - p.offset, n);
        p.into!.fill(0, at, at + n);
        done();
      });
    } else if (type === P.REPLY_TYPE_BLOCK_STATUS) {
      this._expect(len, (b) => {
        this._blockStatus(p, b);
        done();
      });
    } else if (type & 0x8000) {
      this._expect(len, (b) => {
        p.error = b.readUInt32BE(0);
        done();
      });
    } else {
      this._copy(null, 0, type === P.REPLY_TYPE_NONE ? 0 : len, done);
    }
  }

  /** A chunk must lie inside its read: a server that says otherwise is not trusted. Returns `at`. */
  private _inside(p: Pending, at: number, n: number): number {
    if (p.kind !== 'read' || at < 0 || n < 0 || at + n > p.length) throw this._fail(`NBD server ${this._where} sent a chunk outside the request at ${p.offset}`);
    (p.covered ??= []).push([at, at + n]);
    return at;
  }

  /** One chunk per negotiated context, each led by its id: only the one asked for counts. */
  private _blockStatus(p: Pending, b: Buffer): void {
    if (p.contextId !== undefined && b.readUInt32BE(0) !== p.contextId) return;
    let off = p.offset;
    for (let i = 4; i + 8 <= b.length; i += 8) {
      const n = b.readUInt32BE(i);
      const flags = b.readUInt32BE(i + 4);
      p.extents!.push({ offset: off, length: n, hole: (flags & P.STATE_HOLE) !== 0, flags });
      off += n;
    }
  }

  /** The request's last chunk: a read must have been covered exactly once by its chunks. */
  private _structuredDone(handle: bigint, p: Pending): void {
    // Still pending when thrown: the connection's failure rejects it with this reason.
    if (!p.error && p.kind === 'read' && !tiled(p.covered ?? [], p.length)) {
      throw this._fail(`NBD server ${this._where} ended the read of ${p.length} bytes at ${p.offset} with chunks that do not cover it exactly once`);
    }
    this._pending.delete(handle);
    if (p.error) p.reject(this._fail(`NBD server ${this._where} failed a ${p.kind} at ${p.offset}: error ${p.error}`));
    else p.resolve();
  }

  /** After the handshake: bytes already queued go through the parser, then the socket's. */
  private _startReplies(): void {
    this._replies = true;
    const queued = this._chunks.splice(0);
    this._buffered = 0;
    try {
      for (const c of queued) this._parse(c);
    } catch (err) {
      this._abort(err);
    }
  }

  private _abort(err: unknown): void {
    const failure = err instanceof HamalError ? err : this._fail(`connection to ${this._where} failed`, err);
    for (const p of this._pending.values()) p.reject(failure);
    this._pending.clear();
    this._socket.destroy();
  }

  /** Says goodbye (NBD_CMD_DISC) and closes. */
  async close(): Promise<void> {
    if (!this._closed) {
      try {
        this._send(P.CMD_DISC, 0, 0, { kind: 'read', offset: 0, length: 0, resolve: () => {}, reject: () => {} });
      } catch {
        /* already gone */
      }
      this._socket.end();
    }
    this._socket.destroy();
  }
}

/**
 * Waits for every part, then fails with the first failure: parts still answered after one
 * failed would read into (or send from) a buffer its caller has already reused.
 */
async function settled(parts: Array<Promise<void>>): Promise<void> {
  const failed = (await Promise.allSettled(parts)).find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

/**
 * Whether chunks tile [0, length): the NBD protocol (structured replies) has a successful
 * read's chunks cover the request without overlapping; a gap would leave bytes unwritten.
 */
function tiled(chunks: Array<[number, number]>, length: number): boolean {
  chunks.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [start, end] of chunks) {
    if (start !== at) return false;
    at = end;
  }
  return at === length;
}
