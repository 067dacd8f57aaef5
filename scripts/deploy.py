#!/usr/bin/env python3
"""The deploy command: `scripts/deploy.py --help`; its code is dogbreed_scripts/deploy.py."""

from dogbreed_scripts.cli import run

run("deploy")
