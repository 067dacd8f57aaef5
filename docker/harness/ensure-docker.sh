#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
# Does nothing when `docker info` already works. Otherwise, on a Debian/Ubuntu
# machine where we are root, installs Debian's engine (docker.io, docker-compose)
# and starts dockerd in the background. Anywhere else it stops with a message
# that says what to install.
set -euo pipefail

log() { printf '[docker] %s\n' "$*" >&2; }

# Debian's client does BuildKit; a newer client found first on PATH may lack buildx.
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}

if [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  log "No Docker engine answers and this script can only install one as root on Debian/Ubuntu."
  log "Install Docker (https://docs.docker.com/engine/install/) and start it, then run again."
  exit 1
fi

if ! command -v dockerd >/dev/null || [ ! -x /usr/bin/docker ] || ! command -v docker-compose >/dev/null; then
  log "installing Debian's docker.io and docker-compose ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io docker-compose >/dev/null
fi

if ! pgrep -x dockerd >/dev/null; then
  log "starting dockerd (log: /var/log/dockerd-dogbreed.log) ..."
  nohup dockerd >/var/log/dockerd-dogbreed.log 2>&1 &
fi

for _ in $(seq 1 60); do
  if /usr/bin/docker info >/dev/null 2>&1; then
    log "engine is up"
    exit 0
  fi
  sleep 1
done
log "dockerd did not come up within 60 s; see /var/log/dockerd-dogbreed.log"
exit 1
