"""The rules of verdicts.py on hand-made statistics, and the Recorder on a real model."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from dogbreed_contract import metrics
from dogbreed_train import recording, verdicts


def steps(values, epoch=1):
    return [(i, epoch, float(v)) for i, v in enumerate(values)]


def epochs(*pairs):
    return [{"epoch": i + 1, "train_loss": t, "valid_loss": v} for i, (t, v) in
            enumerate(pairs)]


def outcome(rule, stats):
    return verdicts.RULES[rule](stats, **verdicts.DEFAULTS[rule])


def test_loss_not_decreasing_flat_vs_falling():
    flat = {"steps": steps([1.0, 1.01, 0.99, 1.0] * 10)}
    falling = {"steps": steps([2.0 * 0.97 ** i for i in range(40)])}
    assert outcome("LossNotDecreasing", flat).status == "IssuesFound"
    assert outcome("LossNotDecreasing", falling).status == "NoIssuesFound"
    assert outcome("LossNotDecreasing", {"steps": steps([1.0] * 5)}).status == "NotEvaluated"


def test_overfit_uses_the_ratio_threshold():
    assert outcome("Overfit", {"epochs": epochs((1.0, 1.05))}).status == "NoIssuesFound"
    hit = outcome("Overfit", {"epochs": epochs((1.0, 1.05), (0.5, 0.9))})
    assert hit.status == "IssuesFound" and hit.epoch == 2


def test_overtraining_waits_for_patience():
    stalled = [(1.0, 1.0)] + [(0.999, 1.0)] * 5
    assert outcome("Overtraining", {"epochs": epochs(*stalled)}).status == "IssuesFound"
    assert outcome("Overtraining", {"epochs": epochs(*stalled[:5])}).status == "NoIssuesFound"


def test_vanishing_and_exploding():
    stats = {"layers": ["a", "b"], "steps": steps([1.0, 0.9]),
             "gradients": [{"step": 0, "epoch": 1, "mean_abs": [1e-3, 1e-9], "l2": [1, 1],
                            "weight_l2": [1, 1]}]}
    assert outcome("VanishingGradient", stats).status == "IssuesFound"
    assert outcome("ExplodingTensor", stats).status == "NoIssuesFound"
    stats["steps"].append((2, 1, math.nan))
    hit = outcome("ExplodingTensor", stats)
    assert hit.status == "IssuesFound" and hit.step == 2


def test_class_imbalance_counts():
    assert outcome("ClassImbalance", {"class_counts": {"a": 100, "b": 9}}).status == "IssuesFound"
    assert outcome("ClassImbalance", {"class_counts": {"a": 10, "b": 9}}).status == \
        "NoIssuesFound"


def test_system_rules_wait_for_patience_and_need_a_gpu():
    cpu_only = {"system": {"cpu": [50.0] * 2000, "iowait": [0.0] * 2000}}
    assert outcome("LowGPUUtilization", cpu_only).status == "NotEvaluated"
    n = 1600
    idle = {"system": {"cpu": [20.0] * n, "iowait": [0.0] * n, "gpu_util": [30.0] * n,
                       "gpu_mem": [10.0] * n, "epoch": [1] * n}}
    assert outcome("LowGPUUtilization", idle).status == "IssuesFound"
    assert outcome("BatchSize", idle).status == "IssuesFound"
    assert outcome("GPUMemoryIncrease", idle).status == "NoIssuesFound"
    short = {"system": {k: v[:500] for k, v in idle["system"].items()}}
    assert outcome("BatchSize", short).status == "NotEvaluated"


def test_rulebook_is_sticky_and_logs_each_change_as_a_metric(caplog):
    book = verdicts.RuleBook()
    caplog.set_level(logging.INFO, "dogbreed_train.rules")
    falling = {"steps": steps([2.0 * 0.97 ** i for i in range(40)])}
    book.evaluate(falling, only=("LossNotDecreasing",))
    book.evaluate(falling, only=("LossNotDecreasing",))  # no change, no line
    flat = {"steps": falling["steps"] + [(40 + i, 2, 1.0) for i in range(20)]}
    book.evaluate(flat, only=("LossNotDecreasing",))
    book.evaluate(falling, only=("LossNotDecreasing",))  # IssuesFound stays
    assert book.verdicts["LossNotDecreasing"].status == "IssuesFound"
    assert book.verdicts["LossNotDecreasing"].first == {"epoch": 2, "step": 49}
    regex = next(d["Regex"] for d in metrics.definitions()
                 if d["Name"] == "rule:LossNotDecreasing")
    log = "\n".join(metrics.LineFormatter().format(r) for r in caplog.records)  # the job's lines
    assert [int(v) for v in metrics.values(regex, log)] == [0, 1]
    json.dumps(book.as_list())  # JSON-ready


def test_recorder_stops_at_a_nan_loss_and_names_the_step(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    rec = recording.Recorder(
        model, main=True, enabled=True, interval=100, nan_loss="stop",
        device=torch.device("cpu"), amp=None, lr=5.0, tensorboard_dir=tmp_path / "tb",
        out_dir=tmp_path / "data", class_counts={"a": 3, "b": 3}, hyperparameters={})
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.randn(8, 4)
    for step in range(3):
        model.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        rec.after_backward(step, 1, loss, scaler)
    assert len(rec.stats["early"]) == 3 and len(rec.stats["early"][0]["relu_var"]) == 1
    with pytest.raises(recording.NonFiniteLoss, match=r"became nan at step 3 \(epoch 1\); "
                                                      r"the last finite loss was [\d.]+ at "
                                                      r"step 2; likely cause: the learning "
                                                      r"rate lr=5 is too high"):
        rec.after_backward(3, 1, torch.tensor(float("nan")), scaler)
    assert rec.rules.verdicts["ExplodingTensor"].status == "IssuesFound"
    rec.close()
    assert json.loads((tmp_path / "data" / "rules.json").read_text())
    assert any(Path(tmp_path / "data" / "tensorboard").iterdir())
