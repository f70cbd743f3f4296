// Entry of the single executable (Node SEA): the CLI without top-level await, which a
// CommonJS bundle cannot hold. Node puts the executable in argv[0] and argv[1].
import { main } from '../dist/src/cli/main.js';

main(process.argv.slice(2)).then((code) => (process.exitCode = code));
