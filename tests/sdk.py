"""The tests drive local mode through the same modules the scripts and the demo use."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import local_endpoint  # noqa: E402
from sagemaker_calls import opt_out_of_telemetry, train_locally  # noqa: E402
from sagemaker_calls import remove_leftovers as remove_training_leftovers  # noqa: E402


def remove_leftovers(root: Path) -> None:
    """Local training's containers and network, and local endpoints, under root."""
    remove_training_leftovers(root)
    local_endpoint.remove_all(root, prefix=True)


__all__ = ["local_endpoint", "opt_out_of_telemetry", "remove_leftovers", "train_locally"]
