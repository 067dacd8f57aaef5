#!/usr/bin/env python3
"""The soak command: `scripts/soak.py --help`; its code is dogbreed_scripts/soak.py."""

from dogbreed_scripts.cli import run

run("soak")
