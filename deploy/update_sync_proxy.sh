#!/usr/bin/env bash
# Replaces the hamal binary (and image) and keeps config, data and logs. The new binary
# must run and accept the current config before it replaces the old one; when the
# service runs in docker, the restarted container must become healthy within 120 s, or
# the previous version is put back.
# Usage: /opt/hamal/update_sync_proxy.sh NEW_BINARY [--image hamal-image.tar]
# DESTDIR as for install.sh.
set -euo pipefail
root=${DESTDIR:-}
opt=$root/opt/hamal
conf=$root/etc/hamal/hamal.conf
[ $# -ge 1 ] || { echo "usage: $0 NEW_BINARY [--image TAR]" >&2; exit 2; }
new=$1; shift
image=""
[ "${1:-}" = --image ] && image=$2
[ -x "$opt/bin/hamal" ] || { echo "update: hamal is not installed in $opt" >&2; exit 1; }
old_version=$(cat "$opt/version" 2>/dev/null || echo unknown)

install -m 755 "$new" "$opt/bin/hamal.new"
if ! version=$("$opt/bin/hamal.new" --version 2>/dev/null) || ! "$opt/bin/hamal.new" config check --config "$conf" >/dev/null 2>&1; then
  rm -f "$opt/bin/hamal.new"
  echo "update: the new binary failed its self-check (--version, config check); kept $old_version" >&2
  exit 1
fi
cp -p "$opt/bin/hamal" "$opt/bin/hamal.prev"
mv -f "$opt/bin/hamal.new" "$opt/bin/hamal"
echo "$version" > "$opt/version"
echo "HAMAL_VERSION=$version" > "$opt/.env"

rollback() {
  echo "update: $1; rolling back to $old_version" >&2
  mv -f "$opt/bin/hamal.prev" "$opt/bin/hamal"
  echo "$old_version" > "$opt/version"
  echo "HAMAL_VERSION=$old_version" > "$opt/.env"
  if [ "$docker" = 1 ]; then (cd "$opt" && docker-compose -f docker-compose-hamal.yaml up -d); fi
  exit 1
}
docker=0
if [ -z "$root" ] && command -v docker-compose >/dev/null && [ -n "$(cd "$opt" && docker-compose -f docker-compose-hamal.yaml ps -q 2>/dev/null)" ]; then
  docker=1
  [ -n "$image" ] && docker load -i "$image"
  (cd "$opt" && docker-compose -f docker-compose-hamal.yaml up -d) || rollback "the container did not start"
  for _ in $(seq 1 24); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' hamal 2>/dev/null)" = healthy ] && break
    sleep 5
  done
  [ "$(docker inspect -f '{{.State.Health.Status}}' hamal 2>/dev/null)" = healthy ] || rollback "the container is not healthy after 120 s"
fi
echo "hamal updated: $old_version -> $version (the previous binary is $opt/bin/hamal.prev)"
