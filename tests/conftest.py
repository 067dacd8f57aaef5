"""Shared fixtures for the host-side tests: real images, real containers, real files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # in the SDK v2 venv (tests/sdk2)

from synthetic import make_dataset, make_hostile_dataset

# A shell without job control starts its background commands (`make test &`) with
# SIGINT and SIGQUIT ignored, and an ignored signal stays ignored in every child: the
# tests that Ctrl-C a script or SIGQUIT a stand-in for nginx would then see nothing
# happen. Handled here, both are reset to their defaults in every child started.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)

ROOT = Path(__file__).resolve().parents[1]
# tests/sdk2 needs SDK v2: its own venv runs it (tests/test_sdk2_compat.py)
collect_ignore = [] if version("sagemaker").startswith("2.") else ["sdk2"]
TRAIN_IMAGE = os.environ.get("TRAIN_IMAGE", "dogbreed-train:latest")
SERVE_IMAGE = os.environ.get("SERVE_IMAGE", "dogbreed-serve:latest")
DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
# Small and quick on 2 CPU cores, yet enough steps for the loss to fall.
TINY_HPS = {"model": "resnet18", "pretrained": "false", "epochs": "3", "batch-size": "8",
            "test-batch-size": "16", "image-size": "64", "lr": "0.003", "workers": "0"}


def docker(*args: str, check: bool = True, timeout: float = 600, **kw):
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check,
                          timeout=timeout, **kw)


def require_image(name: str) -> None:
    if docker("image", "inspect", name, check=False).returncode != 0:
        pytest.fail(f"image {name} is missing: run `make images` first")


@pytest.fixture(scope="session")
def train_image() -> str:
    require_image(TRAIN_IMAGE)
    return TRAIN_IMAGE


@pytest.fixture(scope="session")
def serve_image() -> str:
    require_image(SERVE_IMAGE)
    return SERVE_IMAGE


def opt_ml(root: Path, hyperparameters: dict | None, per_class=None) -> Path:
    """An /opt/ml tree as SageMaker lays it out, with a generated dataset."""
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    channels = ["train", "valid", "test"] if per_class is None else list(per_class or {})
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
             "RecordWrapperType": "None"} for c in channels}))
    if hyperparameters is not None:
        (root / "input" / "config" / "hyperparameters.json").write_text(
            json.dumps(hyperparameters))
    (root / "model").mkdir(exist_ok=True)
    (root / "output").mkdir(exist_ok=True)
    if per_class != {}:
        make_dataset(root / "input" / "data", per_class)
    return root


class TrainRun:
    def __init__(self, proc: subprocess.CompletedProcess, root: Path):
        self.rc, self.log, self.root = proc.returncode, proc.stdout + proc.stderr, root

    @property
    def failure(self) -> str | None:
        path = self.root / "output" / "failure"
        return path.read_text() if path.exists() else None


def run_train(image: str, root: Path, *extra: str, timeout: float = 900) -> TrainRun:
    """`docker run IMAGE train` on a local /opt/ml tree, offline, removed afterwards."""
    name = f"dogbreed-test-{uuid.uuid4().hex[:8]}"
    try:
        proc = docker("run", "--rm", "--name", name, "--network", "none",
                      "--hostname", "algo-1", "-v", f"{root}:/opt/ml", *extra, image, "train",
                      check=False, timeout=timeout)
    finally:
        docker("rm", "-f", name, check=False)
    return TrainRun(proc, root)


@pytest.fixture(scope="session")
def trained_model(train_image, tmp_path_factory) -> TrainRun:
    """One real training run, shared by the tests that need its artifacts."""
    root = opt_ml(tmp_path_factory.mktemp("opt_ml"), TINY_HPS,
                  {"train": 12, "valid": 4, "test": 4})
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    return run


# A second model unlike trained_model: other labels (two classes) and another input
# size, so that a multi-model container shows each model's own labels and preprocessing.
SECOND_CLASSES = ["001.Sun_flowers", "002.Moon_rocks"]
SECOND_LABELS = [c.split(".", 1)[1] for c in SECOND_CLASSES]


@pytest.fixture(scope="session")
def second_model(train_image, tmp_path_factory) -> TrainRun:
    root = opt_ml(tmp_path_factory.mktemp("opt_ml_second"), dict(TINY_HPS, **{
        "image-size": "48"}), {})
    make_dataset(root / "input" / "data", {"train": 12, "valid": 4, "test": 4},
                 classes=SECOND_CLASSES)
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    return run


HOSTILE_HPS = {**TINY_HPS, "epochs": "2", "image-size": "32", "bad-images": "skip"}


@pytest.fixture(scope="session")
def hostile_run(train_image, tmp_path_factory) -> TrainRun:
    """A real training run on data whose folder and file names forge log lines
    (synthetic.make_hostile_dataset), shared by the tests of what the regexes read."""
    root = opt_ml(tmp_path_factory.mktemp("opt_ml"), HOSTILE_HPS, {})
    make_hostile_dataset(root / "input" / "data", {"train": 8, "valid": 2, "test": 2})
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    return run


@pytest.fixture(scope="module")
def moto_server():
    """A real moto server that records every request (tests/aws_stand_in.py)."""
    from aws_stand_in import RecordingMotoServer

    server = RecordingMotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def remove_local_mode_leftovers(tmp_path_factory):
    """Local mode leaves containers and a network behind, and a failed local test can
    leave an endpoint running. Every local run of this session lives under its base
    temp folder: only those go."""
    yield
    from sdk import remove_leftovers

    remove_leftovers(tmp_path_factory.getbasetemp())
