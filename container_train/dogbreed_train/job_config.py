"""SageMaker's description of the job: the JSON files in /opt/ml/input/config.

The training toolkit reads hyperparameters.json, inputdataconfig.json and
resourceconfig.json before any of our code runs, and a file it cannot read ends
the job with ``Framework Error:`` and a traceback. So the image's ``train``
command checks them first (entrypoint.py) and fails with one line that names the
file. No torch here: this runs in the container's first second.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import paths
from .errors import UserError

FILES = ("hyperparameters.json", "inputdataconfig.json", "resourceconfig.json")
SUPPORTED_INPUT_MODES = ("File", "FastFile")


def read_object(path: Path) -> dict:
    """The JSON object in a config file; a UserError that names the file otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
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


def check() -> None:
    """Everything the toolkit and the program need from the config files, or a UserError."""
    if not paths.base_dir().exists():
        return  # no /opt/ml at all: the toolkit writes its own defaults
    found = {name: read_object(paths.config_dir() / name) for name in FILES}
    pipe = sorted(channel for channel, spec in found["inputdataconfig.json"].items()
                  if isinstance(spec, dict)
                  and spec.get("TrainingInputMode") not in (None, *SUPPORTED_INPUT_MODES))
    if pipe:
        modes = sorted({str(found["inputdataconfig.json"][c]["TrainingInputMode"])
                        for c in pipe})
        raise UserError(f"{' and '.join(modes)} mode is not supported: use File or FastFile "
                        f"(TrainingInputMode of channel(s) {', '.join(pipe)}). This image "
                        "reads each channel as a folder of class folders.")
