#!/usr/bin/env bash
# Stops and removes hamal. Config (/etc/hamal), data (/var/lib/hamal: journals, outbox)
# and logs (/var/log/hamal) stay unless --purge. Repositories are never touched.
# Usage: /opt/hamal/uninstall_hamal.sh [--purge]     DESTDIR as for install.sh.
set -euo pipefail
root=${DESTDIR:-}
opt=$root/opt/hamal
purge=0
[ "${1:-}" = --purge ] && purge=1
if [ -z "$root" ] && command -v docker-compose >/dev/null && [ -f "$opt/docker-compose-hamal.yaml" ]; then
  (cd "$opt" && docker-compose -f docker-compose-hamal.yaml down) || true
fi
[ -z "$root" ] && [ -L /usr/local/bin/hamal ] && rm -f /usr/local/bin/hamal
rm -rf "$opt"
if [ "$purge" = 1 ]; then
  rm -rf "$root/etc/hamal" "$root/var/lib/hamal" "$root/var/log/hamal"
  echo "hamal removed, with its config, data and logs"
else
  echo "hamal removed; kept $root/etc/hamal, $root/var/lib/hamal, $root/var/log/hamal (--purge removes them)"
fi
