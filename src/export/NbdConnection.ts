import tls from 'node:tls';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../log/Logger.ts';
import { oneLine } from '../log/oneLine.ts';
import { SocketReader } from './SocketReader.ts';
import type { ExportPiece, NbdExport } from './NbdExport.ts';
import { BlockReadError } from './BlockReadError.ts';
import * as P from '../nbd/NbdProtocol.ts';

/** What a connection needs from its server. */
export interface NbdConnectionSettings {
  /** The export's name; the empty (default) name selects it too. */
  name: string;
  description: string;
  /** With it, TLS is forced: nothing but STARTTLS and ABORT before it (FORCEDTLS). */
  tls: tls.SecureContextOptions | null;
  /** Verify client certificates against the CA in `tls.ca`. */
  requireClientCert: boolean;
  maxPayload: number;
  /** Bytes of requests answered at once: reads in progress plus replies not yet sent. */
  budgetBytes: number;
  handshakeTimeoutMs: number;
  log: Logger;
}

/** Option data longer than this is a client we will not serve (the longest real one is a few KiB). */
const MAX_OPTION_BYTES = 64 * 1024;
/** Option replies queued unread before the next option is read. */
const MAX_UNSENT_OPTION_BYTES = 64 * 1024;
/**
 * Extents in one block status reply (8 bytes each): the reply fits the request's budget.
 * Fewer than the range needs is allowed (proto.md, NBD_CMD_BLOCK_STATUS); clients ask on.
 */
const MAX_EXTENTS = 1024;
/** A read's slice of a cached block smaller than 1/4 of it is copied, not held as a view (which pins the block). */
const VIEW_MIN_FRACTION = 4;
const EMPTY = Buffer.alloc(0);
const META_CONTEXT_ID = 1;
/** Hole bytes of a simple reply (no structured replies), sent from this buffer again and again. */
const ZEROS = Buffer.alloc(1024 * 1024);

interface Request {
  flags: number;
  type: number;
  cookie: Buffer;
  offset: number;
  length: number;
  data?: Buffer;
}

/** A reason to stop reading options or requests: the client broke the protocol. */
class ProtocolViolation extends Error {}

/**
 * One client of the NBD server: the fixed-newstyle handshake (options answered until GO
 * or EXPORT_NAME), then requests answered concurrently and out of order, as the spec
 * allows. Memory is bounded by `budgetBytes`: while that many bytes of requests are being
 * answered, no further request is read (TCP holds the client back).
 */
export class NbdConnection {
  readonly id: number;
  readonly peer: string;
  private _out: Duplex;
  private readonly _reader: SocketReader;
  private readonly _raw: Socket;
  private _structured = false;
  private _metaContext = false;
  private _tls = false;
  private _transmission = false;
  private _closing = false;
  private _outstanding = 0;
  private _budgetWaiter: (() => void) | null = null;
  private readonly _inFlight = new Set<Promise<void>>();
  private readonly _stats = { requests: 0, readBytes: 0, writtenBytes: 0 };
  /** Replies handed to the socket and not yet sent: resolved when the socket closes too. */
  private readonly _unsent = new Set<() => void>();
  private readonly _onOutClose = () => {
    for (const done of this._unsent) done();
    this._unsent.clear();
  };

  constructor(
    socket: Socket,
    id: number,
    private readonly _export: NbdExport,
    private readonly _s: NbdConnectionSettings,
  ) {
    this.id = id;
    this._raw = socket;
    this._out = socket;
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    socket.setNoDelay?.(true);
    this._reader = new SocketReader(socket);
    // Write errors (a client gone) end the connection through the reader; never thrown.
    socket.on('error', () => undefined);
    socket.on('close', this._onOutClose);
  }

  /** Still in the handshake: no export chosen yet. */
  get negotiating(): boolean {
    return !this._transmission && !this._closing;
  }

