#!/usr/bin/env python3
"""The push command: `scripts/push.py --help`; its code is dogbreed_scripts/push.py."""

# Guarded: this folder is first on sys.path when a command runs, so a library that
# imports a top-level module of this name (paramiko imports `invoke`) finds this file.
if __name__ == "__main__":
    from dogbreed_scripts.cli import run

    run("push")
