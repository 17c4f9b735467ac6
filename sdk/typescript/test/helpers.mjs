// Shared by the tests: where things are.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const sdkDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const repoRoot = path.resolve(sdkDir, '..', '..');
export const schemaDir = path.join(repoRoot, 'schema');
