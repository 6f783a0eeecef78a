# The Sluice host image: the `sluice` binary and the default plugins.
#   make build-image   (or: docker build -t sluice:0.1.0 .)
# Mount points: /plugins (the *.wasm files pipeline.toml names) and
# /etc/sluice/pipeline.toml.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2 \
    && apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The host and the Rust plugins (the Python and JavaScript examples are not
# part of the image).
RUN make host plugins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/sluice --create-home sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY --from=build /src/plugins/dist/ /plugins/
COPY pipeline.toml /etc/sluice/pipeline.toml
USER 10001
ENV SLUICE_PLUGIN_DIR=/plugins \
    SLUICE_HTTP_ADDR=0.0.0.0:8080 \
    SLUICE_CACHE_DIR=/var/lib/sluice/cache
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s CMD curl -fs http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["sluice"]
CMD ["run", "/etc/sluice/pipeline.toml"]
