import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { HamalError, IntegrityError } from '../errors.ts';
import type { MasterKey } from './MasterKey.ts';
import { zstdSources, type Zstd } from './Zstd.ts';
import { log } from '../log/Logger.ts';
import { HashWorkers, ThreadJobError } from './HashWorkers.ts';
import { copyBytes } from '../copyBytes.ts';

export type Encryption = 'none' | 'aes-256-gcm';
export type Compression = 'none' | 'zstd';

/**
 * The stored form of a chunk in a format-2 repository (docs/format.md, Transforms):
 *
 *   "HMC" 0x01 | flags | [12-byte nonce] | body | [16-byte GCM tag]
 *
 * flags bit 0: body is zstd-compressed; bit 1: body is AES-256-GCM-encrypted, with the
 * chunk's name as associated data (a chunk copied under another name fails its tag).
 * Compression comes first. Each chunk says what was applied to it, so the repository's
 * options can change without rewriting a chunk.
 */
const MAGIC = Buffer.from([0x48, 0x4d, 0x43, 0x01]);
const ZSTD = 1;
const AES = 2;
/** A block is stored compressed only when that saves at least this fraction of it. */
const MIN_SAVING = 0.03;
/**
 * A block is judged by compressing SAMPLES pieces of SAMPLE bytes spread over it, at
 * zstd's fast level SAMPLE_LEVEL: incompressible data costs the samples, not a whole pass.
 * Measured on an ext4 image of /usr/share (384 blocks, bench/run enc): the first 64 KiB at
 * level 3 missed 9 compressible blocks (283 MiB stored) at 0.24 ms per random block; four
 * 16 KiB pieces at level -1 missed 1 (266 MiB) at 0.17 ms.
 */
const SAMPLE = 16 * 1024;
const SAMPLES = 4;
const SAMPLE_LEVEL = -1;
/** Cipher input per call: small outputs reuse memory, where one 4 MiB call maps fresh pages. */
const SLICE = 64 * 1024;
/** zstd level: 3 is zstd's default, fast enough to keep up with the reads here. */
const LEVEL = 3;
/** Smaller bodies are sealed on the calling thread: a message each way costs more than the cipher. */
const OFF_THREAD_MIN = 256 * 1024;
/** Set once zstd failed on a thread (it would fail every block alike): the main thread runs it from then on. */
let threadZstdOff = false;
function threadZstdFailed(err: Error): void {
  if (!threadZstdOff) log.warn(`zstd on a hash thread failed (${err.message}): chunks are compressed and decompressed on the main thread from now on`);
  threadZstdOff = true;
}
/** The same judgement on the hash threads (HashWorkers.pack). */
const JUDGE = { level: LEVEL, sample: SAMPLE, samples: SAMPLES, sampleLevel: SAMPLE_LEVEL, minSaving: MIN_SAVING };

export class ChunkCodec {
  constructor(
    readonly compression: Compression,
    readonly encryption: Encryption,
    private readonly _key: MasterKey | null,
    private readonly _zstd: Zstd | null,
    /** The largest plaintext a chunk may hold (the repository's block size): bounds decompression. */
    private readonly _maxPlain: number,
  ) {}

  /** Room a stored chunk needs beyond its plaintext: header, nonce and tag. */
  static readonly OVERHEAD = 5 + 12 + 16;

  /** The stored form of `plain` (a document), in one fresh buffer. */
  encode(id: string, plain: Uint8Array): Buffer {
    const { flags, body } = this._compressed(plain);
    const parts = this._sealed(id, flags, body);
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
  }

  /**
   * The stored chunk of an already compressed body, encrypted on this thread, as the parts
   * it is stored as, in order: an unencrypted body is not copied behind its header (on
   * random data in a zstd repository that copy was ~12% of the sync's user CPU).
   */
  private _sealed(id: string, flags: number, body: Uint8Array, out?: Buffer): Uint8Array[] {
    // A frame packed on a hash thread is in `out` behind the header already (putParts leaves it).
    if (!(flags & AES)) return [this._envelope(flags, 0, out).subarray(0, 5), body];
    const dst = this._envelope(flags, body.length, out);
    const cipher = createCipheriv('aes-256-gcm', this._key!.encryptionKey, dst.subarray(5, 17));
    cipher.setAAD(Buffer.from(id, 'latin1'));
    let at = 17;
    for (let o = 0; o < body.length; o += SLICE) at += copyBytes(cipher.update(body.subarray(o, o + SLICE)), dst, at);
    at += copyBytes(cipher.final(), dst, at);
    at += copyBytes(cipher.getAuthTag(), dst, at);
    return [dst.subarray(0, at)];
  }

