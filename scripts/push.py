#!/usr/bin/env python3
"""The push command: `scripts/push.py --help`; its code is dogbreed_scripts/push.py."""

from dogbreed_scripts.cli import run

run("push")
