# hamal as a container: the same CLI, with qemu-img for hole detection.
# Build: docker build -t hamal .   Run: docker run --rm -v /srv/disks:/disks -v /srv/backup:/backup hamal sync ...
FROM node:20-bookworm-slim AS build
WORKDIR /opt/hamal
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json mod.ts ./
COPY src ./src
COPY tests ./tests
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends qemu-utils && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/hamal
COPY --from=build /opt/hamal/node_modules ./node_modules
COPY --from=build /opt/hamal/dist ./dist
COPY package.json README.md ./
COPY docs ./docs
# The seed's layout: config, data and logs live outside the container.
VOLUME ["/etc/hamal", "/var/lib/hamal", "/var/log/hamal"]
ENTRYPOINT ["node", "/opt/hamal/dist/src/cli/hamal.js"]
CMD ["--help"]
