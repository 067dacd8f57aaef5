"""The demo's whole pipeline at reduced size: data, train, deploy, invoke, summary."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_demo_pipeline_small(train_image, serve_image, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out),
         "--train-per-class", "6", "--valid-per-class", "2", "--test-per-class", "2",
         "--epochs", "1", "--invoke", "4", "--quiet"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == {"train": 60, "valid": 20, "test": 20}
    assert len(summary["invocations"]) == 4
    assert {r["content_type"] for r in summary["invocations"]} == {"image/png", "image/jpeg"}
    assert 0.0 <= summary["test_acc"] <= 1.0
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "Done in"):
        assert step in proc.stdout
    # The job's own verdicts, report and TensorBoard command, from its output archive.
    assert "rule verdicts (evaluated in the job):" in proc.stdout
    assert "LossNotDecreasing" in proc.stdout
    report = out / "job-output" / "data" / "report.html"
    assert f"report:      {report}" in proc.stdout and report.is_file()
    assert f"tensorboard --logdir {out / 'job-output'}" in proc.stdout
