"""The SageMaker Python SDK v2's local mode as the real client of the training image."""

from __future__ import annotations

import json
import tarfile

from conftest import TINY_HPS
from sdk import ROLE, local_session, opt_out_of_telemetry
from synthetic import make_dataset


def fit_locally(train_image: str, tmp_path, instance_count: int, logs: bool):
    """Estimator.fit in local mode on a tiny dataset; returns the model tarball's
    member names and its model.json."""
    opt_out_of_telemetry(tmp_path)
    from sagemaker.estimator import Estimator

    data = make_dataset(tmp_path / "data", {"train": 8, "valid": 2, "test": 2})
    estimator = Estimator(
        image_uri=train_image, role=ROLE, instance_count=instance_count,
        instance_type="local", hyperparameters={**TINY_HPS, "epochs": 2},
        output_path=f"file://{tmp_path / 'out'}",
        sagemaker_session=local_session(tmp_path / "containers"),
    )
    estimator.fit({c: f"file://{data / c}" for c in ("train", "valid", "test")}, logs=logs)
    tarball = estimator.model_data.replace("file://", "")
    with tarfile.open(tarball) as tar:
        names = sorted(n.lstrip("./") for n in tar.getnames() if n not in (".", "./"))
        meta = json.load(tar.extractfile([m for m in tar.getmembers()
                                          if m.name.endswith("model.json")][0]))
    return names, meta


def test_estimator_fit_produces_model_tarball(train_image, tmp_path):
    names, meta = fit_locally(train_image, tmp_path, instance_count=1, logs=False)
    assert names == ["model.json", "model.onnx"]
    assert meta["hyperparameters"]["epochs"] == 2
    assert len(meta["labels"]) == 3


def test_two_instances_train_one_model(train_image, tmp_path, capfd):
    """instance_count=2: two containers, torchrun across them over gloo, one model."""
    names, meta = fit_locally(train_image, tmp_path, instance_count=2, logs=True)
    log = capfd.readouterr().out
    assert "--nnodes=2" in log and "--node-rank=0" in log and "--node-rank=1" in log
    assert "2 process(es)" in log
    assert names == ["model.json", "model.onnx"]
    assert len(meta["labels"]) == 3 and meta["metrics"]["epochs"] == 2
