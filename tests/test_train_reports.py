"""Rule verdicts, TensorBoard event files and report.html from every job, in the real image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile

import pytest
from PIL import Image

from conftest import TINY_HPS, docker, opt_ml, run_train
from dogbreed_contract import metrics

RULES = {"VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining",
         "LossNotDecreasing", "PoorWeightInitialization", "ClassImbalance",
         "LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "GPUMemoryIncrease",
         "BatchSize"}
STATUSES = {"IssuesFound", "NoIssuesFound", "NotEvaluated"}
METRIC_DEFS = metrics.definitions()

# TensorBoard's own reader, in the image (tensorboard is not a host dependency).
READ_EVENTS = """
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "histograms": 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({"scalars": {t: [e.value for e in acc.Scalars(t)] for t in tags["scalars"]},
                  "histograms": {t: len(acc.Histograms(t)) for t in tags["histograms"]}}))
"""


def rules_of(root) -> dict[str, dict]:
    return {r["rule"]: r for r in json.loads(
        (root / "output" / "data" / "rules.json").read_text())}


@pytest.fixture(scope="module")
def reported_run(train_image, tmp_path_factory):
    """A normal tiny job, with a torch.profiler window."""
    root = opt_ml(tmp_path_factory.mktemp("reported"), {**TINY_HPS, "profile-steps": "1-3"},
                  {"train": 12, "valid": 4, "test": 4})
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    return run


def test_every_rule_has_a_verdict(reported_run):
    rules = rules_of(reported_run.root)
    assert set(rules) == RULES
    assert all(r["status"] in STATUSES and r["reason"] and r["advice"] for r in rules.values())
    # Balanced classes, finite losses, gradients recorded: these are evaluated.
    assert rules["ClassImbalance"]["status"] == "NoIssuesFound"
    assert rules["ExplodingTensor"]["status"] == "NoIssuesFound"
    assert rules["VanishingGradient"]["status"] in ("IssuesFound", "NoIssuesFound")
    # No GPU here: the GPU rules say so instead of guessing.
    for name in ("LowGPUUtilization", "GPUMemoryIncrease", "BatchSize", "CPUBottleneck"):
        assert rules[name]["status"] == "NotEvaluated", rules[name]
    for r in rules.values():
        if r["status"] == "IssuesFound":
            assert r["first"] and r["first"]["epoch"] is not None, r


def test_verdict_lines_are_published_metrics(reported_run):
    """One RULE line per change, and one at the end for a rule never evaluated; the
    image's metric regexes read the verdicts (1 IssuesFound, 0 NoIssuesFound, 2
    NotEvaluated), the last value being the verdict in rules.json."""
    rules = rules_of(reported_run.root)
    codes = {"IssuesFound": 1, "NoIssuesFound": 0, "NotEvaluated": 2}
    for d in (d for d in METRIC_DEFS if d["Name"].startswith("rule:")):
        name = d["Name"].split(":", 1)[1]
        values = [int(v) for v in metrics.values(d["Regex"], reported_run.log)]
        assert values and values[-1] == codes[rules[name]["status"]], (name, values)
        assert values == sorted(values) and len(values) == len(set(values)), (name, values)
    assert {d["Name"] for d in METRIC_DEFS} >= {f"rule:{r}" for r in RULES}


def test_tensorboard_reads_the_event_files(reported_run, train_image):
    for folder in ("/opt/ml/output/tensorboard", "/opt/ml/output/data/tensorboard"):
        out = docker("run", "--rm", "--network", "none", "-v",
                     f"{reported_run.root}:/opt/ml", train_image, "python", "-c", READ_EVENTS,
                     folder).stdout
        events = json.loads(out.strip().splitlines()[-1])
        scalars = events["scalars"]
        for tag in ("loss/train", "loss/valid", "accuracy/train", "accuracy/valid",
                    "learning_rate", "throughput/images_per_s", "time/data_wait_share"):
            assert len(scalars[tag]) == 3, (tag, scalars.get(tag))
        assert len(scalars["loss/train_step"]) >= 12
        weights = [t for t in events["histograms"] if t.startswith("weights/")]
        grads = [t for t in events["histograms"] if t.startswith("gradients/")]
        assert len(weights) > 10 and len(grads) > 10
        assert all(events["histograms"][t] == 3 for t in weights)  # one set per epoch
    traces = list((reported_run.root / "output" / "tensorboard").glob("*.pt.trace.json"))
    assert traces, "no torch.profiler trace in the TensorBoard folder"


def test_report_is_self_contained(reported_run):
    html = (reported_run.root / "output" / "data" / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    for chart in ("chart-curves", "chart-time", "chart-per-class", "chart-confusion",
                  "chart-system"):
        assert re.search(rf'id="{chart}"[^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{{500}}',
                         html), chart
    for rule in RULES:
        assert rule in html
    assert "Hyperparameters" in html and "resnet18" in html


def test_report_rebuilds_from_the_output_archive(reported_run, train_image, tmp_path):
    data = reported_run.root / "output" / "data"
    archive = tmp_path / "output.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in data.iterdir():
            tar.add(p, arcname=p.name)
    docker("run", "--rm", "--network", "none", "-v", f"{tmp_path}:/job", train_image,
           "python", "-m", "dogbreed_train.report", "/job/output.tar.gz")
    rebuilt = (tmp_path / "report.html").read_text()
    original = (data / "report.html").read_text()
    assert rebuilt.count("data:image/") == original.count("data:image/") > 5


def test_lr_near_zero_trips_loss_not_decreasing(train_image, tmp_path):
    """lr=1e-10 (the range starts above 0): the loss cannot fall. No test channel: the
    report's confusion matrix comes from validation."""
    hps = {**TINY_HPS, "lr": "1e-10", "batch-size": "2", "epochs": "4", "image-size": "32"}
    root = opt_ml(tmp_path, hps, {"train": 12, "valid": 3})
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    verdict = rules_of(root)["LossNotDecreasing"]
    assert verdict["status"] == "IssuesFound", verdict
    assert re.search(r"RULE LossNotDecreasing status=1 IssuesFound epoch=\d+ step=\d+", run.log)
    assert (root / "output" / "data" / "valid_predictions.json").exists()
    assert 'id="chart-confusion"' in (root / "output" / "data" / "report.html").read_text()


