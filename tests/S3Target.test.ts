import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseS3Target } from '../src/sinks/s3/S3Target.ts';

const config = { endpoint: 'http://conf:7480', region: 'conf-region', path_style: 'auto', access_key_id: 'AKCONF', secret_access_key: 'conf-secret-123', session_token: '' };
const env = { AWS_ENDPOINT_URL: 'http://env:9000', AWS_REGION: 'env-region' };

test('URL parameters win over [s3], which wins over the environment', () => {
  const t = parseS3Target('s3://bkt/a/b?endpoint=http://url:1&region=url-region&path_style=false', config, env);
  assert.equal([t.bucket, t.prefix, t.endpoint, t.region, t.forcePathStyle], ['bkt', 'a/b/', 'http://url:1', 'url-region', false]);
  const c = parseS3Target('s3://bkt/p', config, env);
  assert.equal([c.endpoint, c.region, c.forcePathStyle], ['http://conf:7480', 'conf-region', true]);
  const e = parseS3Target('s3://bkt', { ...config, endpoint: '', region: '' }, env);
  assert.equal([e.prefix, e.endpoint, e.region], ['', 'http://env:9000', 'env-region']);
  const aws = parseS3Target('s3://bkt/x', undefined, {});
  assert.equal([aws.endpoint, aws.region, aws.forcePathStyle, aws.credentials], [undefined, 'us-east-1', false, undefined]);
});

test('credentials come from [s3] (or the default chain), never from the URL', () => {
  assert.equal(parseS3Target('s3://bkt/p', config, env).credentials, { accessKeyId: 'AKCONF', secretAccessKey: 'conf-secret-123' });
  try {
    parseS3Target('s3://AKID:s3cr3t-Pa55word-for-tests@bkt/p', config, env);
    assert.unreachable();
  } catch (err) {
    assert.match((err as Error).message, 'credentials in an s3:// URL are refused');
    assert.not.match((err as Error).message, 's3cr3t');
  }
});

test('bad buckets, parameters and endpoints are named', () => {
  assert.throws(() => parseS3Target('s3://B_ad/p', config, env), /bucket name "b_ad" is not valid|bucket name "B_ad" is not valid/);
  assert.throws(() => parseS3Target('s3://bkt/p?endpont=http://x', config, env), /unknown S3 target parameter endpont/);
  assert.throws(() => parseS3Target('s3://bkt/p?endpoint=ftp://x', config, env), /must be an http:\/\/ or https:\/\/ URL/);
  assert.throws(() => parseS3Target('s3://bkt/p?path_style=yes', config, env), /path_style must be true or false/);
});

test.run();
