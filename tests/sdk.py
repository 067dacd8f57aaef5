"""The tests drive local mode through the same module the demo uses (re-exported here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from sagemaker_calls import LOCAL_ROLE as ROLE
from sagemaker_calls import opt_out_of_telemetry, remove_leftovers
from sagemaker_calls import session as local_session

__all__ = ["ROLE", "local_session", "opt_out_of_telemetry", "remove_leftovers"]
