// Serves the OpenStack STAND-IN of the tests for bench/run's RBD rows: one server "bench"
// whose volume VOLUME_ID is volumes/volume-VOLUME_ID. Prints the Keystone URL, then serves
// until killed. Usage: node dist/bench/openstackStandIn.js VOLUME_ID PASSWORD
import { OpenStackStandIn } from '../tests/helpers/OpenStackStandIn.ts';

const [volumeId, password] = process.argv.slice(2);
const os = new OpenStackStandIn({ bench: password! });
await os.start();
os.servers.push({ id: '00000000-0000-4000-8000-000000000001', name: 'bench', image: '', volumes: [{ id: volumeId!, name: 'bench', sizeGb: 1, device: '/dev/vdb' }] });
console.log(`${os.url}/identity/v3`);
