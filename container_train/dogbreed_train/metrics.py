"""The metric log lines, in the one format SageMaker's metric regexes read.

The regexes live in metric_definitions.json next to this file; the scripts use
the same file for training and tuning jobs, and the tests check both against
real log output.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("dogbreed_train.metrics")

DEFINITIONS_FILE = Path(__file__).with_name("metric_definitions.json")


def definitions() -> list[dict[str, str]]:
    return json.loads(DEFINITIONS_FILE.read_text())


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
