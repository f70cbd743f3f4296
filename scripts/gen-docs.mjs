// Writes the generated docs from the built sources: npm run docs
import { writeFileSync } from 'node:fs';
import { renderConfigDoc } from '../dist/src/config/configDoc.js';
import { TASK_SCHEMA } from '../dist/src/tasks/taskSchema.js';

writeFileSync(new URL('../docs/configuration.md', import.meta.url), renderConfigDoc());
writeFileSync(new URL('../docs/task.schema.json', import.meta.url), JSON.stringify(TASK_SCHEMA, null, 2) + '\n');
console.log('wrote docs/configuration.md and docs/task.schema.json');
