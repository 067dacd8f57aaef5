#!/usr/bin/env bash
# Fill a local wheelhouse with every file a lock file names (hash-checked).
#
# Used by the offline harness: a `docker build` then installs from this folder,
# served on 127.0.0.1, instead of from PyPI. Re-running only fetches what is missing.
#
# usage: wheelhouse.sh DIR LOCKFILE...
set -euo pipefail
DIR=$1; shift
mkdir -p "$DIR"
PY=${PYTHON:-python3}
for lock in "$@"; do
  stamp="$DIR/.$(basename "$(dirname "$lock")")-$(basename "$lock").sha256"
  sum=$(sha256sum "$lock" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ]; then
    continue
  fi
  printf '[wheelhouse] fetching %s into %s ...\n' "$lock" "$DIR" >&2
  "$PY" -m pip download -q --no-deps --require-hashes -r "$lock" -d "$DIR"
  echo "$sum" >"$stamp"
done
# Build backends for the few source-only packages (sagemaker-training, smdebug, ...).
if ! ls "$DIR"/setuptools-*.whl >/dev/null 2>&1 || ! ls "$DIR"/wheel-*.whl >/dev/null 2>&1; then
  "$PY" -m pip download -q --no-deps -d "$DIR" 'setuptools<81' wheel
fi
