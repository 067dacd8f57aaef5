#!/usr/bin/env python3
"""The train command: `scripts/train.py --help`; its code is dogbreed_scripts/train.py."""

from dogbreed_scripts.cli import run

run("train")
