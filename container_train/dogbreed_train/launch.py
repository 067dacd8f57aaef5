"""Entry point for the SageMaker training toolkit (SAGEMAKER_TRAINING_MODULE).

`docker run IMAGE train` runs the toolkit's ``train``, which prepares the SM_*
environment and calls ``main`` here. The training program runs as a child process
so that its exit code and failure file are its own; a plain SystemExit here would
be reported by the toolkit as success, so a failure is raised as an exception
whose ``errno`` becomes the container's exit code.
"""

from __future__ import annotations

import subprocess
import sys

from . import errors


class TrainingFailed(Exception):
    def __init__(self, code: int):
        super().__init__(f"training exited with code {code}; see the failure file and log")
        self.errno = code


def command() -> list[str]:
    return [sys.executable, "-m", "dogbreed_train"]


def main() -> None:
    errors.clear_failure()
    code = subprocess.call(command())
    if code != 0:
        raise TrainingFailed(code)
