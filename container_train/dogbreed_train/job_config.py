"""The job, read once: SageMaker's config files, validated into one frozen value.

SageMaker describes a training job in /opt/ml/input/config: hyperparameters.json,
inputdataconfig.json (the channels and their input modes) and resourceconfig.json
(the hosts). ``read`` reads and checks all three into a ``Job``: the image's
``train`` command (entrypoint.py) does it first, before the training toolkit or
torch is imported, so a file the toolkit cannot read or a bad hyperparameter ends
the job within a second, with one line that names it. The job then travels as one
environment variable, DOGBREED_JOB (``Job.to_env``), as the toolkit's own
``Environment.to_env_vars`` hands a job to its scripts: through the toolkit to
launch.py, which adds this host's GPU count, and through torchrun to every rank's
``python -m dogbreed_train`` (``current``). None of them reads the files again.
Run by hand, with no DOGBREED_JOB, the program reads them itself through the same
``read``, and its flags override the hyperparameters (cli.py).

No torch here, nor in anything imported from here: this runs in the container's
first second.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import config, paths
from .cluster import Cluster
from .errors import UserError

ENV = "DOGBREED_JOB"
HYPERPARAMETERS, INPUT_DATA, RESOURCES = (
    "hyperparameters.json", "inputdataconfig.json", "resourceconfig.json")
FILES = (HYPERPARAMETERS, INPUT_DATA, RESOURCES)
SUPPORTED_INPUT_MODES = ("File", "FastFile")


@dataclass(frozen=True)
class Job:
    """One training job as SageMaker describes it, validated: the same value in every
    process that runs it."""

    hyperparameters: config.Hyperparameters
    input_modes: Mapping[str, str | None]  # channel -> TrainingInputMode (None: unnamed)
    cluster: Cluster

    def to_env(self) -> dict[str, str]:
        """The job as environment variables, for the processes started to run it."""
        return {ENV: json.dumps({
            "hyperparameters": config.to_dict(self.hyperparameters),
            "input_modes": dict(self.input_modes), "cluster": self.cluster.to_dict()})}

    @classmethod
    def from_json(cls, text: str) -> Job:
        value = json.loads(text)
        return cls(config.parse(value["hyperparameters"]),
                   MappingProxyType(value["input_modes"]), Cluster.from_dict(value["cluster"]))


def current(overrides: Mapping[str, Any] | None = None) -> Job:
    """This process's job: the one handed down to it, else read from the files (by hand).

    ``overrides`` (the program's flags) replace hyperparameters of the same names
    before they are validated."""
    handed_down = os.environ.get(ENV)
    if not handed_down:
        return read(missing_ok=True, overrides=overrides)
    job = Job.from_json(handed_down)
    if not overrides:
        return job
    return replace(job, hyperparameters=config.parse(
        {**config.to_dict(job.hyperparameters), **overrides}))


def read(*, missing_ok: bool = False, overrides: Mapping[str, Any] | None = None) -> Job:
    """The job the config files describe, or a UserError that names the file and problem.

    SageMaker writes all three files; by hand (``missing_ok``) a missing one reads as
    {}: default hyperparameters, no channels named, this machine alone."""
    found = {name: read_object(paths.config_dir() / name, missing_ok) for name in FILES}
    hyperparameters = config.parse({**found[HYPERPARAMETERS], **(overrides or {})})
    input_modes = {channel: spec.get("TrainingInputMode") if isinstance(spec, dict) else None
                   for channel, spec in found[INPUT_DATA].items()}
    unsupported = sorted(channel for channel, mode in input_modes.items()
                         if mode not in (None, *SUPPORTED_INPUT_MODES))
    if unsupported:
        modes = sorted({str(input_modes[c]) for c in unsupported})
        raise UserError(f"{' and '.join(modes)} mode is not supported: use File or FastFile "
                        f"(TrainingInputMode of channel(s) {', '.join(unsupported)}). This "
                        "image reads each channel as a folder of class folders.")
    return Job(hyperparameters, MappingProxyType(input_modes),
               Cluster.from_config(found[RESOURCES]))


def read_resource_config() -> dict:
    """resourceconfig.json on its own ({} where there is none), for Cluster.read."""
    return read_object(paths.config_dir() / RESOURCES, missing_ok=True)


def read_object(path: Path, missing_ok: bool = False) -> dict:
    """The JSON object in a config file; a UserError that names the file otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise UserError(f"{path} is missing: SageMaker writes it; for a local run, write "
                        "{} there (README, 'Train locally').") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        raise UserError(f"{path} is empty: it must hold a JSON object, e.g. {{}} for none.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object ({{...}}), not a "
                        f"{type(value).__name__} ({text.strip()[:40]!r}).")
    return value
