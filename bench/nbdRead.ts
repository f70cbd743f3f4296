// Reads a whole NBD export with hamal's client: CONNS connections (default 1), IN_FLIGHT
// 4 MiB reads on each (default 4), into reused buffers; prints {"seconds": N}.
// Usage: node dist/bench/nbdRead.js SOCKET
import { NbdClient } from '../src/nbd/NbdClient.ts';

const BS = 4 * 1024 * 1024;
const conns = Number(process.env.CONNS ?? 1);
const inFlight = Number(process.env.IN_FLIGHT ?? 4);
const clients = await Promise.all(Array.from({ length: conns }, () => NbdClient.connect(process.argv[2]!, { maxRequestBytes: BS })));
const size = clients[0]!.size;
const started = Date.now();
let next = 0;
await Promise.all(
  clients.flatMap((client) =>
    Array.from({ length: inFlight }, async () => {
      const buf = Buffer.allocUnsafe(BS);
      for (let off = next++ * BS; off < size; off = next++ * BS) await client.read(off, Math.min(BS, size - off), buf);
    }),
  ),
);
const seconds = (Date.now() - started) / 1000;
await Promise.all(clients.map((c) => c.close()));
console.log(JSON.stringify({ seconds }));
