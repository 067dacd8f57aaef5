#!/usr/bin/env python3
"""The demo command: `scripts/demo.py --help`; its code is dogbreed_scripts/demo.py."""

from dogbreed_scripts.cli import run

run("demo")
