# Writes to an RBD image at chosen offsets (tests only), through Debian's python3-rbd:
#   /usr/bin/python3 rbd-write.py CONF CLIENT KEYRING POOL IMAGE OPS_JSON
# OPS_JSON: [["w", offset, hex_seed, length], ["d", offset, length], ...]; "w" writes
# length bytes of a sha256-chained pattern from the seed, "d" discards.
import hashlib, json, sys
import rados, rbd

conf, client, keyring, pool, image, ops = sys.argv[1:7]
cluster = rados.Rados(conffile=conf, name=client, conf={"keyring": keyring})
cluster.connect()
try:
    io = cluster.open_ioctx(pool)
    img = rbd.Image(io, image)
    for op in json.loads(ops):
        if op[0] == "w":
            _, offset, seed, length = op
            out, block = bytearray(), hashlib.sha256(seed.encode()).digest()
            while len(out) < length:
                out += block
                block = hashlib.sha256(block).digest()
            img.write(bytes(out[:length]), offset)
        elif op[0] == "d":
            img.discard(op[1], op[2])
    img.close()
    io.close()
finally:
    cluster.shutdown()
