"""SDK v2 compatibility: tests/sdk2/ in the v2 venv (.venv-sdk2, `make venv-sdk2`)."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT, SERVE_IMAGE, TRAIN_IMAGE

PYTHON = ROOT / ".venv-sdk2" / "bin" / "python"


def test_sdk_v2_local_mode_drives_both_images(train_image, serve_image, tmp_path):
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run `make venv-sdk2`")
    # The v2 venv holds SDK v2's lock only; conftest's clean-up takes the scripts package
    # (dogbreed_scripts.local_endpoint) from this checkout.
    env = {**os.environ, "TRAIN_IMAGE": TRAIN_IMAGE, "SERVE_IMAGE": SERVE_IMAGE,
           "PYTHONPATH": str(ROOT / "scripts")}
    proc = subprocess.run([str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "v2"), str(ROOT / "tests" / "sdk2")],
                          capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout, proc.stdout[-2000:]
