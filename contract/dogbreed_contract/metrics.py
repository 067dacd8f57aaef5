"""The METRIC log lines, and the regexes SageMaker reads them with.

The training image prints these lines; ``metric_definitions.json`` (next to this
file) holds the regexes that the scripts hand to training and tuning jobs as metric
definitions. Both live here so that a line and its regex change together; the
tests check the regexes against real log output.
"""

from __future__ import annotations

import json
import math
from importlib.resources import files


def definitions() -> list[dict[str, str]]:
    """[{"Name": "valid:accuracy", "Regex": "valid_acc=..."}, ...] as SageMaker takes them."""
    return json.loads(files(__package__).joinpath("metric_definitions.json").read_text())


def _num(value: float) -> str:
    # Non-finite values are printed so that no regex matches them (SageMaker would
    # otherwise fail to parse them); the line still shows them to a reader.
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def epoch_line(epoch: int, epochs: int, train: dict, valid: dict, lr: float,
               seconds: float) -> str:
    return (f"METRIC epoch={epoch}/{epochs} train_loss={_num(train['loss'])} "
            f"train_acc={_num(train['acc'])} valid_loss={_num(valid['loss'])} "
            f"valid_acc={_num(valid['acc'])} lr={lr:.3e} time={seconds:.1f}s")


def test_line(test: dict) -> str:
    return f"METRIC test_loss={_num(test['loss'])} test_acc={_num(test['acc'])}"
