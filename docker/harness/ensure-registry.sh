#!/usr/bin/env bash
# Make sure a Docker registry server (Distribution 2.x) can be run on this machine,
# for the push test: prints the path of its binary.
#
# Uses `registry` or `docker-registry` from PATH when there is one. Otherwise, as
# root on Debian/Ubuntu, installs Debian's docker-registry package (its service
# is not started: the test runs its own registry on a free loopback port with its
# own config and storage). Anywhere else it stops with a message.
set -euo pipefail

log() { printf '[registry] %s\n' "$*" >&2; }

for name in docker-registry registry; do
  if command -v "$name" >/dev/null; then
    command -v "$name"
    exit 0
  fi
done

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  log "No registry server found, and this script can only install one as root on Debian/Ubuntu."
  log "Install Debian's docker-registry (or distribution's 'registry' binary) and run again."
  exit 1
fi

log "installing Debian's docker-registry ..."
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package's own service from starting on 0.0.0.0:5000.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
if ! apt-get install -y -qq --no-install-recommends docker-registry >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
command -v docker-registry
