import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  paginateListObjectsV2,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { FinalizeHandler, FinalizeHandlerArguments, HandlerExecutionContext, MetadataBearer } from '@smithy/types';
import type { GetOptions, ObjectStore, PutOptions } from '../ObjectStore.ts';
import { HamalError, IntegrityError, NotFoundError } from '../../errors.ts';
import { log } from '../../log/Logger.ts';
import type { S3Target } from './S3Target.ts';

export interface S3StoreOptions {
  /**
   * Connections to the endpoint at once (keep-alive agent). Each in-flight request holds
   * one; past ~8 per radosgw here latency grows faster than throughput.
   * @default 16
   */
  maxSockets?: number;
  /** @default 10 s */
  connectionTimeoutMs?: number;
  /** Longest one request may take, the seed's `default_request_timeout` as ceiling. @default 600 s */
  requestTimeoutMs?: number;
  /** The SDK's retry strategy. @default 'standard' */
  retryMode?: 'standard' | 'adaptive';
  /** Attempts per request, first included. @default 5 */
  maxAttempts?: number;
  /**
   * Objects larger than this go up as multipart uploads (lib-storage Upload) in parts of
   * this size. Memory: queueSize x partSize per large object.
   * @default 8 MiB
   */
  partSize?: number;
  /** Parts of one multipart upload in flight. @default 4 */
  queueSize?: number;
  /** PEM bundle that signs the endpoint's certificate; TLS is always verified. */
  caFile?: string;
}

const MiB = 1024 * 1024;

/**
 * The ObjectStore contract over S3 (AWS, Ceph RGW, MinIO, OSS, OBS). A put is one
 * PutObject signed with the body's SHA-256 (the server checks it: the integrity
 * checksum), or a multipart Upload for large objects, aborted on failure. S3 writes are
 * durable when they succeed, so `flush` has nothing to do.
 */
export class S3Store implements ObjectStore {
  readonly location: string;
  readonly target: S3Target;
  private readonly _client: S3Client;
  private readonly _partSize: number;
  private readonly _queueSize: number;

