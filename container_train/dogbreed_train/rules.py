"""Local verdicts of SageMaker Debugger's built-in rules, from saved smdebug tensors.

On AWS, each rule runs in its own rule container; its code is not published.
This module applies the documented logic and default parameters of five of them
to the tensors a local run saved, so a user sees what SageMaker would flag
without an AWS account:

    python -m dogbreed_train.rules /opt/ml/output/tensors [--json report.json]

Verdicts use SageMaker's words: IssuesFound, NoIssuesFound, and NotEvaluated
when the tensors a rule needs were not saved (e.g. gradients not collected).
Where a rule speaks of "steps" of validation loss, one validation pass (the
mean over its saved steps) counts as one step: single batches are too noisy.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .verdicts import stalled  # the same Overtraining test as the in-job rule

log = logging.getLogger(__name__)

DEFAULTS = {
    "VanishingGradient": {"threshold": 1e-7},
    "Overfit": {"start_step": 0, "patience": 1, "ratio_threshold": 0.1},
    "Overtraining": {"patience_train": 5, "patience_validation": 10, "delta": 0.01},
    "LossNotDecreasing": {"num_steps": 10, "diff_percent": 0.1},
    "PoorWeightInitialization": {"threshold": 10.0, "distribution_range": 0.001,
                                 "patience": 5, "steps": 10},
}


@dataclass
class Verdict:
    rule: str
    status: str
    reason: str
    parameters: dict = field(default_factory=dict)


class Tensors:
    """The parts of an smdebug trial the rules read: losses per mode, collections."""

    def __init__(self, path: str):
        from smdebug import modes
        from smdebug.trials import create_trial

        self.trial, self.modes = create_trial(path), modes

    def names(self, collection: str) -> list[str]:
        try:
            return self.trial.tensor_names(collection=collection)
        except Exception:  # noqa: BLE001 - smdebug raises its own errors for absent ones
            return []

    def series(self, name: str, mode=None) -> list[tuple[int, np.ndarray]]:
        """(global step, value) pairs, optionally of one mode only."""
        t = self.trial.tensor(name)
        out = []
        for step in t.steps():
            if mode is None or self.trial.mode(step) == mode:
                out.append((step, np.asarray(t.value(step), dtype=np.float64)))
        return out

    def loss(self, mode) -> list[tuple[int, float]]:
        names = self.names("losses")
        return [(s, float(v)) for s, v in self.series(names[0], mode)] if names else []

    def validation_passes(self) -> list[tuple[float, float]]:
        """(mean training loss before the pass, mean validation loss) for each pass."""
        names = self.names("losses")
        if not names:
            return []
        passes, train, valid, last_mode = [], [], [], None
        for step, value in self.series(names[0]):
            mode = self.trial.mode(step)
            if mode == self.modes.TRAIN and last_mode == self.modes.EVAL and valid:
                passes.append((np.mean(train) if train else np.nan, np.mean(valid)))
                train, valid = [], []
            (train if mode == self.modes.TRAIN else valid).append(float(value))
            last_mode = mode
        if valid:
            passes.append((np.mean(train) if train else np.nan, np.mean(valid)))
        return passes


def vanishing_gradient(t: Tensors, threshold: float) -> tuple[str, str]:
    names = t.names("gradients")
    if not names:
        return "NotEvaluated", "no gradients were saved (add the 'gradients' collection)"
    for name in names:
        for step, value in t.series(name):
            if value.size and np.mean(np.abs(value)) < threshold:
                return "IssuesFound", (f"mean |gradient| of {name} is {np.mean(np.abs(value)):.2e} "
                                       f"at step {step}, below {threshold:g}")
    return "NoIssuesFound", f"all {len(names)} gradients keep mean |g| >= {threshold:g}"


def overfit(t: Tensors, start_step: int, patience: int, ratio_threshold: float):
    passes = [p for p in t.validation_passes() if np.isfinite(p[0])][start_step:]
    if not passes:
        return "NotEvaluated", "needs training and validation losses (the 'losses' collection)"
    run = 0
    for i, (train, valid) in enumerate(passes, 1):
        ratio = (valid - train) / train if train > 0 else 0.0
        run = run + 1 if ratio > ratio_threshold else 0
        if run >= patience:
            return "IssuesFound", (f"validation pass {i}: validation loss {valid:.4f} exceeds "
                                   f"training loss {train:.4f} by {ratio:.0%}")
    return "NoIssuesFound", f"validation loss within {ratio_threshold:.0%} of training loss"


def overtraining(t: Tensors, patience_train: int, patience_validation: int, delta: float):
    train = [v for _, v in t.loss(t.modes.TRAIN)]
    valid = [v for _, v in t.validation_passes()]
    if not train or not valid:
        return "NotEvaluated", "needs training and validation losses (the 'losses' collection)"
    at = stalled(train, patience_train, delta)
    if at is not None:
        return "IssuesFound", f"training loss stopped improving by {delta:.0%} at reading {at}"
    at = stalled(valid, patience_validation, delta)
    if at is not None:
        return "IssuesFound", f"validation loss stopped improving at validation pass {at + 1}"
    return "NoIssuesFound", "training and validation losses still improving"


def loss_not_decreasing(t: Tensors, num_steps: int, diff_percent: float):
    series = t.loss(t.modes.TRAIN)
    if len(series) < 2:
        return "NotEvaluated", "needs at least two saved training losses"
    checked, last_check = 0, None
    for step, value in series:
        if last_check is not None and step < last_check + num_steps:
            continue
        earlier = [(s, v) for s, v in series if s <= step - num_steps]
        if earlier:
            prev_step, prev = earlier[-1]
            checked += 1
            if value > prev * (1 - diff_percent / 100):
                return "IssuesFound", (f"training loss {value:.4f} at step {step} is not "
                                       f"{diff_percent}% below {prev:.4f} at step {prev_step}")
        last_check = step
    if not checked:
        return "NotEvaluated", f"losses span fewer than num_steps={num_steps} steps"
    return "NoIssuesFound", f"training loss fell at each of {checked} checks"


def poor_weight_initialization(t: Tensors, threshold: float, distribution_range: float,
                               patience: int, steps: int):
    activations = t.names("relu_input") or [n for n in t.names("all") if "relu_input" in n]
    if not activations:
        return "NotEvaluated", "no relu_input activations saved (add the 'relu_input' collection)"
    first = sorted({s for n in activations for s, _ in t.series(n)})[:steps]
    for step in first:
        variances = [float(np.var(v)) for n in activations for s, v in t.series(n) if s == step]
        variances = [v for v in variances if v > 0]
        if len(variances) > 1 and max(variances) / min(variances) > threshold:
            return "IssuesFound", (f"activation variance across layers spans "
                                   f"{max(variances) / min(variances):.1f}x at step {step}")
    for name in t.names("gradients"):
        for step, value in t.series(name)[:steps]:
            if value.size > 1 and np.ptp(np.percentile(value, [5, 95])) < distribution_range:
                return "IssuesFound", f"gradients of {name} are all near zero at step {step}"
    losses = [v for _, v in t.loss(t.modes.TRAIN)][:steps]
    if len(losses) > patience and min(losses[1:patience + 1]) >= losses[0]:
        return "IssuesFound", f"training loss did not fall in the first {patience} readings"
    return "NoIssuesFound", f"activation variances within {threshold:g}x across layers"


RULES = {
    "VanishingGradient": vanishing_gradient,
    "Overfit": overfit,
    "Overtraining": overtraining,
    "LossNotDecreasing": loss_not_decreasing,
    "PoorWeightInitialization": poor_weight_initialization,
}


def evaluate(path: str | Path) -> list[Verdict]:
    tensors = Tensors(str(path))
    verdicts = []
    for name, rule in RULES.items():
        params = DEFAULTS[name]
        try:
            status, reason = rule(tensors, **params)
        except Exception as exc:  # noqa: BLE001 - one broken rule must not hide the others
            status, reason = "Error", f"{type(exc).__name__}: {exc}"
        verdicts.append(Verdict(name, status, reason, params))
    return verdicts


def format_report(verdicts: list[Verdict]) -> str:
    width = max(len(v.rule) for v in verdicts)
    lines = ["Debugger rules (local evaluation of SageMaker's built-in rules):"]
    lines += [f"  {v.rule:<{width}}  {v.status:<13}  {v.reason}" for v in verdicts]
    return "\n".join(lines)


def write(verdicts: list[Verdict], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps([asdict(v) for v in verdicts], indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dogbreed_train.rules",
        description="Evaluate SageMaker Debugger built-in rules on locally saved tensors.")
    parser.add_argument("tensors", help="smdebug output folder (the hook config's LocalPath)")
    parser.add_argument("--json", type=Path, help="also write the verdicts as JSON here")
    args = parser.parse_args(argv)
    if not Path(args.tensors).is_dir():
        parser.error(f"no such folder: {args.tensors}")
    logging.getLogger("smdebug").setLevel(logging.WARNING)
    verdicts = evaluate(args.tensors)
    print(format_report(verdicts))
    if args.json:
        write(verdicts, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
