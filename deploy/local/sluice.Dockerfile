# The Sluice image from what `make build` built on this machine, on the
# `runtime-base` stage of the repository's Dockerfile (which
# scripts/container.sh builds and tags sluice-runtime-base first): the same
# user, cache volume, health check and command as the image built from
# source. Context: a folder holding `sluice`, `plugins/*.wasm` and
# `pipeline.toml` (scripts/container.sh image assembles it).
FROM sluice-runtime-base
COPY sluice /usr/local/bin/sluice
COPY plugins/ /plugins/
COPY pipeline.toml /etc/sluice/pipeline.toml
