"""Unit tests that run inside dogbreed-train (torch lives there, not on the host).

`make unit-test` mounts tests/ and a pure-Python pytest into the image.
"""

import pytest


@pytest.fixture
def sm_base(tmp_path, monkeypatch):
    """An empty /opt/ml tree, as SageMaker would mount it."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    for var in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_VALID", "SM_CHANNEL_TEST", "SM_MODEL_DIR",
                "SM_OUTPUT_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path
