"""Smoke test of the benchmarks (`benchmarks/run.py --quick`): one real run, checked for
shape and sanity. No timing thresholds: the goals are reported, never asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, docker

BASELINE_IMAGE = "dogbreed-baseline:bench"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(serve_image, train_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # The baseline image holds CUDA torch (6 GB): used when built (`make bench` builds it).
    has_baseline = docker("image", "inspect", BASELINE_IMAGE, check=False).returncode == 0
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out),
           "--serve-image", serve_image, "--train-image", train_image]
    if not has_baseline:
        cmd.append("--skip-baseline")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    return results, (out / "results.md").read_text(), has_baseline


def test_machine_and_image_sizes(quick_run, serve_image, train_image):
    res, _, _ = quick_run
    assert res["date"].endswith("UTC")
    assert res["machine"]["cpus"] >= 1
    assert res["image_sizes_bytes"][serve_image] > 100e6
    assert res["image_sizes_bytes"][train_image] > res["image_sizes_bytes"][serve_image]


def test_serving_measured_against_its_limit(quick_run):
    res, _, has_baseline = quick_run
    rnd = res["serving"]["rounds"][0]
    for what in ("forward", "decode", "product"):
        assert positive(rnd["c1"][what]["p50_ms"]), (what, rnd["c1"][what])
    assert rnd["c1"]["product"]["errors"] == 0
    # A request cannot be answered faster than the network alone computes it.
    assert rnd["c1"]["product"]["p50_ms"] > 0.5 * rnd["c1"]["forward"]["p50_ms"]
    load = rnd["load"]["4"]
    assert positive(load["product"]["throughput_rps"]) and load["product"]["errors"] == 0
    assert all(positive(x) for x in load["forward_ips"])
    assert set(rnd["forward_sweep_ips"]) == {"1", "4"}
    assert 0 < rnd["cold_start_s"]["product"] < 180
    assert rnd["probe"]["threads"] >= 1 and rnd["probe"]["device"] == "cpu"
    if has_baseline:
        assert rnd["answers_agree"] is True  # same weights: same top-5 classes
        assert positive(load["baseline"]["throughput_rps"])
        assert load["baseline"]["errors"] == 0


def test_summary_has_every_goal(quick_run):
    res, md, _ = quick_run
    s = res["summary"]
    for key in ("latency_ratio", "throughput_ratio_c4", "forward_b1_ms", "forward_best_ips",
                "product_cold_start_s", "decode_ms"):
        assert positive(s[key]), key
    goals = {g["goal"].split(" (")[0]: g for g in s["goals"]}
    assert any(k.startswith("e2e p50 @c1") for k in goals)
    assert any(k.startswith("throughput @c4") for k in goals)
    assert any(k.startswith("cold start") for k in goals)
    assert any(k.startswith("serve image size") for k in goals)
    assert any(k.startswith("train image size") for k in goals)
    for g in s["goals"]:
        assert g["met"] in (True, False, None)
        assert (g["met"] is None) == (g["value"] is None)
    assert "## Goals" in md and "| product: dogbreed-serve" in md


def test_runtimes_compared(quick_run):
    res, md, _ = quick_run
    rt = res["runtimes"]
    for name in ("ort", "eager", "torchscript"):
        assert positive(rt[name]["latency_b1_ms"]), (name, rt[name])
        assert positive(rt[name]["best_throughput"])
    assert rt["ort"]["threads"] == rt["eager"]["threads"]
    assert "## Runtimes" in md


def test_training_data_path_against_synthetic(quick_run):
    res, _, _ = quick_run
    tr = res["training"]
    ips = tr["images_per_s"]
    assert positive(ips["synthetic"]) and positive(ips["real"]) and positive(ips["pre-resized"])
    assert tr["ratio_vs_synthetic"]["real"] == pytest.approx(ips["real"] / ips["synthetic"])
    assert tr["jpeg"]["size"] == "500x375" and tr["jpeg"]["mean_kb"] > 5
