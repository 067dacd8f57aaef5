"""SDK v3's ModelTrainer in LOCAL_CONTAINER mode as the real client of the training image."""

from __future__ import annotations

import json
import tarfile

from conftest import TINY_HPS
from sdk import opt_out_of_telemetry, train_locally
from synthetic import make_dataset


def train(train_image: str, tmp_path, instance_count: int):
    """ModelTrainer.train() in local containers on a tiny dataset; returns the model
    tarball's member names and its model.json."""
    opt_out_of_telemetry(tmp_path)
    data = make_dataset(tmp_path / "data", {"train": 8, "valid": 2, "test": 2})
    tarball = train_locally(train_image, {c: data / c for c in ("train", "valid", "test")},
                            {**TINY_HPS, "epochs": 2}, tmp_path / "job", instance_count)
    with tarfile.open(tarball) as tar:
        names = sorted(n.lstrip("./") for n in tar.getnames() if n not in (".", "./"))
        meta = json.load(tar.extractfile([m for m in tar.getmembers()
                                          if m.name.endswith("model.json")][0]))
    return names, meta


def test_model_trainer_produces_model_tarball(train_image, tmp_path):
    names, meta = train(train_image, tmp_path, instance_count=1)
    assert names == ["model.json", "model.onnx"]
    assert meta["hyperparameters"]["epochs"] == 2
    assert len(meta["labels"]) == 3


def test_two_instances_train_one_model(train_image, tmp_path, capfd):
    """instance_count=2: two containers, torchrun across them over gloo, one model.
    v3 local mode names the interface "ethwe", which the containers lack."""
    names, meta = train(train_image, tmp_path, instance_count=2)
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert "--nnodes=2" in log and "--node-rank=0" in log and "--node-rank=1" in log
    assert "network interface: ethwe (named) does not exist here; eth0, which routes to algo-1" \
        in log
    assert "2 process(es)" in log
    assert names == ["model.json", "model.onnx"]
    assert len(meta["labels"]) == 3 and meta["metrics"]["epochs"] == 2