  private constructor(target: S3Target, options: S3StoreOptions) {
    // package.json pins the SDK at a release that supports Node 20; its notice that later
    // releases will not is for people who upgrade it, not for operators.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.target = target;
    this.location = `s3://${target.bucket}/${target.prefix}${target.endpoint ? ` at ${new URL(target.endpoint).origin}` : ''}`;
    this._partSize = options.partSize ?? 8 * MiB;
    this._queueSize = options.queueSize ?? 4;
    const maxSockets = options.maxSockets ?? 16;
    const ca = options.caFile ? readFileSync(options.caFile) : undefined;
    this._client = new S3Client({
      region: target.region,
      endpoint: target.endpoint,
      forcePathStyle: target.forcePathStyle,
      credentials: target.credentials,
      maxAttempts: options.maxAttempts ?? 5,
      retryMode: options.retryMode ?? 'standard',
      // The body's SHA-256 is signed (x-amz-content-sha256): no second checksum per PUT.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: new NodeHttpHandler({
        httpAgent: new http.Agent({ keepAlive: true, maxSockets }),
        httpsAgent: new https.Agent({ keepAlive: true, maxSockets, ca }),
        connectionTimeout: options.connectionTimeoutMs ?? 10_000,
        requestTimeout: options.requestTimeoutMs ?? 600_000,
      }),
    });
    // Each retry, visible at debug level (the retry middleware numbers the attempts).
    this._client.middlewareStack.addRelativeTo(
      (next: FinalizeHandler<object, MetadataBearer>, context: HandlerExecutionContext) => async (args: FinalizeHandlerArguments<object>) => {
        const header = (args.request as { headers?: Record<string, string> }).headers?.['amz-sdk-request'];
        const attempt = /attempt=(\d+); max=(\d+)/.exec(header ?? '');
        if (attempt && Number(attempt[1]) > 1) {
          log.child('s3').debug(`retry ${attempt[1]} of ${attempt[2]}`, { operation: context.commandName });
        }
        return next(args);
      },
      { relation: 'after', toMiddleware: 'retryMiddleware', name: 'hamalRetryLog', override: true },
    );
  }

  /**
   * Opens the store; checks the bucket is there and the credentials work, with a LIST
   * (a HEAD's errors have no body, so no SignatureDoesNotMatch or NoSuchBucket to report).
   */
  static async open(target: S3Target, options: S3StoreOptions = {}): Promise<S3Store> {
    const store = new S3Store(target, options);
    try {
      await store._client.send(new ListObjectsV2Command({ Bucket: target.bucket, Prefix: target.prefix, MaxKeys: 1 }));
    } catch (err) {
      store._client.destroy();
      throw store._error(err, 'open bucket', target.bucket);
    }
    return store;
  }

  private _key(key: string): string {
    return this.target.prefix + key;
  }

  async put(key: string, body: Uint8Array, options: PutOptions = {}): Promise<void> {
    try {
      if (body.length > this._partSize && !options.ifAbsent) {
        const upload = new Upload({
          client: this._client,
          params: { Bucket: this.target.bucket, Key: this._key(key), Body: body },
          partSize: this._partSize,
          queueSize: this._queueSize,
          leavePartsOnError: false, // aborts the multipart upload on failure
        });
        await upload.done();
        return;
      }
      const cmd = new PutObjectCommand({
        Bucket: this.target.bucket,
        Key: this._key(key),
        Body: body,
        ContentLength: body.length,
        ...(options.ifAbsent ? { IfNoneMatch: '*' } : {}),
      });
      if (options.sha256) {
        const sha = options.sha256;
        cmd.middlewareStack.add(
          (next) => async (args) => {
            (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sha;
            return next(args);
          },
          { step: 'build', name: 'hamalPayloadHash' },
        );
      }
      await this._client.send(cmd);
    } catch (err) {
      throw this._error(err, 'put', key);
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<Buffer> {
    const max = options.maxBytes ?? Infinity;
    const tooLarge = (size: number | string) =>
      new IntegrityError('OBJECT_TOO_LARGE', `object ${key} in ${this.location} holds ${size} bytes, more than the ${max} it can hold`, { subject: key });
    try {
      const out = await this._client.send(new GetObjectCommand({ Bucket: this.target.bucket, Key: this._key(key) }));
      const body = out.Body as unknown as AsyncIterable<Buffer> & { destroy(): void };
      if ((out.ContentLength ?? 0) > max) {
        body.destroy();
        throw tooLarge(out.ContentLength!);
      }
      // Counted as it arrives: a server may send more than it declared.
      const parts: Buffer[] = [];
      let size = 0;
      for await (const part of body) {
        size += part.length;
        if (size > max) {
          body.destroy();
          throw tooLarge(`over ${max}`);
        }
        parts.push(part);
      }
      return parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
    } catch (err) {
      if (err instanceof HamalError) throw err;
      throw this._error(err, 'get', key);
    }
  }

  async head(key: string): Promise<{ size: number } | null> {
    try {
      const out = await this._client.send(new HeadObjectCommand({ Bucket: this.target.bucket, Key: this._key(key) }));
      return { size: out.ContentLength ?? 0 };
    } catch (err) {
      const e = this._error(err, 'head', key);
      if (e instanceof NotFoundError) return null;
      throw e;
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    try {
      const pages = paginateListObjectsV2({ client: this._client, pageSize: 1000 }, { Bucket: this.target.bucket, Prefix: this._key(prefix) });
      for await (const page of pages) {
        for (const o of page.Contents ?? []) if (o.Key) yield o.Key.slice(this.target.prefix.length);
      }
    } catch (err) {
      throw this._error(err, 'list', prefix || '(all)');
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await this._client.send(new DeleteObjectCommand({ Bucket: this.target.bucket, Key: this._key(key) }));
    } catch (err) {
      throw this._error(err, 'delete', key);
    }
  }

  async flush(): Promise<void> {}

  /** Aborts multipart uploads under the prefix started more than `olderThanMs` ago (left by crashes). */
  async sweepStaleUploads(olderThanMs = 24 * 3600_000): Promise<number> {
    let swept = 0;
    try {
      const out = await this._client.send(new ListMultipartUploadsCommand({ Bucket: this.target.bucket, Prefix: this.target.prefix }));
      for (const u of out.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || Date.now() - u.Initiated.getTime() < olderThanMs) continue;
        await this._client.send(new AbortMultipartUploadCommand({ Bucket: this.target.bucket, Key: u.Key, UploadId: u.UploadId }));
        swept++;
      }
    } catch (err) {
      throw this._error(err, 'sweep multipart uploads', this.target.prefix);
    }
    return swept;
  }

  async close(): Promise<void> {
    this._client.destroy();
  }

  /** An SDK error as a HamalError naming the object and what to check; never the secret. */
  private _error(err: unknown, op: string, key: string): HamalError {
    const e = err as { name?: string; $metadata?: { httpStatusCode?: number }; $retryable?: unknown; message?: string };
    const status = e.$metadata?.httpStatusCode;
    const name = e.name ?? 'Error';
    const where = `${op} ${key} in ${this.location}`;
    if (name === 'NoSuchKey' || name === 'NotFound' || (status === 404 && name !== 'NoSuchBucket' && op !== 'open bucket')) {
      return new NotFoundError('OBJECT_NOT_FOUND', `object ${key} not found in ${this.location}`, { subject: key });
    }
    if (name === 'NoSuchBucket' || (op === 'open bucket' && status === 404)) {
      return new HamalError('S3_NO_BUCKET', `bucket ${this.target.bucket} does not exist${this.target.endpoint ? ` at ${new URL(this.target.endpoint).origin}` : ''}: create it first (hamal does not create buckets)`, { subject: this.target.bucket });
    }
    if (['SignatureDoesNotMatch', 'InvalidAccessKeyId', 'AccessDenied', 'Forbidden'].includes(name) || status === 403) {
      return new HamalError(
        'S3_AUTH',
        `S3 refused ${where}: ${name === 'Forbidden' || name === 'Error' ? `HTTP ${status}` : name} (check the access key and secret key in [s3] of hamal.conf or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)`,
        { subject: key },
      );
    }
    if (name === 'PreconditionFailed' || status === 412) {
      return new HamalError('OBJECT_EXISTS', `object ${key} already exists in ${this.location}`, { subject: key });
    }
    return new HamalError('S3_REQUEST_FAILED', `${where} failed: ${name}${status ? ` (HTTP ${status})` : ''}`, {
      subject: key,
      retryable: Boolean(e.$retryable) || (status !== undefined && status >= 500),
      cause: err,
    });
  }
}