# The loss grows about tenfold a step until float32 overflows (some 40 steps).
HUGE_LR = {**TINY_HPS, "optimizer": "sgd", "lr": "10", "momentum": "0.9", "epochs": "4",
           "batch-size": "2", "image-size": "32"}


def test_huge_lr_stops_at_the_first_nan_loss(train_image, tmp_path):
    root = opt_ml(tmp_path, HUGE_LR, {"train": 12, "valid": 4, "test": 4})
    run = run_train(train_image, root)
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    m = re.match(r"UserError: training loss became (nan|inf|-inf) at step (\d+) \(epoch \d+\); "
                 r"the last finite loss was [\d.]+ at step (\d+); likely cause: the learning "
                 r"rate lr=10 is too high", first)
    assert m, first
    assert int(m.group(3)) == int(m.group(2)) - 1
    verdict = rules_of(root)["ExplodingTensor"]
    assert verdict["status"] == "IssuesFound" and verdict["first"]["step"] == int(m.group(2))
    assert (root / "output" / "data" / "report.html").exists()
    assert not (root / "model" / "model.onnx").exists()


def test_nan_loss_continue_keeps_training(train_image, tmp_path):
    root = opt_ml(tmp_path, {**HUGE_LR, "nan-loss": "continue"},
                  {"train": 12, "valid": 4, "test": 4})
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    assert "non-finite loss, training goes on (nan-loss=continue)" in run.log
    assert rules_of(root)["ExplodingTensor"]["status"] == "IssuesFound"


def test_many_epochs_on_few_images_trip_overfit(train_image, tmp_path):
    hps = {**TINY_HPS, "epochs": "12", "batch-size": "3", "augment": "false",
           "image-size": "32"}
    root = opt_ml(tmp_path, hps, {"train": 2, "valid": 4})
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    verdict = rules_of(root)["Overfit"]
    assert verdict["status"] == "IssuesFound", verdict
    assert verdict["numbers"]["ratio"] > 0.1


def test_failing_report_writers_do_not_fail_the_job(train_image, tmp_path):
    """report.html and the TensorBoard folder cannot be written: the job still succeeds."""
    root = opt_ml(tmp_path, {**TINY_HPS, "epochs": "1"}, {"train": 6, "valid": 2, "test": 2})
    (root / "output" / "data" / "report.html").mkdir(parents=True)  # a folder: unwritable
    (root / "output" / "tensorboard").write_text("a file where the folder should be")
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    assert run.failure is None
    assert "report not written" in run.log
    assert "recording: _open_writer switched off" in run.log
    assert (root / "model" / "model.onnx").exists()
    assert set(rules_of(root)) == RULES


# ---- the report in a real browser -------------------------------------------------------

def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium is missing: run `make browser` (docker/harness/ensure-chromium.sh)")
    return found


def browse(report, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--user-data-dir=" +
         str(report.parent / ".chromium"), *args, report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    report = tmp_path / "report.html"
    shutil.copy(reported_run.root / "output" / "data" / "report.html", report)
    dom = browse(report, "--virtual-time-budget=5000", "--dump-dom").stdout
    for chart in ("chart-curves", "chart-time", "chart-per-class", "chart-confusion"):
        tag = re.search(rf'<img id="{chart}"[^>]*>', dom)
        assert tag and 'data-decoded="yes"' in tag.group(0), chart
    shot = tmp_path / "report.png"
    browse(report, "--window-size=1100,2400", f"--screenshot={shot}")
    with Image.open(shot) as img:
        img = img.convert("L")
        assert img.size == (1100, 2400)
        # Charts draw lines and filled bars: many rows of the page carry dark pixels.
        rows = [img.crop((0, y, img.width, y + 40)) for y in range(0, img.height, 40)]
        inked = sum(1 for r in rows if sum(1 for p in r.getdata() if p < 200) > 400)
        assert inked > 25, inked
