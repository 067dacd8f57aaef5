#!/usr/bin/env python3
"""The data command: `scripts/data.py --help`; its code is dogbreed_scripts/data.py."""

from dogbreed_scripts.cli import run

run("data")
