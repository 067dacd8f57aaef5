#!/usr/bin/env bash
# Make sure a headless Chromium is on this machine (the report's browser test uses it).
#
# Does nothing when `chromium` already runs. Otherwise, on a Debian/Ubuntu machine
# where we are root, installs Debian's `chromium` package; anywhere else it stops
# with a message that says what to install.
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }

if command -v chromium >/dev/null && chromium --version >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  log "No chromium found, and this script can only install it as root on Debian/Ubuntu."
  log "Install Chromium (the Debian package is 'chromium') and run again."
  exit 1
fi
log "installing Debian's chromium ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version >&2
