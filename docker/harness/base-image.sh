#!/usr/bin/env bash
# Build a stand-in for python:3.11-slim-bookworm on a machine that cannot pull images.
#
# debootstrap makes a minimal Debian bookworm with Python 3.11, which is imported
# as a local image. The host's own CA certificates go into its trust store so that
# pip and apt work behind an intercepting TLS proxy. Only the offline harness uses
# this; a normal `docker build` pulls the real python image.
#
# usage: base-image.sh [IMAGE]   (default dogbreed-base:bookworm)
set -euo pipefail

IMAGE=${1:-dogbreed-base:bookworm}
DOCKER=${DOCKER:-/usr/bin/docker}
log() { printf '[base-image] %s\n' "$*" >&2; }

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already exists"
  exit 0
fi

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap ..."
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

ROOT=$(mktemp -d /tmp/dogbreed-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT

log "debootstrap bookworm into $ROOT (about 3 minutes) ..."
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$ROOT" http://deb.debian.org/debian >/tmp/dogbreed-debootstrap.log 2>&1 \
  || { tail -20 /tmp/dogbreed-debootstrap.log >&2; exit 1; }

# Match the official image: `python` exists and pip may install system-wide.
ln -sf python3 "$ROOT/usr/bin/python"
rm -f "$ROOT"/usr/lib/python3.*/EXTERNALLY-MANAGED

# Trust whatever extra CAs this host trusts (e.g. a TLS-intercepting proxy).
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
fi
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*

BUNDLE=/etc/ssl/certs/ca-certificates.crt
tar -C "$ROOT" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV PIP_CERT=$BUNDLE" \
  --change "ENV REQUESTS_CA_BUNDLE=$BUNDLE" \
  --change "ENV SSL_CERT_FILE=$BUNDLE" \
  --change 'CMD ["python3"]' \
  - "$IMAGE" >/dev/null
log "built $IMAGE"
