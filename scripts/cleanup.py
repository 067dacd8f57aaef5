#!/usr/bin/env python3
"""The cleanup command: `scripts/cleanup.py --help`; its code is dogbreed_scripts/cleanup.py."""

from dogbreed_scripts.cli import run

run("cleanup")
