# The Sluice host image: the `sluice` binary and the default pipeline's
# plugins, on Debian bookworm, running as uid 10001.
#
# Two ways to build it (docs/deploy.md):
#   docker build -t sluice:0.1.0 .
#       From source, in the `build` stage (needs rust:1.95-bookworm and
#       debian:bookworm-slim from a registry).
#   make image
#       From the binary and plugins `make build` made on this machine: the
#       `runtime-base` stage of this file, then deploy/local/sluice.Dockerfile
#       on top of it (scripts/container.sh). Needs only debian:bookworm-slim,
#       which that script makes from Debian's packages where no registry can
#       be reached.
#
# Mount points: /etc/sluice/pipeline.toml, /plugins (the *.wasm files
# pipeline.toml names) and the volume /var/lib/sluice/cache (compiled
# plugins). The image runs with a read-only root filesystem.
#
# The classic builder builds every stage before the one asked for, so
# `runtime-base` comes first: `--target runtime-base` then needs nothing else.

# What every variant of the image shares: the user, the cache volume, the
# health check and the command.
FROM debian:bookworm-slim AS runtime-base
# busybox: its wget is the health check's HTTP client (1 MB, where curl and
# its libraries would be 14 MB). The host speaks no TLS, so no CA
# certificates.
RUN apt-get update && apt-get install -y --no-install-recommends busybox \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice --create-home sluice \
    && install -d -o sluice -g sluice /var/lib/sluice/cache
ENV SLUICE_PLUGIN_DIR=/plugins \
    SLUICE_HTTP_ADDR=0.0.0.0:8080 \
    SLUICE_CACHE_DIR=/var/lib/sluice/cache
VOLUME /var/lib/sluice/cache
USER 10001:10001
EXPOSE 8080
# SIGTERM finishes the batch in flight and commits its offsets.
STOPSIGNAL SIGTERM
# GET /health on the port of SLUICE_HTTP_ADDR (a wildcard address is asked on
# loopback). Docker's --timeout bounds the request: busybox wget crashes
# with its own -T, and with -O /dev/null.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD addr="${SLUICE_HTTP_ADDR:-0.0.0.0:8080}"; host="${addr%:*}"; \
        case "$host" in 0.0.0.0) host=127.0.0.1 ;; "[::]") host="[::1]" ;; esac; \
        busybox wget -q -O - "http://$host:${addr##*:}/health" >/dev/null || exit 1
ENTRYPOINT ["sluice"]
CMD ["run", "/etc/sluice/pipeline.toml"]

# From source: the host and the Rust plugins (the Python and JavaScript
# examples are not part of the image).
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2 \
    && apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make host plugins && strip --strip-all target/release/sluice

# The default target: the image built from source.
FROM runtime-base AS runtime
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY --from=build /src/plugins/dist/normalize.wasm /src/plugins/dist/enrich.wasm /src/plugins/dist/categorize.wasm /src/plugins/dist/totals.wasm /plugins/
COPY pipeline.toml /etc/sluice/pipeline.toml
