#!/usr/bin/env bash
# Re-lock every requirements file with hashes (uv pip compile), for Linux x86_64, Python 3.11.
# uv is installed into .cache/uv on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=.cache/uv/bin/uv
if [ ! -x "$UV" ]; then
  python3 -m venv .cache/uv && .cache/uv/bin/pip install -q 'uv==0.13.9'
fi
lock() {  # lock IN OUT [extra uv args]
  local in=$1 out=$2; shift 2
  "$UV" pip compile -q --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple \
    "$@" "$in" -o "$out"
  echo "locked $out"
}
lock container_train/requirements.in container_train/requirements.lock \
  --override container_train/overrides.txt
lock container_serve/requirements.in container_serve/requirements.lock
lock container_serve/requirements-gpu.in container_serve/requirements-gpu.lock
lock tests/requirements.in tests/requirements.lock
lock tests/requirements-inimage.in tests/requirements-inimage.lock