  /** Serves the client until it leaves, breaks the protocol or the server closes; never rejects. */
  async run(): Promise<void> {
    const log = this._s.log;
    log.verbose(`connection ${this.id} from ${this.peer} opened`);
    const timer = setTimeout(() => this._violation(`no export chosen within ${this._s.handshakeTimeoutMs / 1000} s`), this._s.handshakeTimeoutMs);
    try {
      const go = await this._handshake().finally(() => clearTimeout(timer));
      if (go) {
        this._transmission = true;
        log.verbose(`connection ${this.id}: serving ${this._s.name || 'the default export'}${this._structured ? ', structured replies' : ''}${this._metaContext ? ', base:allocation' : ''}${this._tls ? ', TLS' : ''}`);
        await this._transmit();
      }
    } catch (err) {
      if (err instanceof ProtocolViolation) log.warn(`connection ${this.id} from ${this.peer}: ${err.message}; disconnected`);
      else if (!this._closing) log.verbose(`connection ${this.id} from ${this.peer} ended: ${(err as Error).message}`);
    } finally {
      await Promise.allSettled([...this._inFlight]);
      this._end();
      const st = this._stats;
      log.verbose(`connection ${this.id} from ${this.peer} closed: ${st.requests} requests, ${st.readBytes} bytes read, ${st.writtenBytes} bytes written`);
    }
  }

  /**
   * The server is stopping: a connection still negotiating is dropped; requests read from
   * now on are answered ESHUTDOWN; those in flight finish, then the connection ends.
   */
  shutdown(): void {
    if (this._closing) return;
    this._closing = true;
    if (!this._transmission) return this.destroy();
    void Promise.allSettled([...this._inFlight]).then(() => this._end());
  }

  destroy(): void {
    this._closing = true;
    this._out.destroy();
    this._raw.destroy();
  }

  // ---- handshake