  /**
   * encode, the same bytes, with zstd and the cipher on hash threads (HashWorkers) when
   * `plain` and `out` are in shared memory (the sync's block buffers): zstd in WebAssembly
   * runs ~190 MiB/s on a core here, so on one thread it bounds any compressible sync.
   * Anything else, or a thread that failed, is encoded on this thread. The stored chunk is
   * the parts concatenated (see _sealed); they may be views of `plain` and `out`.
   */
  async encodeOffThread(id: string, plain: Uint8Array, out: Buffer): Promise<Uint8Array[]> {
    const { flags, body } = (await this._compressedOffThread(plain, out)) ?? this._compressed(plain);
    const shared = body.length >= OFF_THREAD_MIN && body.buffer instanceof SharedArrayBuffer && out.buffer instanceof SharedArrayBuffer;
    const workers = flags & AES && shared && out.length >= ChunkCodec.OVERHEAD + body.length ? HashWorkers.shared() : null;
    if (!workers) return this._sealed(id, flags, body, out);
    const dst = this._envelope(flags, body.length, out);
    try {
      const n = await workers.seal(body, this._key!.encryptionKey, dst.subarray(5, 17), id, dst, 17);
      return [dst.subarray(0, 17 + n)];
    } catch {
      // The thread is gone (and with it any half-written output): again here, with a fresh
      // nonce; a frame packed into `out` was sealed in place, so it is packed again first.
      const again = body.buffer === out.buffer ? this._compressed(plain) : { flags, body };
      return this._sealed(id, again.flags, again.body, out);
    }
  }

  /**
   * _compressed on a hash thread, the frame written into `out` where its body goes (so it
   * is sealed in place); null when not tried there (no zstd, memory not shared, a small
   * block) or when the thread could not (then this thread compresses).
   */
  private async _compressedOffThread(plain: Uint8Array, out: Buffer): Promise<{ flags: number; body: Uint8Array } | null> {
    if (this.compression !== 'zstd' || plain.length < OFF_THREAD_MIN || !(plain.buffer instanceof SharedArrayBuffer) || !(out.buffer instanceof SharedArrayBuffer)) return null;
    const workers = out.length >= ChunkCodec.OVERHEAD + plain.length ? HashWorkers.shared() : null;
    if (!workers || threadZstdOff || !(await zstdSources())) return null;
    const aes = this.encryption === 'aes-256-gcm' ? AES : 0;
    const at = aes ? 17 : 5;
    try {
      const n = await workers.pack(plain, out, at, JUDGE);
      return n < 0 ? { flags: aes, body: plain } : { flags: aes | ZSTD, body: out.subarray(at, at + n) };
    } catch (err) {
      // `plain` is untouched either way; a thread that ended has turned the threads off.
      if (err instanceof ThreadJobError) threadZstdFailed(err);
      return null;
    }
  }

  /** The body a chunk stores before encryption, and its flags (AES set when encrypting). */
  private _compressed(plain: Uint8Array): { flags: number; body: Uint8Array } {
    let flags = this.encryption === 'aes-256-gcm' ? AES : 0;
    let body: Uint8Array = plain;
    if (this.compression === 'zstd' && this._zstd && worthCompressing(this._zstd, plain)) {
      const packed = this._zstd.compress(plain, LEVEL);
      if (packed.length <= plain.length * (1 - MIN_SAVING)) {
        body = packed;
        flags |= ZSTD;
      }
    }
    return { flags, body };
  }

  /**
   * `out` (or a fresh buffer when it is too small for `bodyLength` behind the header) with
   * the header, and a fresh nonce when encrypting.
   */
  private _envelope(flags: number, bodyLength: number, out?: Buffer): Buffer {
    const size = 5 + (flags & AES ? 28 : 0) + bodyLength;
    const dst = out && out.length >= size ? out : Buffer.allocUnsafe(size);
    MAGIC.copy(dst, 0);
    dst[4] = flags;
    if (flags & AES) randomBytes(12).copy(dst, 5);
    return dst;
  }

