"""benchmarks/gpu_check.py on CPU inside the training image: the prepared GPU run's code
paths (data paths, the real training program, resume, ONNX export and agreement, AMP
against full precision) with a tiny model, checked for shape and sanity, not speed."""

from __future__ import annotations

import json
import math

import pytest

from conftest import ROOT, docker


@pytest.fixture(scope="module")
def cpu_run(train_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = docker("run", "--rm", "--network", "none", "-v", f"{ROOT / 'benchmarks'}:/bench:ro",
                  "-v", f"{out}:/out", "--user", "0", train_image,
                  "python", "/bench/gpu_check.py", "--device", "cpu", "--quick",
                  "--out", "/out", check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_environment_is_recorded(cpu_run):
    result, _ = cpu_run
    env = result["environment"]
    assert env["device"] == "cpu" and env["gpu"] is None and env["cpus"] >= 1
    assert result["quick"] is True and result["skipped"] == []


def test_every_cpu_data_path_measured_against_synthetic(cpu_run):
    result, md = cpu_run
    row = result["throughput"]["by_batch"]["4"]
    assert row["errors"] == {}
    ips = row["images_per_s"]
    assert {"synthetic", "real", "pre-resized"} <= set(ips)
    assert any(name.startswith("uint8-workers") for name in ips)
    assert not any(name.startswith("gpu-decode") for name in ips)  # CUDA only
    assert all(math.isfinite(v) and v > 0 for v in ips.values())
    assert row["ratio_vs_synthetic"]["real"] == pytest.approx(
        ips["real"] / ips["synthetic"], rel=0.01)
    assert "| 4 | synthetic |" in md and "| 4 | real |" in md


def test_job_trains_checkpoints_resumes_and_exports(cpu_run):
    result, md = cpu_run
    e2e = result["end_to_end"]
    first = e2e["first"]
    assert first["rc"] == 0, first["tail"]
    assert [m.split()[0] for m in first["metric_lines"]] == ["epoch=1/2", "epoch=2/2"]
    assert len(first["perf_lines"]) == 2
    assert first["gpu_util_reported"] is False  # no GPU here: PERF says nothing of one
    assert e2e["checkpoint"] is True
    assert e2e["resume"]["rc"] == 0 and e2e["resume"]["continued_at_epoch_3"] is True
    onnx = e2e["onnx"]
    assert onnx["images"] == 6 and onnx["met"] is True
    assert onnx["max_abs_softmax_diff"] < 1e-3 and onnx["same_top1"] is True
    assert "resumed job continued at epoch 3: True" in md


def test_amp_compared_with_full_precision(cpu_run):
    result, _ = cpu_run
    amp = result["end_to_end"]["amp"]
    assert amp["rc"] == {"fp32_seed0": 0, "fp32_seed1": 0}
    losses = amp["final_train_loss"]
    assert all(math.isfinite(v) and v > 0 for v in losses.values())
    # On CPU the program never autocasts: "AMP" and full precision are the same job.
    assert amp["amp_dtype"].startswith("off")
    assert losses["amp_seed0"] == pytest.approx(losses["fp32_seed0"], rel=1e-4)
    assert amp["met"] is True
