"""SageMaker Debugger (smdebug): the hook, only when the job asks for it, and its tensors
read back for the rules.

SageMaker writes /opt/ml/input/config/debughookconfig.json when a training job
has a DebugHookConfig (the SDK adds one with Debugger rules). Without that file
smdebug is never imported, so training pays nothing for it. With it, `Hook` joins
the training loop's observers (observers.py) and records what the config's
collections ask for (losses, weights, gradients, biases, relu_input ...) in TRAIN
and EVAL modes. smdebug is an old library: any failure to set it up is logged and
training goes on without it.

At the end of the job the five model rules that saved tensors can answer are
evaluated by the one rule engine (rules.py) on the statistics `read_tensors`
builds from them, and written to debugger_rules.json.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from . import paths, rules
from .observers import Observer

log = logging.getLogger(__name__)

# The rules saved tensors can answer; the others need what only the job measures.
RULES = ("VanishingGradient", "Overfit", "Overtraining", "LossNotDecreasing",
         "PoorWeightInitialization")
RULES_TITLE = "Debugger rules (local evaluation of SageMaker's built-in rules):"
RULES_FILE = "debugger_rules.json"


def config_file() -> Path:
    env = os.environ.get("SMDEBUG_CONFIG_FILE_PATH")
    return Path(env) if env else paths.config_dir() / "debughookconfig.json"


class Hook(Observer):
    """The smdebug hook at the loop's points: TRAIN and EVAL modes, the validation
    loss it records, closing, the rules on its tensors, and a hook-free model to
    export (smdebug's module hooks would run, and fail, inside torch.export)."""

    def __init__(self, hook, modes, criterion: nn.Module, rebuild: Callable[[], nn.Module]):
        self.hook, self.modes, self.criterion, self.rebuild = hook, modes, criterion, rebuild
        self.closed = False

    @property
    def tensor_dir(self) -> str:
        return self.hook.out_dir

    def start_train(self) -> None:
        self.hook.set_mode(self.modes.TRAIN)

    def start_eval(self) -> None:
        self.hook.set_mode(self.modes.EVAL)

    def eval_batch(self, logits, targets) -> None:
        # The hook saves the loss of the criterion it was registered on: as the EVAL loss.
        self.criterion(logits.float(), targets)

    def end_training(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.hook.close()
        except Exception as exc:  # noqa: BLE001 - the model matters more than tensors
            log.warning("smdebug hook did not close cleanly: %s", exc)

    def report(self, out_dir: Path) -> None:
        """What SageMaker's built-in Debugger rules would say, evaluated here."""
        try:
            book = evaluate_tensors(self.tensor_dir)
        except Exception as exc:  # noqa: BLE001 - a report must never fail the job
            log.warning("Debugger rules not evaluated: %s: %s", type(exc).__name__, exc)
            return
        rules.write(book, out_dir / RULES_FILE)
        log.info("\n".join(book.summary_lines(RULES_TITLE)))

    def before_export(self, model: nn.Module) -> nn.Module:
        fresh = self.rebuild()
        fresh.load_state_dict(model.state_dict())
        return fresh


def observers(model: nn.Module, criterion: nn.Module, rebuild: Callable[[], nn.Module],
              enabled: bool = True) -> list[Observer]:
    """[a Hook registered on `model` and `criterion`] if the config file exists (and
    `enabled`: rank 0 only), else []. `rebuild` makes a bare model of the same
    architecture, for export."""
    cfg = config_file()
    if not enabled or not cfg.exists():
        return []
    try:
        import smdebug.pytorch as smd
        from smdebug import modes

        hook = smd.Hook.create_from_json_file(str(cfg))
        hook.register_module(model)
        hook.register_loss(criterion)
    except Exception as exc:  # noqa: BLE001 - smdebug must never stop training
        log.warning("SageMaker Debugger hook disabled: %s: %s", type(exc).__name__, exc)
        return []
    log.info("SageMaker Debugger: saving tensors to %s", hook.out_dir)
    return [Hook(hook, modes, criterion, rebuild)]


# ---- the tensors, as the rule engine's statistics --------------------------------------

def evaluate_tensors(tensor_dir: str | Path) -> rules.RuleBook:
    """The five rules' verdicts on an smdebug output folder (no RULE log lines: the
    job's rule metrics are its own verdicts)."""
    book = rules.RuleBook(RULES, announce=False)
    book.evaluate(read_tensors(tensor_dir))
    return book


def read_tensors(tensor_dir: str | Path,
                 early_steps: int = rules.DEFAULTS["PoorWeightInitialization"]["steps"]
                 ) -> dict:
    """The statistics rules.py reads (statistics.json's layout), from a trial:

    - steps: each saved TRAIN loss, `saved_steps` telling the rules that these are
      single saved steps, not every step;
    - epochs: one per validation pass (the mean TRAIN loss since the pass before,
      the pass's mean loss); an epoch here is a validation pass;
    - layers, gradients: mean |g| of each saved gradient at each saved step;
    - early: at the first `early_steps` steps with relu_input activations, their
      variances and the 5th/95th gradient percentiles of the layer whose range is
      narrowest there.
    """
    from smdebug import modes
    from smdebug.trials import create_trial

    trial = create_trial(str(tensor_dir))

    def names(collection: str) -> list[str]:
        try:
            return trial.tensor_names(collection=collection)
        except Exception:  # noqa: BLE001 - smdebug raises its own errors for absent ones
            return []

    def values(name: str, only: set[int] | None = None):
        tensor = trial.tensor(name)
        for step in tensor.steps():
            if only is None or step in only:
                yield step, np.asarray(tensor.value(step), dtype=np.float64)

    stats: dict = {"saved_steps": True, "steps": [], "epochs": [], "layers": [],
                   "gradients": [], "early": []}
    losses = names("losses")
    train: list[float] = []
    valid: list[float] = []
    last_mode = None

    def close_pass() -> None:
        stats["epochs"].append({"epoch": len(stats["epochs"]) + 1,
                                "train_loss": float(np.mean(train)) if train else np.nan,
                                "valid_loss": float(np.mean(valid))})
        train.clear()
        valid.clear()

    for step, value in values(losses[0]) if losses else ():
        mode = trial.mode(step)
        if mode == modes.TRAIN and last_mode == modes.EVAL and valid:
            close_pass()
        if mode == modes.TRAIN:
            stats["steps"].append((step, len(stats["epochs"]) + 1, float(value)))
            train.append(float(value))
        else:
            valid.append(float(value))
        last_mode = mode
    if valid:
        close_pass()

    loss_steps = [s for s, _, _ in stats["steps"]]

    def epoch_at(step: int) -> int:
        """The epoch of the last saved training loss at or before `step`."""
        i = bisect.bisect_right(loss_steps, step) - 1
        return stats["steps"][i][1] if i >= 0 else 1

    activations = names("relu_input") or [n for n in names("all") if "relu_input" in n]
    early = sorted({s for n in activations for s in trial.tensor(n).steps()})[:early_steps]
    early_set = set(early)
    layers = names("gradients")
    mean_abs: dict[int, list[float | None]] = {}
    narrowest: dict[int, tuple[float, float]] = {}  # step: (p5, p95)
    for i, name in enumerate(layers):
        for step, value in values(name):
            mean_abs.setdefault(step, [None] * len(layers))[i] = (
                float(np.mean(np.abs(value))) if value.size else None)
            if step in early_set and value.size > 1:
                p5, p95 = (float(p) for p in np.percentile(value, [5, 95]))
                if step not in narrowest or p95 - p5 < narrowest[step][1] - narrowest[step][0]:
                    narrowest[step] = (p5, p95)
    stats["layers"] = layers
    stats["gradients"] = [{"step": s, "epoch": epoch_at(s), "mean_abs": mean_abs[s]}
                          for s in sorted(mean_abs)]
    variances: dict[int, list[float]] = {s: [] for s in early}
    for name in activations:
        for step, value in values(name, early_set):
            variances[step].append(float(np.var(value)))
    for step in early:
        record = {"step": step, "epoch": epoch_at(step), "relu_var": variances[step]}
        if step in narrowest:
            record["grad_p5"], record["grad_p95"] = narrowest[step]
        stats["early"].append(record)
    return stats