  /**
   * The plaintext of a stored chunk; fails naming `key` when its envelope, tag or
   * compression is wrong. `maxPlain` bounds what a zstd frame may declare.
   */
  decode(id: string, key: string, stored: Buffer, maxPlain = this._maxPlain): Buffer {
    const bad = badChunk(key);
    const flags = checkEnvelope(stored, bad);
    let body: Buffer = stored.subarray(5);
    if (flags & AES) body = this._openHere(id, body, bad);
    return flags & ZSTD ? this._decompress(body, maxPlain, bad) : body;
  }

  /**
   * decode, with the decryption and decompression on hash threads (HashWorkers) when
   * `stored` is in shared memory (the restore's read buffers); anything else on this
   * thread. A plaintext decompressed there is written into `room` from its start (the
   * buffer `stored` was read into, at least the block size), so no fresh 4 MiB per chunk.
   */
  async decodeOffThread(id: string, key: string, stored: Buffer, maxPlain = this._maxPlain, room?: Buffer): Promise<Buffer> {
    const bad = badChunk(key);
    const flags = checkEnvelope(stored, bad);
    const shared = stored.buffer instanceof SharedArrayBuffer ? HashWorkers.shared() : null;
    const workers = flags & AES && stored.length >= OFF_THREAD_MIN ? shared : null;
    if (!workers && !(flags & ZSTD && shared && room)) return this.decode(id, key, stored, maxPlain);
    let body = stored.subarray(5);
    if (flags & AES) body = workers ? await this._openOffThread(id, key, body, workers, bad) : this._openHere(id, body, bad);
    return flags & ZSTD ? this._unpackOffThread(key, body, maxPlain, bad, shared, room) : body;
  }

  /** The plaintext of an encrypted body (nonce | sealed | tag), decrypted in place on a hash thread. */
  private async _openOffThread(id: string, key: string, body: Buffer, workers: HashWorkers, bad: (why: string) => IntegrityError): Promise<Buffer> {
    this._opening(id, body, bad);
    const sealed = body.subarray(12, body.length - 16);
    let n: number;
    try {
      n = await workers.open(sealed, this._key!.encryptionKey, body.subarray(0, 12), id, body.subarray(body.length - 16));
    } catch {
      // A thread that failed has left `sealed` as it was or garbage: read the chunk again.
      throw new HamalError('HASH_THREAD_FAILED', `chunk ${key}: the thread decrypting it failed; read it again`, { subject: key, retryable: true });
    }
    if (n < 0) throw bad(TAG_MISMATCH);
    return sealed.subarray(0, n);
  }

  /** The plaintext of an encrypted body, decrypted in place on this thread. */
  private _openHere(id: string, body: Buffer, bad: (why: string) => IntegrityError): Buffer {
    const { decipher, sealed, dst } = this._opening(id, body, bad);
    let at = 0;
    try {
      for (let o = 0; o < sealed.length; o += SLICE) at += copyBytes(decipher.update(sealed.subarray(o, o + SLICE)), dst, at);
      at += copyBytes(decipher.final(), dst, at);
    } catch {
      throw bad(TAG_MISMATCH);
    }
    return dst.subarray(0, at);
  }

  /**
   * A zstd frame decompressed on a hash thread into `room` (which holds the frame itself:
   * the thread copies it out first), when it is big enough to be worth a message; else here.
   */
  private async _unpackOffThread(key: string, frame: Buffer, maxPlain: number, bad: (why: string) => IntegrityError, workers: HashWorkers | null, room?: Buffer): Promise<Buffer> {
    const size = frameContentSize(frame);
    if (size === null || size > maxPlain) throw bad(`zstd frame declares ${size ?? 'no'} content size (at most ${maxPlain})`);
    if (!workers || threadZstdOff || !room || room.length < size || size < OFF_THREAD_MIN || !(room.buffer instanceof SharedArrayBuffer) || !(await zstdSources())) {
      return this._decompress(frame, maxPlain, bad);
    }
    let n: number;
    try {
      n = await workers.unpack(frame, room, size);
    } catch (err) {
      // Failed in a live thread: nothing was written, the frame is as it was.
      if (err instanceof ThreadJobError) {
        threadZstdFailed(err);
        return this._decompress(frame, maxPlain, bad);
      }
      // The thread ended, perhaps half-way through writing over the frame: read the chunk again.
      throw new HamalError('HASH_THREAD_FAILED', `chunk ${key}: the thread decompressing it failed; read it again`, { subject: key, retryable: true });
    }
    if (n < 0) throw bad(`zstd: the frame does not decompress (zstd error ${-n})`);
    if (n !== size) throw bad(`zstd: the frame decompresses to ${n} bytes, not the ${size} it declares`);
    return room.subarray(0, n);
  }

