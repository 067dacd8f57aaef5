#!/usr/bin/env python3
"""The invoke command: `scripts/invoke.py --help`; its code is dogbreed_scripts/invoke.py."""

from dogbreed_scripts.cli import run

run("invoke")
