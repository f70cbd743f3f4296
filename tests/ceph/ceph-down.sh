#!/usr/bin/env bash
# Stops the cluster ceph-up.sh started in DIR, in the order rgw, osd, mgr, mon, by PID.
DIR=$(realpath -m "$1")
for name in client.rgw.hamal osd.0 mgr.x mon.a; do
  pid=$(cat "$DIR/run/$name.pid" 2>/dev/null) || continue
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
exit 0
