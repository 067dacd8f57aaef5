"""benchmarks/gpu_check.py on CPU inside the training image: the prepared GPU run's code
paths (the product's batch sources eager and compiled, the real training program, resume,
ONNX export and agreement, AMP against full precision, a frozen loader, the Fashion-MNIST
job) with a tiny model, checked for shape and sanity, not speed."""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pytest

from conftest import ROOT, docker


def fake_fashion_mnist(folder, train: int = 300, test: int = 100):
    """IDX files in Fashion-MNIST's format and names: 28x28 grayscale, 10 classes."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):  # a bright band whose row is the class
            images[i, 2 + 2 * label: 5 + 2 * label] = 220
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return folder


@pytest.fixture(scope="module")
def cpu_run(train_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    fashion = fake_fashion_mnist(tmp_path_factory.mktemp("idx") / "fashion")
    proc = docker("run", "--rm", "--network", "none", "-v", f"{ROOT / 'benchmarks'}:/bench:ro",
                  "-v", f"{ROOT / 'scripts'}:/scripts:ro",  # the demo's Fashion-MNIST reader
                  "-v", f"{out}:/out", "-v", f"{fashion}:/fashion:ro", "--user", "0",
                  train_image, "python", "/bench/gpu_check.py", "--device", "cpu", "--quick",
                  "--fashion-mnist", "/fashion", "--out", "/out", check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_environment_is_recorded(cpu_run):
    result, _ = cpu_run
    env = result["environment"]
    assert env["device"] == "cpu" and env["gpu"] is None and env["cpus"] >= 1
    assert result["quick"] is True and result["skipped"] == []


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_every_data_path_of_the_product_measured_against_synthetic(cpu_run, mode):
    result, md = cpu_run
    row = result["throughput"][f"throughput-b4-{mode}"]
    assert row["rc"] == 0 and row["errors"] == {}, row
    ips = row["images_per_s"]
    # On CPU the default data path is cpu; the gpu path runs its logic with a CPU decoder.
    assert row["data_path_default"] == "cpu" and set(ips) == {"synthetic", "real", "gpu"}
    assert all(math.isfinite(v) and v > 0 for v in ips.values())
    assert row["ratio_vs_synthetic"]["real"] == pytest.approx(
        ips["real"] / ips["synthetic"], rel=0.01)
    assert row["first_step_s"] > 0
    assert f"| 4 | {mode} | synthetic |" in md and f"| 4 | {mode} | real |" in md


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


def test_a_frozen_loader_ends_the_job_with_its_checkpoint(cpu_run):
    result, md = cpu_run
    frozen = result["frozen_loader"]
    # The training and the validation loader's two workers each, all frozen.
    assert frozen["frozen_workers"] == 4 and frozen["rc"] == 3, frozen
    assert frozen["failure"].startswith("LoaderStalled: no ")
    assert frozen["checkpoint_next_epoch"] >= 2 and frozen["met"] is True
    assert "## A job whose loader workers freeze" in md


def test_fashion_mnist_job_runs_through_the_program(cpu_run):
    result, _ = cpu_run
    quality = result["quality"]
    assert quality["images"] == {"train": 240, "test": 80}  # --quick's share
    assert quality["rc"] == 0, quality["tail"]
    assert 0.0 <= quality["test_acc"] <= 1.0
    assert quality["hyperparameters"]["model"] == "resnet18"
    assert "data path cpu" in quality["data_path"]
