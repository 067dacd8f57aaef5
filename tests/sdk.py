"""The tests drive local mode through the same module the demo uses."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from sagemaker_calls import LOCAL_ROLE as ROLE  # noqa: E402,F401
