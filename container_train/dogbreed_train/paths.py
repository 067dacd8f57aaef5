"""Where SageMaker puts things inside a training container.

Everything hangs off /opt/ml; SAGEMAKER_BASE_DIR moves it (as the training toolkit
does), which is how the tests run the real program against a temporary tree.
"""

import os
from pathlib import Path


def base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def config_dir() -> Path:
    return base_dir() / "input" / "config"


def channel_dir(name: str) -> Path:
    """A channel's folder; SM_CHANNEL_<NAME> wins, as in the toolkit."""
    env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
    return Path(env) if env else base_dir() / "input" / "data" / name


def model_dir() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR", base_dir() / "model"))


def output_dir() -> Path:
    return base_dir() / "output"


def output_data_dir() -> Path:
    return Path(os.environ.get("SM_OUTPUT_DATA_DIR", output_dir() / "data"))


def tensorboard_dir() -> Path:
    """Where SageMaker's TensorBoardOutputConfig (LocalPath default) uploads from."""
    return Path(os.environ.get("DOGBREED_TENSORBOARD_DIR", output_dir() / "tensorboard"))


def failure_file() -> Path:
    return output_dir() / "failure"


def checkpoint_dir() -> Path:
    return Path(os.environ.get("DOGBREED_CHECKPOINT_DIR", base_dir() / "checkpoints"))
