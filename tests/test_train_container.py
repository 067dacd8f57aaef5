"""`docker run dogbreed-train train` under the SageMaker training contract."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from conftest import ROOT, TINY_HPS, docker, opt_ml, run_train
from dogbreed_contract import metrics

METRIC_DEFS = metrics.definitions()


def metric_values(log: str, name: str) -> list[float]:
    regex = next(d["Regex"] for d in METRIC_DEFS if d["Name"] == name)
    return [float(m) for m in metrics.values(regex, log)]  # line by line, as SageMaker


def test_training_writes_artifacts_and_metrics(trained_model):
    model_dir = trained_model.root / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.onnx"]
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["labels"] == ["Red_stripes", "Green_bars", "Blue_checks"]
    assert meta["preprocess"]["image_size"] == 64
    assert meta["input_name"] == "input" and meta["format"] == "onnx"
    assert 0.0 <= meta["metrics"]["test_acc"] <= 1.0
    out = trained_model.root / "output" / "data"
    record = json.loads((out / "metrics.json").read_text())
    assert len(record["history"]) == 3
    with Image.open(out / "training_curves.png") as png:
        assert png.format == "PNG" and png.width > 300
    assert trained_model.failure is None


def test_published_regexes_read_the_real_log(trained_model):
    log = trained_model.log
    for name in ("train:loss", "train:accuracy", "valid:loss", "valid:accuracy"):
        assert len(metric_values(log, name)) == 3, name
    assert len(metric_values(log, "test:accuracy")) == 1
    assert metric_values(log, "epoch") == [1, 2, 3]
    record = json.loads((trained_model.root / "output/data/metrics.json").read_text())
    # The numbers the regexes read are the ones the job recorded.
    assert metric_values(log, "valid:accuracy") == pytest.approx(
        [h["valid_acc"] for h in record["history"]], abs=1e-4)


def test_loss_falls(trained_model):
    losses = metric_values(trained_model.log, "train:loss")
    assert losses[-1] < losses[0] * 0.8, losses


def test_missing_train_channel_fails_clearly(train_image, tmp_path):
    root = opt_ml(tmp_path, TINY_HPS, per_class={})
    run = run_train(train_image, root)
    assert run.rc == 2  # input errors: 2, internal errors: 1
    assert run.failure.startswith("UserError: the required 'train' channel is missing")


def test_empty_train_channel_fails_clearly(train_image, tmp_path):
    root = opt_ml(tmp_path, TINY_HPS, per_class={})
    (root / "input" / "data" / "train").mkdir(parents=True)
    run = run_train(train_image, root)
    assert run.rc != 0 and "has no class folders" in run.failure.splitlines()[0]


def test_bad_hyperparameter_fails_clearly(train_image, tmp_path):
    root = opt_ml(tmp_path, {**TINY_HPS, "learning_rate": "0.1", "optimizer": "rmsprop"},
                  per_class={"train": 2})
    run = run_train(train_image, root)
    assert run.rc != 0
    first = run.failure.splitlines()[0]
    assert "unknown hyperparameter 'learning-rate'" in first and "'optimizer'" in first
    assert "Traceback" not in run.failure


def test_stale_failure_file_does_not_survive(train_image, tmp_path):
    root = opt_ml(tmp_path, {**TINY_HPS, "epochs": "1", "max-steps-per-epoch": "1"},
                  per_class={"train": 4})
    (root / "output" / "failure").write_text("UserError: from an earlier run\n")
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-2000:]
    assert run.failure is None


def test_pretrained_weights_from_weights_channel(train_image, tmp_path):
    """A network-isolated job with pretrained=true reads its weights from a channel."""
    root = opt_ml(tmp_path, {**TINY_HPS, "pretrained": "true", "epochs": "1",
                             "max-steps-per-epoch": "1"}, per_class={"train": 4})
    weights = root / "input" / "data" / "weights"
    weights.mkdir()
    docker("run", "--rm", "--network", "none", "-v", f"{weights}:/w", train_image, "python",
           "-c", "import torch, torchvision; "
                 "torch.save(torchvision.models.resnet18().state_dict(), '/w/resnet18.pth')")
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-2000:]
    assert "weights from the weights channel: resnet18.pth" in run.log


def test_pretrained_without_weights_or_network_says_what_to_do(train_image, tmp_path):
    root = opt_ml(tmp_path, {**TINY_HPS, "pretrained": "true"}, per_class={"train": 2})
    run = run_train(train_image, root)
    assert run.rc != 0
    assert "weights' channel" in run.failure and "pretrained=false" in run.failure


def test_help_lists_hyperparameters(train_image):
    out = docker("run", "--rm", train_image, "python", "-m", "dogbreed_train", "--help").stdout
    for name in ("--model", "--hidden-units", "--freeze-backbone", "--weight-decay"):
        assert name in out


def test_hyperparameter_table_matches_the_image(train_image):
    """Every hyperparameter the image knows is in docs/training.md's table, with its default."""
    script = ("import json; from dogbreed_train.config import field_help; "
              "print(json.dumps([[n, list(d) if isinstance(d, tuple) else d] "
              "for n, _, d in field_help()]))")
    known = json.loads(docker("run", "--rm", train_image, "python", "-c", script).stdout)
    doc = (ROOT / "docs" / "training.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| `([^`]*)` \|", doc, re.M))
    assert set(rows) == {name for name, _ in known}
    for name, default in known:
        shown = json.dumps(default) if isinstance(default, (bool, list)) else str(default)
        assert rows[name] == shown, (name, rows[name], shown)
