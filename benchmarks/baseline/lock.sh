#!/usr/bin/env bash
# Re-lock the baseline container's requirements (same uv settings as docker/harness/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=.cache/uv/bin/uv
if [ ! -x "$UV" ]; then
  python3 -m venv .cache/uv && .cache/uv/bin/pip install -q 'uv==0.13.9'
fi
"$UV" pip compile -q --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple \
  benchmarks/baseline/requirements.in -o benchmarks/baseline/requirements.lock
echo "locked benchmarks/baseline/requirements.lock"