  /** The decipher of an encrypted body (nonce | sealed | tag), checked for its size and key. */
  private _opening(id: string, body: Buffer, bad: (why: string) => IntegrityError) {
    if (!this._key) throw bad('encrypted, but the repository has no key');
    if (body.length < 28) throw bad('encrypted body too short');
    const decipher = createDecipheriv('aes-256-gcm', this._key.encryptionKey, body.subarray(0, 12));
    decipher.setAAD(Buffer.from(id, 'latin1'));
    decipher.setAuthTag(body.subarray(body.length - 16));
    // In place, slice by slice: the plaintext is never longer than the ciphertext.
    return { decipher, sealed: body.subarray(12, body.length - 16), dst: body.subarray(12) };
  }

  private _decompress(body: Buffer, maxPlain: number, bad: (why: string) => IntegrityError): Buffer {
    if (!this._zstd) throw bad('compressed, but zstd is not loaded');
    const size = frameContentSize(body);
    if (size === null || size > maxPlain) throw bad(`zstd frame declares ${size ?? 'no'} content size (at most ${maxPlain})`);
    try {
      const plain = this._zstd.decompress(body);
      return Buffer.from(plain.buffer, plain.byteOffset, plain.length);
    } catch (err) {
      throw bad(`zstd: ${(err as Error).message}`);
    }
  }
}

const TAG_MISMATCH = 'authentication tag does not match (altered, truncated or stored under another name)';

/** The error of a stored object that fails to decode, naming it. */
function badChunk(key: string): (why: string) => IntegrityError {
  const chunk = key.startsWith('chunks/');
  return (why) => new IntegrityError(chunk ? 'CHUNK_CORRUPT' : 'DOCUMENT_CORRUPT', `${chunk ? 'chunk' : 'document'} ${key}: ${why}`, { subject: key });
}

/** The flags of a stored chunk's envelope; fails when it has none or unknown transforms. */
function checkEnvelope(stored: Buffer, bad: (why: string) => IntegrityError): number {
  if (stored.length < 5 || !stored.subarray(0, 4).equals(MAGIC)) throw bad('no chunk header (not written by this repository format)');
  const flags = stored[4]!;
  if (flags & ~(ZSTD | AES)) throw bad(`unknown transforms ${flags}`);
  return flags;
}

/** Whether stored bytes carry the chunk envelope (a sealed document does; plain JSON does not). */
export function isEnveloped(stored: Uint8Array): boolean {
  return stored.length >= 5 && MAGIC.equals(stored.subarray(0, 4));
}

function worthCompressing(z: Zstd, plain: Uint8Array): boolean {
  if (plain.length <= SAMPLE * SAMPLES * 2) return true;
  let packed = 0;
  for (let k = 0; k < SAMPLES; k++) {
    const at = Math.floor((k * (plain.length - SAMPLE)) / (SAMPLES - 1));
    packed += z.compress(plain.subarray(at, at + SAMPLE), SAMPLE_LEVEL).length;
  }
  return packed <= SAMPLE * SAMPLES * (1 - MIN_SAVING);
}

/** Frame_Content_Size of a zstd frame header (RFC 8878 3.1.1.1), or null when absent. */
function frameContentSize(b: Buffer): number | null {
  if (b.length < 6 || b.readUInt32LE(0) !== 0xfd2fb528) return null;
  const fhd = b[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictFlag = fhd & 3;
  const at = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag]!;
  const size = fcsFlag === 0 ? (single ? 1 : 0) : [1, 2, 4, 8][fcsFlag]!;
  if (size === 0 || b.length < at + size) return null;
  if (size === 1) return b[at]!;
  if (size === 2) return b.readUInt16LE(at) + 256;
  if (size === 4) return b.readUInt32LE(at);
  const big = b.readBigUInt64LE(at);
  return big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
}
