// A sync run in a child process so a test can SIGKILL it: prints one JSON line per
// checkpoint. Arguments: image target libDir blockSize putDelayMs (S3 credentials: AWS_*).
import { LocalSource, Repository, openStore, runVmSync } from '../../mod.ts';
import { SlowStore } from './SlowStore.ts';

const [image, target, libDir, blockSize, delay] = process.argv.slice(2) as [string, string, string, string, string];
const store = new SlowStore(await openStore(target, { create: true }), Number(delay));
const repo = await Repository.open(store, { create: true, blockSize: Number(blockSize) });
const source = new LocalSource({ vms: { vm: [{ id: 'd', path: image }] } });
await runVmSync(source, 'vm', repo, { readers: 1, writers: 1, journalDir: libDir, checkpointSeconds: 0.1 }, (e) => {
  if (e.type === 'checkpoint') process.stdout.write(JSON.stringify(e) + '\n');
});
await store.close();
process.stdout.write('{"type":"finished"}\n');
