"""The rule engine (rules.py) on hand-made statistics, the Recorder on a real model, and
the two sources of its statistics (the Recorder, smdebug tensors) on the same training."""

import json
import logging
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from dogbreed_contract import metrics
from dogbreed_train import debugger, observers, recording, rules


def steps(values, epoch=1):
    return [(i, epoch, float(v)) for i, v in enumerate(values)]


def epochs(*pairs):
    return [{"epoch": i + 1, "train_loss": t, "valid_loss": v} for i, (t, v) in
            enumerate(pairs)]


def outcome(rule, stats):
    return rules.RULES[rule](stats, **rules.DEFAULTS[rule])


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
    book = rules.RuleBook()
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


# ---- the engine's two sources on one training: the Recorder and smdebug's tensors

def _net():
    return torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(4, 16), relu=torch.nn.ReLU(),
                                           fc2=torch.nn.Linear(16, 2)))


def _observed_training(tmp_path, monkeypatch, lr: float, epochs: int = 6):
    """A small net trained under both observers, the smdebug hook and the Recorder,
    called at the loop's points as train.py calls them. Returns both sources'
    statistics, the trained model and the one the observers would export."""
    cfg = tmp_path / "hook.json"
    cfg.write_text(json.dumps({
        "LocalPath": str(tmp_path / "tensors"), "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [
            {"CollectionName": "losses"}, {"CollectionName": "gradients"},
            {"CollectionName": "relu_input",
             "CollectionParameters": {"include_regex": ".*relu_input"}}]}))
    monkeypatch.setenv("SMDEBUG_CONFIG_FILE_PATH", str(cfg))
    torch.manual_seed(0)
    model, criterion = _net(), torch.nn.CrossEntropyLoss()
    watchers = observers.Observers(debugger.observers(model, criterion, _net))
    assert [type(w) for w in watchers] == [debugger.Hook]
    recorder = recording.Recorder(
        model, main=True, enabled=True, interval=1, nan_loss="stop",
        device=torch.device("cpu"), amp=None, lr=lr, tensorboard_dir=tmp_path / "tb",
        out_dir=tmp_path / "data", class_counts={"a": 32, "b": 32}, hyperparameters={})
    watchers.append(recorder)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        watchers.start_train()
        losses = []
        for _ in range(4):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            watchers.after_backward(step, epoch, loss, scaler)
            optimizer.step()
            losses.append(loss.item())
            step += 1
        watchers.end_train()
        model.eval()
        watchers.start_eval()
        with torch.no_grad():
            logits = model(x)
            watchers.eval_batch(logits, y)
            valid = torch.nn.functional.cross_entropy(logits, y).item()
        watchers.end_epoch({"epoch": epoch, "train_loss": sum(losses) / len(losses),
                            "valid_loss": valid}, None, {})
    watchers.end_training()
    exported = watchers.before_export(model)
    watchers.close()
    return recorder.stats, debugger.read_tensors(tmp_path / "tensors"), model, exported


def _statuses(stats):
    book = rules.RuleBook(debugger.RULES, announce=False)
    book.evaluate(stats)
    return {name: v.status for name, v in book.verdicts.items()}


@pytest.mark.parametrize("lr", [0.0, 0.5])
def test_tensors_and_recorder_are_one_series(tmp_path, monkeypatch, lr):
    """smdebug's saved tensors and the Recorder's statistics of the same training are the
    same series: step losses, validation passes, per-layer mean |gradient|; so the one
    engine gives the same verdicts on both where it reads them alike."""
    recorded, saved, model, exported = _observed_training(tmp_path, monkeypatch, lr)
    assert saved["saved_steps"] and "saved_steps" not in recorded
    assert [v for _, _, v in saved["steps"]] == pytest.approx(
        [v for _, _, v in recorded["steps"]], rel=1e-6)
    assert [e for _, e, _ in saved["steps"]] == [e for _, e, _ in recorded["steps"]]
    for key in ("train_loss", "valid_loss"):
        assert [e[key] for e in saved["epochs"]] == pytest.approx(
            [e[key] for e in recorded["epochs"]], rel=1e-6)
    assert len(saved["gradients"]) == len(recorded["gradients"]) == 24
    for layer, name in enumerate(recorded["layers"]):
        column = next(i for i, n in enumerate(saved["layers"]) if n.endswith(name))
        assert [g["mean_abs"][column] for g in saved["gradients"]] == pytest.approx(
            [g["mean_abs"][layer] for g in recorded["gradients"]], rel=1e-4)
    assert len(saved["early"]) == 10 and all(len(e["relu_var"]) == 1 for e in saved["early"])

    new, old = _statuses(saved), _statuses(recorded)
    alike = ("VanishingGradient", "Overfit", "LossNotDecreasing")
    if lr == 0.0:  # a model that does not learn: every rule, however it reads, says so
        alike = debugger.RULES
        assert new["LossNotDecreasing"] == new["Overtraining"] == "IssuesFound"
    assert {r: new[r] for r in alike} == {r: old[r] for r in alike}

    # The model to export is a bare copy: smdebug's hooks stay on the trained one.
    assert exported is not model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in exported.modules())
    for a, b in zip(model.state_dict().values(), exported.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_observers_are_called_in_order_and_export_chains():
    calls = []

    class Watch(observers.Observer):
        def __init__(self, name):
            self.name = name

        def start_eval(self):
            calls.append(self.name)

        def before_export(self, model):
            return model + [self.name]

    watchers = observers.Observers([Watch("a"), observers.Observer(), Watch("b")])
    watchers.start_eval()
    watchers.end_epoch({}, None, {})  # a point nobody needs is a no-op
    assert calls == ["a", "b"]
    assert watchers.before_export([]) == ["a", "b"]
