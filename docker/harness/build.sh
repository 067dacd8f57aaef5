#!/usr/bin/env bash
# Build one of the project's images, online or through the offline harness.
#
# Online (the normal case): a plain `docker build` of the real Dockerfile.
# Offline (this machine cannot pull python:3.11-slim-bookworm): the same Dockerfile,
# with only two build args swapped: BASE_IMAGE (a local debootstrap image, see
# base-image.sh) and the pip package source (a local wheelhouse on 127.0.0.1).
#
# usage: build.sh DOCKERFILE TAG LOCKFILE [extra docker build args...]
#   LOCKFILE: the lock the build installs (the offline harness serves just its files)
#   DOGBREED_OFFLINE=auto|0|1  (default auto: offline only when the base cannot be pulled)
set -euo pipefail
DOCKERFILE=$1; TAG=$2; LOCK=$3; shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DOCKER=${DOCKER:-/usr/bin/docker}
BASE=${BASE_IMAGE:-python:3.11-slim-bookworm}
OFFLINE=${DOGBREED_OFFLINE:-auto}
log() { printf '[build] %s\n' "$*" >&2; }

if [ "$OFFLINE" = auto ]; then
  if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1 || timeout 120 "$DOCKER" pull -q "$BASE" >/dev/null 2>&1; then
    OFFLINE=0
  else
    log "cannot pull $BASE: using the offline harness (docs/offline-build.md)"
    OFFLINE=1
  fi
fi

cd "$ROOT"
if [ "$OFFLINE" = 0 ]; then
  log "building $TAG from $DOCKERFILE"
  exec env DOCKER_BUILDKIT=1 "$DOCKER" build -f "$DOCKERFILE" -t "$TAG" --build-arg BASE_IMAGE="$BASE" "$@" .
fi

LOCAL_BASE=${DOGBREED_LOCAL_BASE:-dogbreed-base:bookworm}
WHEELS=${DOGBREED_WHEELHOUSE:-$ROOT/.cache/wheelhouse}
"$HERE/base-image.sh" "$LOCAL_BASE"
"$HERE/wheelhouse.sh" "$WHEELS" "$LOCK"

# The wheel URL is a build arg, and a changed build arg invalidates Docker's layer cache:
# a fixed port keeps rebuilds cached. Only when it is busy (two builds at once) does a
# random port take its place, at the price of a full rebuild.
PORT=$(python3 - "${DOGBREED_WHEEL_PORT:-47813}" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
)
python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do python3 - "$PORT" 2>/dev/null <<'PY' && break || sleep 0.1
import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)
PY
done

log "building $TAG from $DOCKERFILE (offline: base $LOCAL_BASE, wheels from 127.0.0.1:$PORT)"
DOCKER_BUILDKIT=1 "$DOCKER" build -f "$DOCKERFILE" -t "$TAG" --network=host \
  --build-arg BASE_IMAGE="$LOCAL_BASE" \
  --build-arg PIP_NO_INDEX=1 \
  --build-arg PIP_FIND_LINKS="http://127.0.0.1:$PORT/" \
  "$@" .
