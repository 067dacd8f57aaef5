#!/usr/bin/env python3
"""The tune command: `scripts/tune.py --help`; its code is dogbreed_scripts/tune.py."""

from dogbreed_scripts.cli import run

run("tune")
