import { promises as fsp } from 'node:fs';
import { UsageError } from '../errors.ts';
import { log } from '../log/Logger.ts';

/**
 * The secret of a task's connection, from exactly one of `password`, `passwordFile` (a
 * file, trailing newline dropped) or `passwordEnv` (a variable). Registered with the
 * logger before it is returned, so it can never reach a log line.
 */
export async function resolveSecret(connection: Record<string, unknown>, where: string): Promise<string> {
  let secret: string | undefined;
  if (typeof connection.password === 'string') secret = connection.password;
  else if (typeof connection.passwordFile === 'string') {
    try {
      secret = (await fsp.readFile(connection.passwordFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      throw new UsageError('SECRET_UNREADABLE', `${where}: cannot read source.connection.passwordFile ${connection.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? err}`, {
        subject: 'source.connection.passwordFile',
      });
    }
  } else if (typeof connection.passwordEnv === 'string') {
    secret = process.env[connection.passwordEnv];
    if (secret === undefined) {
      throw new UsageError('SECRET_MISSING', `${where}: environment variable ${connection.passwordEnv} (source.connection.passwordEnv) is not set`, {
        subject: 'source.connection.passwordEnv',
      });
    }
  }
  if (!secret) throw new UsageError('SECRET_MISSING', `${where}: source.connection has no password`, { subject: 'source.connection' });
  log.addSecret(secret);
  return secret;
}
