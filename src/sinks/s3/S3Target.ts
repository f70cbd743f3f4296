import { UsageError } from '../../errors.ts';

/** Where an S3 repository is and how to reach it; see docs/configuration.md, [s3]. */
export interface S3Target {
  bucket: string;
  /** Key prefix of the repository, '' or ending in '/'. */
  prefix: string;
  endpoint?: string;
  region: string;
  forcePathStyle: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

/** The [s3] section of hamal.conf, as loaded. */
export interface S3Config {
  endpoint: string;
  region: string;
  /** auto, true or false */
  path_style: string;
  access_key_id: string;
  secret_access_key: string;
  session_token: string;
}

const URL_KEYS = new Set(['endpoint', 'region', 'path_style']);

/**
 * Resolves `s3://bucket/prefix?endpoint=...&region=...&path_style=true`: each setting from
 * the URL, else [s3] of hamal.conf, else the environment (AWS_ENDPOINT_URL, AWS_REGION).
 * Credentials never come from the URL: [s3] keys, else the SDK's default chain (AWS_*
 * variables, shared files). Errors never repeat the URL, which could carry a secret.
 */
export function parseS3Target(url: string, config?: Partial<S3Config>, env: NodeJS.ProcessEnv = process.env): S3Target {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError('BAD_TARGET', 'S3 target is not a valid URL: use s3://bucket/prefix', { subject: 'target' });
  }
  if (u.protocol !== 's3:') throw new UsageError('BAD_TARGET', 'S3 target must start with s3://', { subject: 'target' });
  if (u.username || u.password) {
    throw new UsageError('BAD_TARGET', 'credentials in an s3:// URL are refused: put them in [s3] of hamal.conf or AWS_* variables', {
      subject: 'target',
    });
  }
  const bucket = u.hostname;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new UsageError('BAD_TARGET', `S3 bucket name ${JSON.stringify(bucket)} is not valid`, { subject: 'bucket' });
  }
  for (const k of u.searchParams.keys()) {
    if (!URL_KEYS.has(k)) throw new UsageError('BAD_TARGET', `unknown S3 target parameter ${k} (known: ${[...URL_KEYS].join(', ')})`, { subject: k });
  }
  let prefix = decodeURIComponent(u.pathname.replace(/^\/+/, ''));
  if (prefix && !prefix.endsWith('/')) prefix += '/';
  const q = (k: string) => u.searchParams.get(k) ?? undefined;
  const endpoint = q('endpoint') ?? (config?.endpoint || undefined) ?? (env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined);
  if (endpoint !== undefined && !/^https?:\/\/[^/]+/.test(endpoint)) {
    throw new UsageError('BAD_TARGET', `S3 endpoint ${JSON.stringify(endpoint.replace(/\/\/[^@/]*@/, '//***@'))} must be an http:// or https:// URL`, { subject: 'endpoint' });
  }
  const region = q('region') ?? (config?.region || undefined) ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1';
  const pathStyleText = q('path_style');
  if (pathStyleText !== undefined && !['true', 'false'].includes(pathStyleText)) {
    throw new UsageError('BAD_TARGET', 'S3 target parameter path_style must be true or false', { subject: 'path_style' });
  }
  // A custom endpoint (RGW, MinIO) usually wants path-style addressing.
  const configured = config?.path_style && config.path_style !== 'auto' ? config.path_style : undefined;
  const forcePathStyle = (pathStyleText ?? configured) !== undefined ? (pathStyleText ?? configured) === 'true' : endpoint !== undefined;
  const credentials =
    config?.access_key_id && config.secret_access_key
      ? { accessKeyId: config.access_key_id, secretAccessKey: config.secret_access_key, ...(config.session_token ? { sessionToken: config.session_token } : {}) }
      : undefined;
  return { bucket, prefix, endpoint, region, forcePathStyle, credentials };
}
