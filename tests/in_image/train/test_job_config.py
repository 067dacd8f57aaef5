"""The job, read once: the config files the training toolkit reads before any of the
program's code runs, validated into one value that is handed down (DOGBREED_JOB)."""

import json
import os
import subprocess
import sys

import pytest

from dogbreed_train import config, job_config
from dogbreed_train.cluster import Cluster
from dogbreed_train.errors import UserError

GOOD = {"hyperparameters.json": {"epochs": "1"},
        "inputdataconfig.json": {"train": {"TrainingInputMode": "File"},
                                 "valid": {"TrainingInputMode": "FastFile"}},
        "resourceconfig.json": {"current_host": "algo-1", "hosts": ["algo-1"]}}


def write_config(base, **override):
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    for name, value in {**GOOD, **override}.items():
        if value is not None:
            (config / name).write_text(value if isinstance(value, str) else json.dumps(value))
    return config


def test_good_files_pass(sm_base):
    write_config(sm_base)
    job_config.read()


@pytest.mark.parametrize("text,needle", [
    ("", "is empty: it must hold a JSON object, e.g. {} for none"),
    ("  \n", "is empty"),
    ("[]", "must hold a JSON object ({...}), not a list ('[]')"),
    ('"epochs=1"', "not a str"),
    ("{epochs: 1}", "is not valid JSON: Expecting property name"),
])
def test_unreadable_hyperparameters_file_is_one_line_naming_it(sm_base, text, needle):
    write_config(sm_base, **{"hyperparameters.json": text})
    with pytest.raises(UserError) as info:
        job_config.read()
    message = str(info.value)
    assert message.startswith(f"{sm_base}/input/config/hyperparameters.json ")
    assert needle in message and "\n" not in message


def test_missing_file_says_what_to_write(sm_base):
    write_config(sm_base, **{"resourceconfig.json": None})
    with pytest.raises(UserError, match="resourceconfig.json is missing"):
        job_config.read()


def test_pipe_mode_is_refused(sm_base):
    write_config(sm_base, **{"inputdataconfig.json": {
        "train": {"TrainingInputMode": "Pipe"}, "test": {"TrainingInputMode": "Pipe"},
        "valid": {"TrainingInputMode": "File"}}})
    with pytest.raises(UserError) as info:
        job_config.read()
    assert str(info.value).startswith("Pipe mode is not supported: use File or FastFile "
                                      "(TrainingInputMode of channel(s) test, train)")


# ---- read once, handed down


@pytest.fixture
def no_job(monkeypatch):
    """No job handed down (DOGBREED_JOB) and no SM_* variables: the files decide."""
    for var in (job_config.ENV, "SM_HOSTS", "SM_CURRENT_HOST", "SM_NUM_GPUS",
                "SM_NUM_CPUS", "SM_NETWORK_INTERFACE_NAME"):
        monkeypatch.delenv(var, raising=False)


def test_the_job_is_one_validated_value(sm_base, no_job):
    write_config(sm_base, **{
        "hyperparameters.json": {"epochs": '"3"', "hidden-units": "[64,32]", "lr": "0.01"},
        "resourceconfig.json": {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"],
                                "current_instance_type": "ml.g5.xlarge"}})
    job = job_config.read()
    assert (job.hyperparameters.epochs, job.hyperparameters.hidden_units,
            job.hyperparameters.lr) == (3, (64, 32), 0.01)
    assert dict(job.input_modes) == {"train": "File", "valid": "FastFile"}
    assert job.cluster.hosts == ("algo-1", "algo-2") and job.cluster.host_rank == 1
    assert job.cluster.instance_type == "ml.g5.xlarge"
    with pytest.raises(AttributeError):
        job.cluster = Cluster()  # frozen


def test_a_bad_hyperparameter_is_refused_with_the_files(sm_base, no_job):
    write_config(sm_base, **{"hyperparameters.json": {"lr": "fast"}})
    with pytest.raises(UserError, match="invalid hyperparameters: 'lr'='fast'"):
        job_config.read()


def test_the_handed_down_job_is_the_one_read_and_no_file_is_read_again(sm_base, no_job,
                                                                       monkeypatch):
    write_config(sm_base, **{"hyperparameters.json": {"epochs": "4", "model": "resnet18"}})
    job = job_config.read()
    env = job.to_env()
    assert set(env) == {"DOGBREED_JOB"}
    assert job_config.Job.from_json(env["DOGBREED_JOB"]) == job
    monkeypatch.setenv(job_config.ENV, env["DOGBREED_JOB"])
    for name in job_config.FILES:  # what launch.py and each rank read instead
        (sm_base / "input" / "config" / name).write_text("not json")
    assert job_config.current() == job
    flagged = job_config.current(overrides={"epochs": "9"})  # flags still override
    assert flagged.hyperparameters.epochs == 9 and flagged.hyperparameters.model == "resnet18"


def test_by_hand_missing_files_are_defaults_and_flags_override_the_file(sm_base, no_job):
    job = job_config.current()
    assert job.hyperparameters == config.parse({})
    assert job.cluster.hosts == ("algo-1",) and dict(job.input_modes) == {}
    config_dir = sm_base / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps({"lr": "-1", "epochs": "2"}))
    job = job_config.current(overrides={"lr": "0.5"})
    assert (job.hyperparameters.lr, job.hyperparameters.epochs) == (0.5, 2)


def test_gpus_are_counted_once_by_whoever_needs_them(sm_base, no_job, monkeypatch):
    import torch

    write_config(sm_base)
    assert job_config.read().cluster.gpus is None  # not counted: no torch to validate
    counted = job_config.read().cluster.with_gpus_counted()
    assert counted.gpus == torch.cuda.device_count()
    assert counted.with_gpus_counted() is counted
    monkeypatch.setenv("SM_NUM_GPUS", "4")
    assert job_config.read().cluster.gpus == 4


@pytest.mark.parametrize("module", ["dogbreed_train.config", "dogbreed_train.job_config",
                                    "dogbreed_train.entrypoint", "dogbreed_train.cli"])
def test_reading_the_job_imports_no_torch(module):
    """The job is validated in the container's first second, before torch (seconds)."""
    probe = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], env=os.environ).returncode == 0


def test_the_train_command_refuses_a_bad_job_before_the_toolkit(sm_base, no_job):
    """bin/train, as `docker run IMAGE train` starts it: no toolkit, no launcher."""
    write_config(sm_base, **{"hyperparameters.json": {"epochs": "0", "optimizer": "rmsprop"}})
    run = subprocess.run(["/opt/program/bin/train"], capture_output=True, text=True,
                         env=os.environ, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    failure = (sm_base / "output" / "failure").read_text()
    assert failure.startswith("UserError: invalid hyperparameters: ")
    assert "'epochs'='0'" in failure.splitlines()[0]
    assert "'optimizer'='rmsprop'" in failure.splitlines()[0]
    assert "Imported framework" not in run.stdout + run.stderr  # the toolkit never ran
