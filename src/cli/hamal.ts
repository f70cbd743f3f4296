#!/usr/bin/env node
// The `hamal` executable: run the CLI, exit with its code.
import { main } from './main.ts';

process.exitCode = await main(process.argv.slice(2));
