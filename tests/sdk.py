"""SageMaker Python SDK v2 local mode, set up as a real user would (no AWS account)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3

REGION = "us-east-1"
ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def opt_out_of_telemetry(directory: Path) -> None:
    config = directory / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)


def local_session(container_root: Path):
    from sagemaker.local import LocalSession

    container_root.mkdir(parents=True, exist_ok=True)
    session = LocalSession(boto_session=boto3.Session(region_name=REGION))
    session.config = {"local": {"local_code": True, "container_root": str(container_root),
                                "serving_port": free_port()}}
    return session
