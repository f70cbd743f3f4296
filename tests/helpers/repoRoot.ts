// The repository's top folder, whether the tests run compiled (Node: dist/tests/...) or
// from source (Deno: tests/...).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const fromSource = fileURLToPath(new URL('../..', import.meta.url));
export const REPO_ROOT = existsSync(`${fromSource}/package.json`) ? fromSource : fileURLToPath(new URL('../../..', import.meta.url));
