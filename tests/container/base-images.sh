#!/usr/bin/env bash
# Makes the Dockerfile's two FROM images locally, as no image registry is reachable from CI:
#   docker.io/library/debian:bookworm-slim   debootstrap --variant=minbase from the Debian mirror
#   docker.io/library/node:20-bookworm-slim  that, plus this host's Node 20 and npm laid out in
#                                            /usr/local as the official image has them
# An image already present with this script's label is kept (the suite runs once per CI
# machine; a second run here reuses them). Prints one line per image. Needs root,
# debootstrap, buildah, podman.
set -euo pipefail
export BUILDAH_ISOLATION=chroot
debian=docker.io/library/debian:bookworm-slim
node_image=docker.io/library/node:20-bookworm-slim
mirror=${HAMAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Raised whenever what this script makes changes: older images are made again.
label=hamal.test.base=2
ours() { [ "$(podman image inspect --format '{{index .Labels "hamal.test.base"}}' "$1" 2>/dev/null)" = "${label#*=}" ]; }
work=$(mktemp -d /tmp/hamal-test-base-XXXXXX)
ctr=
cleanup() {
  [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if ours "$debian"; then
  echo "base image $debian: present, kept"
else
  start=$SECONDS
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log"
    echo "debootstrap bookworm from $mirror failed (log above)" >&2
    exit 1
  }
  # The official slim image's own configuration (debuerreotype): dpkg leaves documentation,
  # man pages and translations out, apt keeps no .deb files nor package caches. Without it
  # every `apt-get install` in the Dockerfile leaves ~140 MB the real base never would.
  r=$work/rootfs
  mkdir -p "$r/etc/dpkg/dpkg.cfg.d" "$r/etc/apt/apt.conf.d"
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
CFG
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
  echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # And what debootstrap already put there that those rules would have left out.
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/groff/* "$r"/usr/share/lintian/overrides/* \
    "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* "$r"/var/log/bootstrap.log
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$work/rootfs" -cf - . | tar -C "$mnt" -xpf -
  buildah umount "$ctr" >/dev/null
  buildah config --label "$label" --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --quiet --rm "$ctr" "$debian" >/dev/null
  ctr=
  echo "base image $debian: made by debootstrap in $((SECONDS - start)) s"
fi

if ours "$node_image" && [ "$(podman image inspect --format '{{.Created}}' "$node_image")" \> "$(podman image inspect --format '{{.Created}}' "$debian")" ]; then
  echo "base image $node_image: present, kept"
else
  start=$SECONDS
  node_bin=$(readlink -f "$(command -v node)")
  version=$("$node_bin" --version)
  case "$version" in
    v20.*) ;;
    *) echo "$node_bin is Node $version, not 20: cannot make $node_image from it" >&2; exit 1 ;;
  esac
  npm_dir=$(readlink -f "$(dirname "$node_bin")/../lib/node_modules/npm")
  [ -f "$npm_dir/package.json" ] || npm_dir=$(npm root -g)/npm
  [ -f "$npm_dir/package.json" ] || { echo "npm not found beside $node_bin nor in $(npm root -g)" >&2; exit 1; }
  ctr=$(buildah from --pull=never "$debian")
  mnt=$(buildah mount "$ctr")
  install -D -m 0755 "$node_bin" "$mnt/usr/local/bin/node"
  mkdir -p "$mnt/usr/local/lib/node_modules"
  cp -a "$npm_dir" "$mnt/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$mnt/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$mnt/usr/local/bin/npx"
  # The registry's certificate here chains to a CA only the host's bundle holds: npm in a
  # build stage trusts it through NODE_EXTRA_CA_CERTS (a property of this CI, not the image).
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  buildah umount "$ctr" >/dev/null
  buildah config --label "$label" --env NODE_VERSION="${version#v}" --env NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    --cmd node "$ctr"
  buildah commit --quiet --rm "$ctr" "$node_image" >/dev/null
  ctr=
  echo "base image $node_image: Node $version and npm $(node "$npm_dir/bin/npm-cli.js" --version) from this host in $((SECONDS - start)) s"
fi
