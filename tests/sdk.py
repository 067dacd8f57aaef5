"""The tests drive local mode through the same modules the scripts and the demo use."""

from pathlib import Path

from dogbreed_scripts import local_endpoint
from dogbreed_scripts.sagemaker_calls import opt_out_of_telemetry, train_locally
from dogbreed_scripts.sagemaker_calls import remove_leftovers as remove_training_leftovers


def remove_leftovers(root: Path) -> None:
    """Local training's containers and network, and local endpoints, under root."""
    remove_training_leftovers(root)
    local_endpoint.remove_all(root, prefix=True)


__all__ = ["local_endpoint", "opt_out_of_telemetry", "remove_leftovers", "train_locally"]
