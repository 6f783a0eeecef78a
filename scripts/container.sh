#!/usr/bin/env bash
# The host container on a machine with no image registry: a Docker engine,
# base images made from Debian's packages, and the Sluice image made from
# what `make build` built.
#
#   scripts/container.sh engine    start a Docker engine if none answers; print its DOCKER_HOST
#   scripts/container.sh image     build sluice:0.1.0 from the host build (`make image`)
#   scripts/container.sh peers     build the stand-ins for the broker and Redis images
#                                  that docker-compose.yml names (deploy/local/)
#   scripts/container.sh prepare   all three; print the variables the container
#                                  tests read, as `export` lines (nothing when no
#                                  engine can be had: the tests then say they skip)
#   scripts/container.sh stop      stop the engine this script started
#
# debian:bookworm-slim is pulled where a registry answers, else made once
# with mmdebstrap and cached as target/docker/bookworm-slim.tar; the engine
# this script starts keeps its images under target/docker/data, so later
# runs reuse them. Everything but the `export` lines goes to stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/target/docker"
# Sockets have a short path limit: the engine's run-time files live in /tmp.
state="/tmp/sluice-docker-$(printf '%s' "$root" | sha256sum | cut -c1-12)"
image=${SLUICE_IMAGE:-sluice:0.1.0}
# The default pipeline's plugins, the ones the image carries.
plugins=(normalize enrich categorize totals)
# The image size to stay under, in MB.
size_goal=120

log() { echo "container: $*" >&2; }

# Whether an engine answers at DOCKER_HOST (or the default socket).
answers() { docker info >/dev/null 2>&1; }

# `docker build ARGS...`, quiet unless it fails.
build() {
  local out
  if ! out=$(docker build --quiet "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    log "docker build $* failed"
    return 1
  fi
}

engine() {
  if answers; then
    echo "${DOCKER_HOST:-unix:///var/run/docker.sock}"
    return
  fi
  export DOCKER_HOST="unix://$state/docker.sock"
  if answers; then
    echo "$DOCKER_HOST"
    return
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    log "no Docker engine answers and dockerd is not installed"
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    log "no Docker engine answers and starting one needs root"
    return 1
  fi
  mkdir -p "$state" "$cache/data"
  # No default bridge, and no address translation to the outside: the
  # containers of the tests reach one another on their compose network and
  # the host on loopback, and nothing else.
  dockerd --data-root "$cache/data" --exec-root "$state/exec" --pidfile "$state/docker.pid" \
    --host "$DOCKER_HOST" --bridge=none --ip-masq=false \
    >"$state/dockerd.log" 2>&1 &
  local deadline=$((SECONDS + 60))
  until answers; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$!" 2>/dev/null; then
      log "dockerd did not start; its log:"
      tail -n 20 "$state/dockerd.log" >&2
      return 1
    fi
    sleep 0.5
  done
  log "started dockerd (log: $state/dockerd.log)"
  echo "$DOCKER_HOST"
}

stop() {
  local pidfile="$state/docker.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # Only the engine this script started: the pid file may be stale.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && kill "$pid" 2>/dev/null; then
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    log "stopped dockerd"
  fi
  rm -f "$pidfile"
}

# debian:bookworm-slim: from a registry if one answers, else from Debian's
# packages: the minbase variant with merged /usr, without documentation,
# manual pages and translations (what Debian's own slim image leaves out).
base() {
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    return
  fi
  if timeout 120 docker pull --quiet debian:bookworm-slim >/dev/null 2>&1; then
    log "pulled debian:bookworm-slim"
    return
  fi
  local tar="$cache/bookworm-slim.tar"
  if [ ! -s "$tar" ]; then
    if ! command -v mmdebstrap >/dev/null 2>&1; then
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >&2
    fi
    mkdir -p "$cache"
    log "no registry has debian:bookworm-slim: making it from Debian's packages (about a minute)"
    if ! mmdebstrap --format=tar --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      bookworm "$tar.partial" >"$cache/mmdebstrap.log" 2>&1; then
      tail -n 30 "$cache/mmdebstrap.log" >&2
      log "mmdebstrap failed (log: $cache/mmdebstrap.log)"
      return 1
    fi
    mv "$tar.partial" "$tar"
  fi
  docker import --change 'CMD ["bash"]' "$tar" debian:bookworm-slim >/dev/null
  log "imported debian:bookworm-slim"
}

# The Sluice image from the host-built binary and the default plugins: the
# Dockerfile's `runtime-base` stage, then deploy/local/sluice.Dockerfile.
image() {
  base
  local context="$cache/context" files=("$root/target/release/sluice") p
  for p in "${plugins[@]}"; do files+=("$root/plugins/dist/$p.wasm"); done
  for p in "${files[@]}"; do
    [ -f "$p" ] || { log "$p is missing: run make build first"; return 1; }
  done
  rm -rf "$context"
  mkdir -p "$context/plugins"
  cp "${files[0]}" "$root/pipeline.toml" "$context/"
  # The image's binary carries no symbol table (12 MB): a panic still names
  # its message and source line.
  strip --strip-all "$context/sluice"
  cp "${files[@]:1}" "$context/plugins/"
  # The network is the host's: the runtime stage installs busybox with apt.
  build --network host --target runtime-base -t sluice-runtime-base -f "$root/Dockerfile" "$context"
  build -t "$image" -f "$root/deploy/local/sluice.Dockerfile" "$context"
  local mb
  mb=$(($(docker image inspect --format '{{.Size}}' "$image") / 1000000))
  if [ "$mb" -lt "$size_goal" ]; then
    log "built $image: $mb MB (goal: under $size_goal MB)"
  else
    log "warning: built $image: $mb MB, over the goal of $size_goal MB"
  fi
}

# Stand-ins for apache/kafka and redis, built from the tansu broker the
# tests use and Debian's redis-server (deploy/local/).
peers() {
  base
  local context="$cache/tansu"
  mkdir -p "$context"
  cp "$("$root/scripts/tansu.sh")" "$context/tansu"
  build -t sluice-local/tansu -f "$root/deploy/local/tansu.Dockerfile" "$context"
  build --network host -t sluice-local/redis -f "$root/deploy/local/redis.Dockerfile" "$root/deploy/local"
  log "built sluice-local/tansu and sluice-local/redis"
}

case "${1:-}" in
  engine) engine ;;
  stop) stop ;;
  image | peers)
    DOCKER_HOST=$(engine)
    export DOCKER_HOST
    "$1" >&2
    ;;
  prepare)
    # Whether an engine answered before (then it is left running).
    answered=0
    if answers || DOCKER_HOST="unix://$state/docker.sock" answers; then answered=1; fi
    if ! DOCKER_HOST=$(engine); then
      log "skipped: no Docker engine can be had here, so the container tests skip"
      exit 0
    fi
    export DOCKER_HOST
    # Printed first, so that the engine is stopped even if a build fails.
    [ "$answered" = 1 ] || echo "export SLUICE_DOCKER_STARTED=1"
    { image && peers; } >&2
    echo "export DOCKER_HOST='$DOCKER_HOST'"
    echo "export SLUICE_TEST_IMAGE='$image'"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
