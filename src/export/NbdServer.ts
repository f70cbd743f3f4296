import net from 'node:net';
import type tls from 'node:tls';
import { log as rootLog, type Logger } from '../log/Logger.ts';
import type { NbdExport } from './NbdExport.ts';
import { NbdConnection, type NbdConnectionSettings } from './NbdConnection.ts';
import { DEFAULT_MAX_PAYLOAD } from '../nbd/NbdProtocol.ts';

export interface NbdServerOptions {
  /** The export's name (NBD_OPT_LIST, NBD_INFO_NAME); clients may also ask for the default export "". */
  name: string;
  /** Shown by `nbdinfo --list`. @default '' */
  description?: string;
  /**
   * TLS credentials (cert, key, and with requireClientCert the ca): with them every client
   * must start TLS (NBD_OPT_STARTTLS) before anything else. null: no TLS.
   * @default null
   */
  tls?: tls.SecureContextOptions | null;
  /** With `tls`: clients must present a certificate `tls.ca` signed. @default false */
  requireClientCert?: boolean;
  /**
   * Largest read or write a client may ask for; longer ones get EINVAL.
   * @default 32 MiB (the spec's default)
   */
  maxPayload?: number;
  /**
   * Clients served at once; one more makes the oldest still negotiating give way, or is
   * disconnected when all are served. Memory: each may hold `connectionBudgetBytes`.
   * @default 16
   */
  maxConnections?: number;
  /**
   * Bytes of requests one connection may have answered at once (reads being fetched,
   * writes received, replies not yet sent): past it no further request is read. Mostly
   * views of cached chunks rather than copies.
   * @default 2 x maxPayload
   */
  connectionBudgetBytes?: number;
  /** A client must choose the export within this. @default 30 s */
  handshakeTimeoutMs?: number;
  log?: Logger;
}

/** Where a server listens. */
export type NbdListenAddress = { path: string } | { host: string; port: number };

/**
 * An NBD server of one export (the fixed newstyle protocol, NetworkBlockDevice/nbd
 * doc/proto.md): many clients at once, each an NbdConnection. A client that breaks the
 * protocol is disconnected; nothing a client sends can end the server.
 */
export class NbdServer {
  private readonly _server: net.Server;
  private readonly _connections = new Set<NbdConnection>();
  private readonly _runs = new Set<Promise<void>>();
  private readonly _settings: NbdConnectionSettings;
  private readonly _maxConnections: number;
  private readonly _log: Logger;
  private _nextId = 1;
  private _closing = false;

  constructor(
    private readonly _export: NbdExport,
    options: NbdServerOptions,
  ) {
    const maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    if (!Number.isSafeInteger(maxPayload) || maxPayload < 4096 || maxPayload > 2 ** 32 - 1) throw new RangeError(`maxPayload must be from 4096 to 2^32-1 bytes, got ${maxPayload}`);
    this._maxConnections = options.maxConnections ?? 16;
    if (!Number.isSafeInteger(this._maxConnections) || this._maxConnections < 1) throw new RangeError(`maxConnections must be at least 1, got ${this._maxConnections}`);
    this._log = options.log ?? rootLog.child('export');
    this._settings = {
      name: options.name,
      description: options.description ?? '',
      tls: options.tls ?? null,
      requireClientCert: options.requireClientCert ?? false,
      maxPayload,
      budgetBytes: options.connectionBudgetBytes ?? 2 * maxPayload,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
      log: this._log,
    };
    this._server = net.createServer((socket) => this._accept(socket));
  }

  /** Clients connected now. */
  get connections(): number {
    return this._connections.size;
  }

  /** Starts listening; resolves with the bound address (a TCP port 0 becomes the port chosen). */
  listen(address: NbdListenAddress): Promise<NbdListenAddress> {
    return new Promise((resolve, reject) => {
      this._server.once('error', reject);
      const done = () => {
        this._server.off('error', reject);
        this._server.on('error', (err) => this._log.error(`NBD listener failed: ${err.message}`));
        const a = this._server.address();
        resolve(typeof a === 'object' && a !== null ? { host: a.address, port: a.port } : address);
      };
      if ('path' in address) this._server.listen(address.path, done);
      else this._server.listen(address.port, address.host, done);
    });
  }

  /**
   * Stops accepting, lets requests in flight finish (later ones get ESHUTDOWN), then ends
   * every connection; those still busy after `graceMs` are cut.
   */
  async close(graceMs = 10_000): Promise<void> {
    if (this._closing) return;
    this._closing = true;
    const closed = new Promise<void>((resolve) => this._server.close(() => resolve()));
    for (const c of this._connections) c.shutdown();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const cut = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        for (const c of this._connections) c.destroy();
        resolve();
      }, graceMs);
    });
    await Promise.race([Promise.allSettled([...this._runs]), cut]);
    clearTimeout(timer);
    await Promise.allSettled([...this._runs]);
    await closed;
  }

  private _accept(socket: net.Socket): void {
    socket.on('error', () => undefined);
    if (this._closing) return void socket.destroy();
    if (this._connections.size >= this._maxConnections) {
      // The oldest client still negotiating gives way: connections that open and never
      // choose an export (for up to the handshake timeout) cannot lock clients out.
      const idle = [...this._connections].find((c) => c.negotiating);
      if (!idle) {
        this._log.warn(`refused a connection from ${socket.remoteAddress ?? 'the unix socket'}: already ${this._connections.size} clients (the most served at once)`);
        return void socket.destroy();
      }
      this._log.warn(`connection ${idle.id} from ${idle.peer} dropped: still negotiating while ${this._connections.size} clients are connected (the most served at once), and another came`);
      this._connections.delete(idle);
      idle.destroy();
    }
    const conn = new NbdConnection(socket, this._nextId++, this._export, this._settings);
    this._connections.add(conn);
    const run = conn.run().finally(() => {
      this._connections.delete(conn);
      this._runs.delete(run);
    });
    this._runs.add(run);
  }
}
