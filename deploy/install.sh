#!/usr/bin/env bash
# Installs hamal the seed's way:
#   /opt/hamal/{bin/hamal, docker-compose-hamal.yaml, .env, version, changelog.txt,
#               update_sync_proxy.sh, uninstall_hamal.sh}
#   /etc/hamal/hamal.conf (only when absent) and /etc/hamal/tasks.d/
#   /var/lib/hamal, /var/log/hamal
# Usage: install.sh [--binary PATH] [--image hamal-image.tar] [--start]
#   --binary  the single executable (default: ./hamal beside this script, else build/hamal)
#   --image   a `docker save` of the hamal image, loaded with `docker load`
#   --start   docker-compose up -d once installed
# DESTDIR=/some/root installs under that root instead of / (packaging, tests).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
binary=""; image=""; start=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --start) start=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  for b in "$here/hamal" "$here/../build/hamal"; do [ -x "$b" ] && binary=$b && break; done
fi
[ -n "$binary" ] && [ -x "$binary" ] || { echo "install.sh: no hamal binary (give --binary PATH; bash scripts/build-binary makes one)" >&2; exit 1; }
version=$("$binary" --version) || { echo "install.sh: $binary does not run" >&2; exit 1; }

opt=$root/opt/hamal
install -d -m 755 "$opt/bin" "$root/etc/hamal/tasks.d" "$root/var/lib/hamal" "$root/var/log/hamal"
chmod 700 "$root/etc/hamal" "$root/var/lib/hamal" "$root/var/log/hamal"
install -m 755 "$binary" "$opt/bin/hamal.new" && mv -f "$opt/bin/hamal.new" "$opt/bin/hamal"
install -m 644 "$here/docker-compose-hamal.yaml" "$opt/docker-compose-hamal.yaml"
install -m 755 "$here/update_sync_proxy.sh" "$here/uninstall_hamal.sh" "$opt/"
[ -f "$here/../CHANGELOG.md" ] && install -m 644 "$here/../CHANGELOG.md" "$opt/changelog.txt"
echo "$version" > "$opt/version"
echo "HAMAL_VERSION=$version" > "$opt/.env"
if [ ! -e "$root/etc/hamal/hamal.conf" ]; then
  install -m 600 "$here/hamal.conf.sample" "$root/etc/hamal/hamal.conf"
  echo "wrote $root/etc/hamal/hamal.conf: set [mass] (or task files in /etc/hamal/tasks.d) and a target"
else
  echo "kept $root/etc/hamal/hamal.conf"
fi
if [ -z "$root" ] && [ -d /usr/local/bin ]; then ln -sf /opt/hamal/bin/hamal /usr/local/bin/hamal; fi
if [ -n "$image" ]; then docker load -i "$image"; fi
if [ "$start" = 1 ]; then (cd "$opt" && docker-compose -f docker-compose-hamal.yaml up -d); fi
"$opt/bin/hamal" config check --config "$root/etc/hamal/hamal.conf" >/dev/null || echo "warning: $root/etc/hamal/hamal.conf has problems: run hamal config check" >&2
echo "hamal $version installed in $opt"
