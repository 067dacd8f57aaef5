#!/usr/bin/env python3
"""The soak command: `scripts/soak.py --help`; its code is dogbreed_scripts/soak.py."""

# Guarded: this folder is first on sys.path when a command runs, so a library that
# imports a top-level module of this name (paramiko imports `invoke`) finds this file.
if __name__ == "__main__":
    from dogbreed_scripts.cli import run

    run("soak")
