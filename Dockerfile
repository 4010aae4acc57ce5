# syntax=docker/dockerfile:1
#
# The image of every role: `ecom gateway`, `ecom outbox-worker`,
# `ecom service NAME...`, `ecom migrate --service NAME`, `ecom all`, plus `ecomctl`.
#
#   docker build -t ecom:dev .
#   docker run --rm ecom:dev config-doc
#
# Stage 1 builds with the Debian 12 -dev packages (the same ones scripts/bootstrap
# installs); stage 2 carries only the shared libraries the binaries load.
# Only the folders the build reads are copied, so a host's build*/ folders (whose
# CMakeCache.txt names a host path) never reach the image. A new top-level source
# folder must be added to the COPY list below.

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libhiredis-dev libevent-dev libpq-dev libjson-c-dev libjwt-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt Makefile ./
COPY cmake/ cmake/
COPY migrations/ migrations/
COPY core/ core/
COPY bus/ bus/
COPY inbox/ inbox/
COPY outbox-worker/ outbox-worker/
COPY services/ services/
COPY http-gateway/ http-gateway/
COPY cli/ cli/
COPY sdk/ sdk/
# `make` = configure (RelWithDebInfo) + build the two binaries into build/bin/.
RUN make \
 && strip --strip-debug build/bin/ecom build/bin/ecomctl \
 && build/bin/ecom config-doc >/dev/null

FROM ${DEBIAN_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libhiredis0.14 libevent-2.1-7 libevent-core-2.1-7 libevent-pthreads-2.1-7 \
      libpq5 libjson-c5 libjwt0 libssl3 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ecom \
 && useradd --system --uid 10001 --gid ecom --home-dir /var/lib/ecom --create-home \
      --shell /usr/sbin/nologin ecom
COPY --from=build /src/build/bin/ecom /src/build/bin/ecomctl /usr/local/bin/
# The health summary (scripts/health), used by `scripts/compose ENV health` via
# `docker compose exec SERVICE ecom-health NAME=PORT`.
COPY scripts/health /usr/local/bin/ecom-health
# Fail the build, not the first start, when a shared library is missing.
RUN if ldd /usr/local/bin/ecom /usr/local/bin/ecomctl | grep 'not found'; then exit 1; fi \
 && ecom config-doc >/dev/null \
 && chmod 0755 /usr/local/bin/ecom-health

USER ecom:ecom
WORKDIR /var/lib/ecom
# the development roles env.dev names (AUTHX_BOOTSTRAP_FILE=config/authx.dev.json)
COPY config/ config/
# Gateway HTTP (PORT) and the admin port of drainer and services (ADMIN_PORT):
# /health, /ready and /metrics. Compose gives each role its own healthcheck.
EXPOSE 3003 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["ecom"]
CMD ["all"]
