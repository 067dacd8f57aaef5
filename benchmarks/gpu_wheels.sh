#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.py needs on a GPU machine that has PyTorch but no
# package index: the training program's packages that such a machine lacks (pydantic
# and its parts), at the training image's locked versions and hashes, for CPython 3.12.
#
# usage: benchmarks/gpu_wheels.sh [DIR]      (default .whl)
# then, on the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site:contract:container_train python3 benchmarks/gpu_check.py --out OUT
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${GPU_PYTHON_VERSION:-3.12}
PACKAGES="pydantic pydantic-core annotated-types typing-inspection typing-extensions"
req=$(mktemp)
trap 'rm -f "$req"' EXIT
# Each package's block of the lock: its "name==version \" line and the hash lines after it.
for name in $PACKAGES; do
  awk -v n="$name" '
    $0 ~ "^"n"==" {on=1; print; next}
    on && /^ +--hash/ {print; next}
    {on=0}' container_train/requirements.lock >>"$req"
  grep -q "^$name==" "$req" || { echo "gpu_wheels: $name is not in container_train/requirements.lock" >&2; exit 1; }
done
mkdir -p "$DIR"
python3 -m pip download -q --no-deps --require-hashes --only-binary=:all: \
  --python-version "$PY" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -r "$req" -d "$DIR"
ls "$DIR"
