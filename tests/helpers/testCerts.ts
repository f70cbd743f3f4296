// Throwaway certificates made with openssl: a CA, and a leaf for 127.0.0.1 signed by it
// (as VMCA signs vCenter's and ESXi's), or a self-signed leaf.
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCert {
  cert: string;
  key: string;
  /** PEM files, for programs that take paths. */
  certFile: string;
  keyFile: string;
  /** SHA-256 fingerprint as Node and vSphere print it: `AA:BB:...`. */
  fingerprint256: string;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });

function read(dir: string, name: string): TestCert {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  const cert = readFileSync(certFile, 'utf8');
  return { cert, key: readFileSync(keyFile, 'utf8'), certFile, keyFile, fingerprint256: new X509Certificate(cert).fingerprint256 };
}

/** A self-signed 2048-bit leaf for 127.0.0.1 in `dir`. */
export function selfSigned(dir: string, name = 'self'): TestCert {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)]);
  return read(dir, name);
}

/** A CA and a leaf for 127.0.0.1 it signs, in `dir`. */
export function caSigned(dir: string): { ca: TestCert; leaf: TestCert } {
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=hamal test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.crt')]);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=esxi.test', '-keyout', join(dir, 'leaf.key'), '-out', join(dir, 'leaf.csr')]);
  writeFileSync(join(dir, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1,DNS:esxi.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', join(dir, 'leaf.csr'), '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-days', '2', '-extfile', join(dir, 'leaf.ext'), '-out', join(dir, 'leaf.crt')]);
  return { ca: read(dir, 'ca'), leaf: read(dir, 'leaf') };
}
