# hamal as a container, run the seed's way: docker-compose -f /opt/hamal/docker-compose-hamal.yaml up -d
# Build: docker build -t hamal:$(node -p 'require("./package.json").version') .
# Without a Docker engine (what tests/container.test.ts does): BUILDAH_ISOLATION=chroot
# buildah build --layers --format docker -t hamal:VERSION . (the OCI format drops HEALTHCHECK).
# Stage 1 builds the single executable (scripts/build-binary: tsc, esbuild, Node SEA).
FROM node:20-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json mod.ts ./
COPY src ./src
COPY tests ./tests
COPY bench ./bench
COPY scripts ./scripts
RUN npm run build && bash scripts/build-binary /out/hamal

# Stage 2: the binary and the tools it drives, nothing else (no Node, no npm tree).
# nbdkit serves VMware disks for the nbd transport (VDDK is the operator's, see docs);
# qemu-utils finds holes in local images; ceph-common gives `rbd` for OpenStack/Ceph and
# qemu-block-extra the rbd driver qemu-nbd reads its snapshots with.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates qemu-utils qemu-block-extra nbdkit ceph-common \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/hamal /usr/local/bin/hamal
COPY deploy/hamal.conf.sample /usr/share/hamal/hamal.conf.sample
# The seed's layout: config, data and logs live outside the container. First start on an
# empty /etc/hamal: hamal copies the sample to $HAMAL_CONFIG (0600, never over a file) and
# says so on stderr; a read-only volume runs on the built-in defaults, with a warning.
VOLUME ["/etc/hamal", "/var/lib/hamal", "/var/log/hamal"]
ENV HAMAL_CONFIG=/etc/hamal/hamal.conf
# glibc keeps up to 128 MiB of freed heap instead of handing it back to the kernel after
# every GC: each chunk's cipher and buffer churn otherwise costs fresh page faults, which
# halved encrypted-sync throughput on the benchmark machine (docs/scale-out.md, Sizing).
ENV MALLOC_TRIM_THRESHOLD_=134217728
# /healthz of `hamal serve` ([hamal] health_listen), asked by the binary itself.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["hamal", "health"]
# SIGTERM stops a sync cleanly (snapshot removed, journal kept) within 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hamal"]
CMD ["serve"]
