"""SageMaker Python SDK v2 local mode: every SDK call the local workflow makes.

Local mode runs our images with docker-compose exactly as SageMaker would, with no
AWS account: it needs a region but no credentials. SDK v2 is used because v3
dropped Estimator, Model.deploy, Predictor and local mode (see README).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
# Local mode never calls IAM; any well-formed role ARN will do.
LOCAL_ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def opt_out_of_telemetry(directory: Path) -> None:
    """The SDK reports usage unless told not to; a config file tells it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)


def session(container_root: Path):
    """A LocalSession whose endpoint listens on a free port (8080 may be taken)."""
    from sagemaker.local import LocalSession

    container_root.mkdir(parents=True, exist_ok=True)
    sess = LocalSession(boto_session=boto3.Session(region_name=REGION))
    sess.config = {"local": {"local_code": True, "container_root": str(container_root),
                             "serving_port": free_port()}}
    return sess


def train(image: str, channels: dict[str, Path], hyperparameters: dict, output: Path,
          sess, logs: bool = True) -> str:
    """Run a local training job; returns the model.tar.gz path."""
    from sagemaker.estimator import Estimator

    estimator = Estimator(image_uri=image, role=LOCAL_ROLE, instance_count=1,
                          instance_type="local", hyperparameters=hyperparameters,
                          output_path=f"file://{output}", sagemaker_session=sess)
    estimator.fit({name: f"file://{path}" for name, path in channels.items()}, logs=logs)
    return estimator.model_data.replace("file://", "")


def deploy(image: str, model_tarball: str, sess):
    """Deploy to a local endpoint; returns a Predictor that sends raw bytes."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    model = Model(image_uri=image, model_data=f"file://{model_tarball}", role=LOCAL_ROLE,
                  sagemaker_session=sess, predictor_cls=Predictor)
    predictor = model.deploy(initial_instance_count=1, instance_type="local")
    predictor.serializer = IdentitySerializer(content_type="image/jpeg")
    predictor.deserializer = JSONDeserializer()
    return predictor


def predict(predictor, body: bytes, content_type: str) -> dict:
    from sagemaker.serializers import IdentitySerializer

    predictor.serializer = IdentitySerializer(content_type=content_type)
    return predictor.predict(body)


def remove_leftovers(images: list[str]) -> None:
    """Local mode leaves its containers (named ...-algo-N-...) and a network behind."""
    import shutil
    import subprocess

    docker = shutil.which("docker", path="/usr/bin") or "docker"
    for image in images:
        ids = subprocess.run([docker, "ps", "-aq", "--filter", f"ancestor={image}",
                              "--filter", "name=algo-"], capture_output=True,
                             text=True).stdout.split()
        if ids:
            subprocess.run([docker, "rm", "-f", *ids], capture_output=True)
    subprocess.run([docker, "network", "rm", "sagemaker-local"], capture_output=True)
