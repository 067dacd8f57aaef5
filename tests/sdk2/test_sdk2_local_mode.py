"""SDK v2 (end of support 2027-07-06) stays a client of both images: v2 local mode fits
the training image, deploys the serving image and predicts raw JPEG and PNG bytes.

Runs in its own venv (.venv-sdk2, tests/requirements-sdk2.lock): v2 and v3 are both
the `sagemaker` package. tests/test_sdk2_compat.py runs it from the main suite.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile

import boto3
import numpy as np
from PIL import Image

from conftest import TINY_HPS
from synthetic import CLASSES, make_dataset

ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"  # local mode never calls IAM
LABELS = {c.split(".", 1)[1] for c in CLASSES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_session(root):
    """A LocalSession (region, no credentials) whose endpoint takes a free port."""
    from sagemaker.local import LocalSession

    config = root / "sagemaker-config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)
    session = LocalSession(boto_session=boto3.Session(region_name="us-east-1"))
    session.config = {"local": {"local_code": True, "container_root": str(root),
                                "serving_port": free_port()}}
    return session


def test_v2_fit_deploy_predict_raw_jpeg_and_png(train_image, serve_image, tmp_path):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    session = local_session(tmp_path / "containers")
    data = make_dataset(tmp_path / "data", {"train": 8, "valid": 2, "test": 2})
    estimator = Estimator(image_uri=train_image, role=ROLE, instance_count=1,
                          instance_type="local", hyperparameters={**TINY_HPS, "epochs": 1},
                          output_path=f"file://{tmp_path / 'out'}", sagemaker_session=session)
    estimator.fit({c: f"file://{data / c}" for c in ("train", "valid", "test")}, logs=False)
    tarball = estimator.model_data.replace("file://", "")
    with tarfile.open(tarball) as tar:
        assert sorted(n.lstrip("./") for n in tar.getnames() if n not in (".", "./")) == [
            "model.json", "model.onnx"]
        assert len(json.load(tar.extractfile("model.json"))["labels"]) == 3

    model = Model(image_uri=serve_image, model_data=f"file://{tarball}", role=ROLE,
                  sagemaker_session=session, predictor_cls=Predictor)
    predictor = model.deploy(initial_instance_count=1, instance_type="local")
    try:
        img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 80, 3),
                                                                 dtype=np.uint8))
        for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
            buf = io.BytesIO()
            img.save(buf, fmt)
            predictor.serializer = IdentitySerializer(content_type=content_type)
            predictor.deserializer = JSONDeserializer()
            top = predictor.predict(buf.getvalue())["predictions"]
            assert len(top) == 3 and {p["label"] for p in top} == LABELS
    finally:
        predictor.delete_endpoint()