  /** Options until the client chooses the export (true) or leaves (false). */
  private async _handshake(): Promise<boolean> {
    const greeting = Buffer.alloc(18);
    P.NBDMAGIC.copy(greeting, 0);
    P.IHAVEOPT.copy(greeting, 8);
    greeting.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    this._send([greeting]);
    const clientFlags = (await this._reader.read(4)).readUInt32BE(0);
    if (clientFlags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
    if (!(clientFlags & P.FLAG_C_FIXED_NEWSTYLE) && this._s.tls) throw new ProtocolViolation('no fixed newstyle negotiation, so no TLS, which this export requires');
    const noZeroes = (clientFlags & P.FLAG_C_NO_ZEROES) !== 0;
    for (;;) {
      if (this._closing) return false;
      await this._drained();
      const head = await this._reader.read(16);
      if (!head.subarray(0, 8).equals(P.IHAVEOPT)) throw new ProtocolViolation('bad option magic');
      const opt = head.readUInt32BE(8);
      const len = head.readUInt32BE(12);
      if (len > MAX_OPTION_BYTES) throw new ProtocolViolation(`option ${opt} of ${len} bytes (at most ${MAX_OPTION_BYTES})`);
      const data = len ? await this._reader.read(len) : EMPTY;
      const outcome = await this._option(opt, data, noZeroes);
      if (outcome !== 'next') return outcome === 'go';
    }
  }

  /**
   * Waits while more than MAX_UNSENT_OPTION_BYTES of option replies are unsent: a client
   * that sends options and never reads the replies (a 16-byte option earns a 60-byte
   * error before TLS) would otherwise queue them in our memory until the timeout.
   */
  private async _drained(): Promise<void> {
    while (this._out.writableLength > MAX_UNSENT_OPTION_BYTES && !this._out.destroyed) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this._out.off('drain', done);
          this._out.off('close', done);
          resolve();
        };
        this._out.once('drain', done);
        this._out.once('close', done);
      });
    }
    if (this._out.destroyed) throw new Error('connection closed');
  }

  /** Answers one option; 'go' enters transmission, 'leave' ends the connection. */
  private async _option(opt: number, data: Buffer, noZeroes: boolean): Promise<'next' | 'go' | 'leave'> {
    if (opt === P.OPT_ABORT) {
      this._optReply(opt, P.REP_ACK);
      return 'leave';
    }
    if (this._s.tls && !this._tls) {
      if (opt === P.OPT_STARTTLS) return this._startTls(data);
      if (opt === P.OPT_EXPORT_NAME) throw new ProtocolViolation('NBD_OPT_EXPORT_NAME before TLS, which this export requires');
      this._optError(opt, P.REP_ERR_TLS_REQD, 'TLS is required: NBD_OPT_STARTTLS first');
      return 'next';
    }
    switch (opt) {
      case P.OPT_EXPORT_NAME:
        if (!this._knows(data.toString('utf8'))) throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME of an unknown export`);
        this._exportNameReply(noZeroes);
        return 'go';
      case P.OPT_INFO:
      case P.OPT_GO:
        return this._infoOrGo(opt, data) && opt === P.OPT_GO ? 'go' : 'next';
      case P.OPT_LIST:
        if (data.length) return this._invalid(opt, 'NBD_OPT_LIST takes no data');
        this._optReply(opt, P.REP_SERVER, Buffer.concat([u32(Buffer.byteLength(this._s.name)), Buffer.from(this._s.name), Buffer.from(this._s.description)]));
        this._optReply(opt, P.REP_ACK);
        return 'next';
      case P.OPT_STARTTLS:
        if (this._tls) return this._invalid(opt, 'TLS is already on');
        this._optError(opt, P.REP_ERR_POLICY, 'this export is served without TLS (no --tls-cert/--tls-key)');
        return 'next';
      case P.OPT_STRUCTURED_REPLY:
        if (data.length) return this._invalid(opt, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        this._structured = true;
        this._optReply(opt, P.REP_ACK);
        return 'next';
      case P.OPT_LIST_META_CONTEXT:
      case P.OPT_SET_META_CONTEXT:
        this._metaContextOption(opt, data);
        return 'next';
      default:
        this._optError(opt, P.REP_ERR_UNSUP, `option ${opt} is not supported`);
        return 'next';
    }
  }

  private async _startTls(data: Buffer): Promise<'next'> {
    if (data.length) return this._invalid(P.OPT_STARTTLS, 'NBD_OPT_STARTTLS takes no data');
    // The client waits for our ACK before its TLS hello: anything already here is not TLS.
    if (this._reader.buffered) throw new ProtocolViolation('data sent before the TLS handshake');
    this._optReply(P.OPT_STARTTLS, P.REP_ACK);
    this._reader.detach();
    const secure = await this._tlsHandshake();
    secure.on('error', () => undefined);
    secure.on('close', this._onOutClose);
    this._out = secure;
    this._reader.attach(secure);
    // Nothing negotiated before TLS carries over.
    this._tls = true;
    this._structured = false;
    this._metaContext = false;
    return 'next';
  }

  /**
   * The TLS handshake on the raw socket, through a tls.Server: only its connection
   * handler checks a client's certificate (a bare server-side TLSSocket accepts any,
   * self-signed too), and only after it `authorized` says whether our CA signed it.
   */
  private _tlsHandshake(): Promise<tls.TLSSocket> {
    const server = tls.createServer({ ...this._s.tls!, requestCert: this._s.requireClientCert, rejectUnauthorized: false });
    return new Promise<tls.TLSSocket>((resolve, reject) => {
      const closed = () => reject(new ProtocolViolation('closed during the TLS handshake'));
      this._raw.once('close', closed);
      server.once('secureConnection', (secure: tls.TLSSocket) => {
        this._raw.off('close', closed);
        if (this._s.requireClientCert && !secure.authorized) {
          const presented = Object.keys(secure.getPeerCertificate() ?? {}).length > 0;
          secure.destroy();
          reject(new ProtocolViolation(`client certificate refused: ${presented ? secure.authorizationError : 'none presented'}`));
        } else resolve(secure);
      });
      server.once('tlsClientError', (err: Error) => reject(new ProtocolViolation(`TLS handshake failed: ${err.message}`)));
      server.emit('connection', this._raw);
    });
  }

  /** NBD_OPT_INFO / NBD_OPT_GO; true when the export was accepted. */
  private _infoOrGo(opt: number, data: Buffer): boolean {
    const parsed = parseInfoRequest(data);
    if (!parsed) return (this._invalid(opt, 'malformed request'), false);
    if (!this._knows(parsed.name)) {
      this._optError(opt, P.REP_ERR_UNKNOWN, `no export named ${JSON.stringify(parsed.name)}; this server has ${JSON.stringify(this._s.name)} (or the default, "")`);
      return false;
    }
    const exportInfo = Buffer.alloc(12);
    exportInfo.writeUInt16BE(P.INFO_EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(this._export.size), 2);
    exportInfo.writeUInt16BE(this._transmissionFlags(), 10);
    this._optReply(opt, P.REP_INFO, exportInfo);
    // Sent unasked too: the constraints are the spec's defaults, a client may ignore them.
    const sizes = Buffer.alloc(14);
    sizes.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
    sizes.writeUInt32BE(1, 2);
    sizes.writeUInt32BE(Math.min(this._export.preferredBlockSize, this._s.maxPayload), 6);
    sizes.writeUInt32BE(this._s.maxPayload, 10);
    this._optReply(opt, P.REP_INFO, sizes);
    if (parsed.infos.includes(P.INFO_NAME)) this._optReply(opt, P.REP_INFO, Buffer.concat([u16(P.INFO_NAME), Buffer.from(this._s.name)]));
    if (parsed.infos.includes(P.INFO_DESCRIPTION)) this._optReply(opt, P.REP_INFO, Buffer.concat([u16(P.INFO_DESCRIPTION), Buffer.from(this._s.description)]));
    this._optReply(opt, P.REP_ACK);
    return true;
  }

  /** NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: only base:allocation exists. */
  private _metaContextOption(opt: number, data: Buffer): void {
    // SET replaces what was set, also when it fails (proto.md, NBD_OPT_SET_META_CONTEXT).
    if (opt === P.OPT_SET_META_CONTEXT) this._metaContext = false;
    const parsed = parseMetaContextRequest(data);
    if (!parsed) return void this._invalid(opt, 'malformed request');
    if (opt === P.OPT_SET_META_CONTEXT && !this._structured) return void this._invalid(opt, 'structured replies must be negotiated first');
    if (!this._knows(parsed.name)) return void this._optError(opt, P.REP_ERR_UNKNOWN, `no export named ${JSON.stringify(parsed.name)}`);
    const list = opt === P.OPT_LIST_META_CONTEXT;
    // LIST with no query lists everything; `base:` is a wildcard for LIST only.
    const match = (q: string) => q === P.BASE_ALLOCATION || (list && q === 'base:');
    const selected = list && parsed.queries.length === 0 ? true : parsed.queries.some(match);
    if (!list) this._metaContext = selected;
    if (selected) this._optReply(opt, P.REP_META_CONTEXT, Buffer.concat([u32(list ? 0 : META_CONTEXT_ID), Buffer.from(P.BASE_ALLOCATION)]));
    this._optReply(opt, P.REP_ACK);
  }

  private _exportNameReply(noZeroes: boolean): void {
    const reply = Buffer.alloc(noZeroes ? 10 : 134);
    reply.writeBigUInt64BE(BigInt(this._export.size), 0);
    reply.writeUInt16BE(this._transmissionFlags(), 8);
    this._send([reply]);
  }

  private _transmissionFlags(): number {
    let f = P.FLAG_HAS_FLAGS | P.FLAG_SEND_CACHE;
    // Every connection shares one cache and one overlay, but only a read-only export says so (nothing to flush).
    if (this._export.writable) f |= P.FLAG_SEND_FLUSH | P.FLAG_SEND_FUA | P.FLAG_SEND_TRIM | P.FLAG_SEND_WRITE_ZEROES;
    else f |= P.FLAG_READ_ONLY | P.FLAG_CAN_MULTI_CONN;
    return f;
  }

  private _knows(name: string): boolean {
    return name === '' || name === this._s.name;
  }

  private _invalid(opt: number, message: string): 'next' {
    this._optError(opt, P.REP_ERR_INVALID, message);
    return 'next';
  }

  private _optError(opt: number, type: number, message: string): void {
    this._optReply(opt, type, Buffer.from(message.slice(0, P.MAX_STRING)));
  }

  private _optReply(opt: number, type: number, data: Buffer = EMPTY): void {
    const head = Buffer.alloc(20);
    head.writeBigUInt64BE(P.OPT_REPLY_MAGIC, 0);
    head.writeUInt32BE(opt, 8);
    head.writeUInt32BE(type, 12);
    head.writeUInt32BE(data.length, 16);
    this._send(data.length ? [head, data] : [head]);
  }

  // ---- transmission

  private async _transmit(): Promise<void> {
    for (;;) {
      const head = await this._reader.read(P.REQUEST_BYTES);
      if (head.readUInt32BE(0) !== P.REQUEST_MAGIC) throw new ProtocolViolation('bad request magic');
      const offset = head.readBigUInt64BE(16);
      const req: Request = {
        flags: head.readUInt16BE(4),
        type: head.readUInt16BE(6),
        cookie: Buffer.from(head.subarray(8, 16)),
        // Past 2^53 is past any export: the range check refuses it.
        offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset),
        length: head.readUInt32BE(24),
      };
      this._stats.requests++;
      if (req.type === P.CMD_DISC) return;
      const cost = this._costOf(req);
      await this._acquire(cost);
      if (req.type === P.CMD_WRITE) {
        const ok = req.length <= this._s.maxPayload && this._export.writable;
        if (ok) req.data = await this._reader.read(req.length);
        else await this._reader.skip(req.length);
      }
      const p = this._answer(req).finally(() => this._release(cost));
      this._inFlight.add(p);
      void p.finally(() => this._inFlight.delete(p));
    }
  }

  /**
   * Budget a request takes while answered: its payload either way, at least 4 KiB
   * (headers), 8 KiB for block status (MAX_EXTENTS). A read holds at most 4x its payload
   * (unpinned).
   */
  private _costOf(req: Request): number {
    const payload = req.type === P.CMD_READ || req.type === P.CMD_WRITE ? Math.min(req.length, this._s.maxPayload) : 0;
    return Math.max(payload, req.type === P.CMD_BLOCK_STATUS ? 8 + 8 * MAX_EXTENTS : 4096);
  }

  private async _acquire(cost: number): Promise<void> {
    while (this._outstanding > 0 && this._outstanding + cost > this._s.budgetBytes) {
      await new Promise<void>((resolve) => (this._budgetWaiter = resolve));
    }
    this._outstanding += cost;
  }

  private _release(cost: number): void {
    this._outstanding -= cost;
    const w = this._budgetWaiter;
    this._budgetWaiter = null;
    w?.();
  }

  /** One request, answered; resolves once the reply is handed to the socket and sent (or the socket is gone). */
  private async _answer(req: Request): Promise<void> {
    const refused = this._check(req);
    if (refused) return this._replyError(req, refused[0], refused[1]);
    try {
      switch (req.type) {
        case P.CMD_READ:
          return await this._read(req);
        case P.CMD_BLOCK_STATUS:
          return this._blockStatus(req);
        case P.CMD_CACHE:
          await this._export.cache(req.offset, req.length);
          break;
        case P.CMD_WRITE:
          await this._export.write(req.offset, req.data!);
          this._stats.writtenBytes += req.length;
          break;
        case P.CMD_WRITE_ZEROES:
          await this._export.writeZeroes(req.offset, req.length);
          break;
        case P.CMD_TRIM:
          await this._export.trim(req.offset, req.length);
          break;
        case P.CMD_FLUSH:
          await this._export.flush();
          break;
      }
      if (req.flags & P.CMD_FLAG_FUA && (req.type === P.CMD_WRITE || req.type === P.CMD_WRITE_ZEROES)) await this._export.flush();
      await this._replySimple(req, 0);
    } catch (err) {
      await this._replyFailure(req, err);
    }
  }

  /** The error a request gets before any work (its errno and why), or null. */
  private _check(req: Request): [number, string] | null {
    const what = `command ${req.type} at ${req.offset} (+${req.length})`;
    if (this._closing) return [P.ESHUTDOWN, 'the server is shutting down'];
    const writes = [P.CMD_WRITE, P.CMD_WRITE_ZEROES, P.CMD_TRIM, P.CMD_FLUSH];
    const known = [P.CMD_READ, P.CMD_CACHE, P.CMD_BLOCK_STATUS, ...writes];
    if (!known.includes(req.type)) return [P.EINVAL, `unknown command ${req.type}`];
    if (req.flags & ~this._allowedFlags(req.type)) return [P.EINVAL, `${what}: flags 0x${req.flags.toString(16)} not allowed`];
    if (writes.includes(req.type) && !this._export.writable) return [P.EPERM, 'the export is read-only (serve it with --writable --overlay FILE to write)'];
    if (req.type === P.CMD_FLUSH) return req.offset || req.length ? [P.EINVAL, 'flush with an offset or length'] : null;
    if ((req.type === P.CMD_READ || req.type === P.CMD_WRITE) && req.length > this._s.maxPayload) return [P.EINVAL, `${what}: longer than the maximum payload of ${this._s.maxPayload} bytes`];
    if (req.type === P.CMD_BLOCK_STATUS && !this._metaContext) return [P.EINVAL, 'block status without base:allocation negotiated (NBD_OPT_SET_META_CONTEXT)'];
    if (req.type === P.CMD_BLOCK_STATUS && req.length === 0) return [P.EINVAL, 'block status of 0 bytes'];
    if (req.offset + req.length > this._export.size) {
      const past = `${what}: past the end of the export (${this._export.size} bytes)`;
      return [req.type === P.CMD_WRITE || req.type === P.CMD_WRITE_ZEROES ? P.ENOSPC : P.EINVAL, past];
    }
    return null;
  }

  private _allowedFlags(type: number): number {
    const fua = this._export.writable ? P.CMD_FLAG_FUA : 0;
    if (type === P.CMD_BLOCK_STATUS) return fua | P.CMD_FLAG_REQ_ONE;
    if (type === P.CMD_WRITE_ZEROES) return fua | P.CMD_FLAG_NO_HOLE;
    return fua;
  }

  private async _read(req: Request): Promise<void> {
    let pieces: ExportPiece[];
    try {
      pieces = req.length ? await this._export.read(req.offset, req.length) : [];
    } catch (err) {
      return this._replyFailure(req, err);
    }
    this._stats.readBytes += req.length;
    if (!this._structured) {
      const bufs = [simpleHeader(0, req.cookie)];
      for (const p of pieces) {
        if (p.data) bufs.push(unpinned(p.data));
        else for (let at = 0; at < p.length; at += ZEROS.length) bufs.push(ZEROS.subarray(0, Math.min(ZEROS.length, p.length - at)));
      }
      return this._sendAndWait(bufs);
    }
    if (pieces.length === 0) return this._sendAndWait([chunkHeader(P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, req.cookie, 0)]);
    const bufs: Buffer[] = [];
    pieces.forEach((p, k) => {
      const flags = k === pieces.length - 1 ? P.REPLY_FLAG_DONE : 0;
      if (p.data) {
        bufs.push(chunkHeader(flags, P.REPLY_TYPE_OFFSET_DATA, req.cookie, 8 + p.length), u64(p.offset), unpinned(p.data));
      } else {
        // A hole is at most the request's length, itself at most maxPayload: it fits 32 bits.
        bufs.push(chunkHeader(flags, P.REPLY_TYPE_OFFSET_HOLE, req.cookie, 12), u64(p.offset), u32(p.length));
      }
    });
    return this._sendAndWait(bufs);
  }

  private _blockStatus(req: Request): Promise<void> {
    let extents = this._export.extents(req.offset, req.length);
    extents = extents.slice(0, req.flags & P.CMD_FLAG_REQ_ONE ? 1 : MAX_EXTENTS);
    const body = Buffer.alloc(4 + 8 * extents.length);
    body.writeUInt32BE(META_CONTEXT_ID, 0);
    extents.forEach((e, k) => {
      body.writeUInt32BE(e.length, 4 + 8 * k);
      body.writeUInt32BE(e.hole ? P.STATE_HOLE | P.STATE_ZERO : 0, 8 + 8 * k);
    });
    return this._sendAndWait([chunkHeader(P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, req.cookie, body.length), body]);
  }

  /** A failed request: EIO (ENOSPC for a full disk), at the failing block's offset when known. */
  private _replyFailure(req: Request, err: unknown): Promise<void> {
    const code = (err as NodeJS.ErrnoException).code ?? ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    const errno = code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG' ? P.ENOSPC : P.EIO;
    const message = (err as Error).message ?? String(err);
    this._s.log.verbose(`connection ${this.id}: command ${req.type} at ${req.offset} (+${req.length}) failed: ${message}`);
    const at = err instanceof BlockReadError ? Math.max(err.offset, req.offset) : undefined;
    return this._replyError(req, errno, message, at !== undefined && at < req.offset + req.length ? at : undefined);
  }

  private _replyError(req: Request, errno: number, message: string, offset?: number): Promise<void> {
    if (!this._structured) return this._replySimple(req, errno);
    const text = Buffer.from(this._s.log.redact(oneLine(message)).slice(0, 1024));
    const withOffset = offset !== undefined;
    const body = Buffer.alloc(6 + text.length + (withOffset ? 8 : 0));
    body.writeUInt32BE(errno, 0);
    body.writeUInt16BE(text.length, 4);
    text.copy(body, 6);
    if (withOffset) body.writeBigUInt64BE(BigInt(offset), 6 + text.length);
    const type = withOffset ? P.REPLY_TYPE_ERROR_OFFSET : P.REPLY_TYPE_ERROR;
    return this._sendAndWait([chunkHeader(P.REPLY_FLAG_DONE, type, req.cookie, body.length), body]);
  }

  private _replySimple(req: Request, errno: number): Promise<void> {
    return this._sendAndWait([simpleHeader(errno, req.cookie)]);
  }

  // ---- output

  private _send(bufs: Buffer[]): void {
    if (this._out.destroyed) return;
    this._out.cork();
    for (const b of bufs) this._out.write(b);
    this._out.uncork();
  }

  /** Resolves once the last buffer left for the socket (its budget is free again), or the socket is gone. */
  private _sendAndWait(bufs: Buffer[]): Promise<void> {
    if (this._out.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this._unsent.delete(done);
        resolve();
      };
      this._unsent.add(done);
      this._out.cork();
      bufs.forEach((b, k) => (k === bufs.length - 1 ? this._out.write(b, done) : this._out.write(b)));
      this._out.uncork();
    });
  }

  private _violation(message: string): void {
    this._s.log.warn(`connection ${this.id} from ${this.peer}: ${message}; disconnected`);
    this.destroy();
  }

  private _end(): void {
    this._reader.close();
    if (!this._out.destroyed) this._out.end();
    // A client that never reads its last replies must not hold the connection open.
    setTimeout(() => this.destroy(), 5000).unref();
  }
}

function parseInfoRequest(data: Buffer): { name: string; infos: number[] } | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6 || nameLen > P.MAX_STRING) return null;
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * n) return null;
  const infos: number[] = [];
  for (let k = 0; k < n; k++) infos.push(data.readUInt16BE(6 + nameLen + 2 * k));
  return { name: data.toString('utf8', 4, 4 + nameLen), infos };
}

function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } | null {
  if (data.length < 8) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8 || nameLen > P.MAX_STRING) return null;
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt32BE(4 + nameLen);
  const queries: string[] = [];
  let at = 8 + nameLen;
  for (let k = 0; k < count; k++) {
    if (at + 4 > data.length) return null;
    const len = data.readUInt32BE(at);
    if (len > data.length - at - 4) return null;
    queries.push(data.toString('utf8', at + 4, at + 4 + len));
    at += 4 + len;
  }
  return at === data.length ? { name, queries } : null;
}

/**
 * A reply's view of a cached block, or a copy when the view is much smaller than the
 * block: an unread reply holds its buffers, and 1-byte reads at many blocks would hold
 * whole blocks each while the budget counts 4 KiB (found by review: 1000 MiB held for 1 MiB
 * of budget).
 */
function unpinned(data: Buffer): Buffer {
  return data.length * VIEW_MIN_FRACTION < data.buffer.byteLength ? Buffer.from(data) : data;
}

function simpleHeader(errno: number, cookie: Buffer): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  cookie.copy(b, 8);
  return b;
}

function chunkHeader(flags: number, type: number, cookie: Buffer, length: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(P.STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n, 0);
  return b;
};
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
};
const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
};
