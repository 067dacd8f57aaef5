"""SageMaker's built-in Debugger and profiler rules: the one engine that judges a job.

The rules read one statistics dict (statistics.json's layout): the training loss
per step, per-layer gradient statistics, the first steps' ReLU input variances and
gradient percentiles, per-epoch losses, class counts and CPU/GPU samples. Two
sources fill it:

- every job: recording.Recorder, from what the training program measures itself
  (all twelve rules, after every epoch; no smdebug, no config file);
- a job with a Debugger hook config: debugger.read_tensors, from the tensors smdebug
  saved (the five model rules those tensors can answer), and the command

      python -m dogbreed_train.rules /opt/ml/output/tensors [--json report.json]

Each rule keeps SageMaker's name, default parameters and verdict words
(IssuesFound, NoIssuesFound, NotEvaluated). A verdict that found issues stays so,
as a SageMaker rule job ends at its first issue. In the job each change is one log line

    RULE LossNotDecreasing status=1 IssuesFound epoch=2 step=14: training loss ...

(status=1 IssuesFound, 0 NoIssuesFound, 2 NotEvaluated) that metric_definitions.json
turns into the metric ``rule:LossNotDecreasing``. A rule still NotEvaluated at the end
of the job says so once then, so that every rule metric has a value. The verdicts go to
/opt/ml/output/data/rules.json (debugger_rules.json for the tensors). Where this
differs from SageMaker's documented logic, the rule's docstring says so: the Recorder
has every step's loss, and single batches are too noisy for a 1% test, so the loss
rules read means; smdebug saves single steps, which they read one by one.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("dogbreed_train.rules")

ISSUES, NO_ISSUES, NOT_EVALUATED = "IssuesFound", "NoIssuesFound", "NotEvaluated"
STATUS_CODE = {ISSUES: 1, NO_ISSUES: 0, NOT_EVALUATED: 2}

# SageMaker's documented defaults (rule_configs / ProfilerRule).
DEFAULTS: dict[str, dict] = {
    "VanishingGradient": {"threshold": 1e-7},
    "ExplodingTensor": {"only_nan": False},
    "Overfit": {"start_step": 0, "patience": 1, "ratio_threshold": 0.1},
    "Overtraining": {"patience_train": 5, "patience_validation": 10, "delta": 0.01},
    "LossNotDecreasing": {"num_steps": 10, "diff_percent": 0.1},
    "PoorWeightInitialization": {"threshold": 10.0, "distribution_range": 0.001,
                                 "patience": 5, "steps": 10},
    "ClassImbalance": {"threshold_imbalance": 10, "threshold_misprediction": 0.7,
                       "samples": 500},
    "LowGPUUtilization": {"threshold_p95": 70, "threshold_p5": 10, "window": 500,
                          "patience": 1000},
    "CPUBottleneck": {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90,
                      "patience": 1000},
    "IOBottleneck": {"threshold": 50, "gpu_threshold": 10, "io_threshold": 50,
                     "patience": 1000},
    "GPUMemoryIncrease": {"increase": 5, "patience": 1000, "window": 10},
    "BatchSize": {"cpu_threshold_p95": 70, "gpu_threshold_p95": 70,
                  "gpu_memory_threshold_p95": 70, "patience": 1000, "window": 500},
}

ADVICE = {
    "VanishingGradient": "Gradients this small stop layers learning: raise the learning "
                         "rate, check that the layers are not frozen by accident, or use a "
                         "backbone with normalization and residual connections.",
    "ExplodingTensor": "Lower the learning rate (or add warm-up); with amp=fp16 try "
                       "amp=bf16 or amp=off.",
    "Overfit": "Validation loss is well above training loss: add augmentation, dropout or "
               "weight decay, use more data, or stop earlier.",
    "Overtraining": "The losses stopped improving: fewer epochs would give the same model; "
                    "keep the best epoch's checkpoint.",
    "LossNotDecreasing": "Training loss is flat: the learning rate may be too low (or too "
                         "high), or the labels may not match the images.",
    "PoorWeightInitialization": "Activations or gradients are badly scaled at the start: "
                                "use pretrained=true or the framework's default "
                                "initialization.",
    "ClassImbalance": "Classes are very unequal: balance the training set, or weight the "
                      "loss or the sampler by class.",
    "LowGPUUtilization": "The GPU is mostly idle: raise batch-size or workers, or use a "
                         "smaller instance.",
    "CPUBottleneck": "The CPUs are saturated while the GPU waits: add data-loader "
                     "workers on an instance with more CPUs, or pre-resize the images.",
    "IOBottleneck": "The job waits on disk I/O while the GPU waits: use File mode with a "
                    "faster volume, FastFile mode, or pre-resized (smaller) images.",
    "GPUMemoryIncrease": "GPU memory keeps growing: look for tensors kept across steps "
                         "(e.g. summing losses without .detach()).",
    "BatchSize": "CPU, GPU and GPU memory are all lightly used: raise batch-size (and the "
                 "learning rate with it) or use a smaller instance.",
}


@dataclass
class Verdict:
    rule: str
    status: str = NOT_EVALUATED
    first: dict | None = None  # {"epoch": E, "step": S} where it first found issues
    numbers: dict = field(default_factory=dict)
    reason: str = "not evaluated yet"
    advice: str = ""
    parameters: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What one rule function returns."""

    status: str
    reason: str
    numbers: dict = field(default_factory=dict)
    epoch: int | None = None
    step: int | None = None


def _fired(reason, numbers=None, epoch=None, step=None) -> Outcome:
    return Outcome(ISSUES, reason, numbers or {}, epoch, step)


def _ok(reason, numbers=None) -> Outcome:
    return Outcome(NO_ISSUES, reason, numbers or {})


def _not(reason) -> Outcome:
    return Outcome(NOT_EVALUATED, reason)


def _epoch_of(stats: dict, step: int) -> int | None:
    for s, e, _ in stats.get("steps", []):
        if s >= step:
            return e
    return None


# ---- model rules ---------------------------------------------------------------------

def vanishing_gradient(stats: dict, threshold: float) -> Outcome:
    """Mean |gradient| of any layer below `threshold` at a recorded step (every
    debug-interval steps and the first steps of the job)."""
    grads = stats.get("gradients", [])
    if not grads:
        return _not("no gradient statistics recorded yet")
    names = stats["layers"]
    smallest = (math.inf, None, None)
    for rec in grads:
        for name, value in zip(names, rec["mean_abs"], strict=True):
            if value is None or not math.isfinite(value):
                continue
            if value < threshold:
                return _fired(f"mean |gradient| of {name} is {value:.2e} at step {rec['step']}, "
                              f"below {threshold:g}", {"layer": name, "mean_abs": value},
                              rec["epoch"], rec["step"])
            if value < smallest[0]:
                smallest = (value, name, rec["step"])
    return _ok(f"smallest mean |gradient| {smallest[0]:.2e} ({smallest[1]}, step "
               f"{smallest[2]}) over {len(grads)} recorded steps",
               {"smallest_mean_abs": smallest[0], "layer": smallest[1]})


def exploding_tensor(stats: dict, only_nan: bool) -> Outcome:
    """A non-finite loss (checked every step), gradient norm or weight norm (at the
    recorded steps). Deviation: under fp16 AMP the gradients are not checked, as
    GradScaler itself skips steps whose scaled gradients overflowed."""
    bad = math.isnan if only_nan else (lambda v: not math.isfinite(v))
    for step, epoch, loss in stats.get("steps", []):
        if bad(loss):
            return _fired(f"training loss is {loss} at step {step}", {"loss": str(loss)},
                          epoch, step)
    for rec in stats.get("gradients", []):
        for kind in ("weight_l2",) + (() if stats.get("amp") == "float16" else ("l2",)):
            for name, value in zip(stats["layers"], rec[kind], strict=True):
                if value is not None and bad(value):
                    what = "weight" if kind == "weight_l2" else "gradient"
                    return _fired(f"{what} norm of {name} is {value} at step {rec['step']}",
                                  {"layer": name, "tensor": what}, rec["epoch"], rec["step"])
    if not stats.get("steps"):
        return _not("no training steps recorded yet")
    return _ok(f"loss finite at all {len(stats['steps'])} steps, gradient and weight norms "
               f"finite at {len(stats.get('gradients', []))} recorded steps")


def _epoch_losses(stats: dict) -> list[tuple[int, float, float]]:
    return [(h["epoch"], h["train_loss"], h["valid_loss"]) for h in stats.get("epochs", [])]


def overfit(stats: dict, start_step: int, patience: int, ratio_threshold: float) -> Outcome:
    """(validation loss - training loss) / training loss above `ratio_threshold` for
    `patience` validation passes in a row. Deviation: one reading per epoch (the
    epoch's mean training loss against its validation pass); start_step counts epochs.
    Epochs with a non-finite loss are left out; from saved steps (smdebug) only those
    without a training loss: there a NaN validation loss compares as no overfit."""
    saved = bool(stats.get("saved_steps"))
    passes = [p for p in _epoch_losses(stats)
              if math.isfinite(p[1]) and (saved or math.isfinite(p[2]))]
    passes = passes[start_step:]
    if not passes:
        return _not("needs one finished epoch (training and validation loss)")
    run, worst = 0, -math.inf
    for epoch, train, valid in passes:
        ratio = (valid - train) / train if train > 0 else (math.inf if valid > 0 else 0.0)
        worst = max(worst, ratio)
        run = run + 1 if ratio > ratio_threshold else 0
        if run >= patience:
            return _fired(f"epoch {epoch}: validation loss {valid:.4f} exceeds training loss "
                          f"{train:.4f} by {ratio:.0%} (threshold {ratio_threshold:.0%})",
                          {"train_loss": train, "valid_loss": valid, "ratio": ratio}, epoch)
    return _ok(f"validation loss within {ratio_threshold:.0%} of training loss "
               f"(worst {worst:.0%})", {"worst_ratio": worst})


def stalled(values: list[float], patience: int, delta: float) -> int | None:
    """Index at which `values` went `patience` readings without a relative
    improvement of `delta` over the best so far."""
    best, since = math.inf, 0
    for i, v in enumerate(values):
        if v < best - delta * abs(best if math.isfinite(best) else v):
            best, since = v, 0
        else:
            since += 1
            if since >= patience:
                return i
    return None


def _training_readings(stats: dict) -> tuple[list[tuple[int, int | None, float]], str]:
    """Overtraining's training loss readings, (epoch, step, loss), and what one is:
    where every step was recorded, an epoch's mean; where only saved steps are
    (smdebug), each saved step."""
    if stats.get("saved_steps"):
        return [(e, s, v) for s, e, v in stats.get("steps", [])], "saved steps"
    return [(e, None, t) for e, t, _ in _epoch_losses(stats)], "epochs"


def overtraining(stats: dict, patience_train: int, patience_validation: int,
                 delta: float) -> Outcome:
    """Training loss without a `delta` relative improvement for `patience_train`
    readings, or validation loss (one reading per pass) for `patience_validation`.
    Deviation where every step was recorded: a training reading is an epoch's mean
    (single-batch losses are too noisy for a 1% test)."""
    passes = _epoch_losses(stats)
    train, unit = _training_readings(stats)
    if len(train) < 2 or not passes:
        return _not("needs at least two epochs" if unit == "epochs" else
                    "needs two saved training losses and a validation pass")
    at = stalled([v for _, _, v in train], patience_train, delta)
    if at is not None:
        epoch, step, value = train[at]
        where = f"epoch {epoch}" if step is None else f"step {step}"
        return _fired(f"training loss did not improve by {delta:.0%} for {patience_train} "
                      f"{unit} ({where})", {"train_loss": value}, epoch, step)
    valid = [p[2] for p in passes]
    at = stalled(valid, patience_validation, delta)
    if at is not None:
        return _fired(f"validation loss did not improve by {delta:.0%} for "
                      f"{patience_validation} epochs (epoch {passes[at][0]})",
                      {"valid_loss": valid[at]}, passes[at][0])
    return _ok(f"training and validation losses still improving after {len(passes)} epochs")


def _loss_readings(stats: dict, num_steps: int) -> list[tuple[int, int, int, float]]:
    """LossNotDecreasing's readings, (first step, last step, epoch, loss): each saved
    step's loss (smdebug), or where every step was recorded the mean of each
    `num_steps` consecutive finite losses."""
    steps = stats.get("steps", [])
    if stats.get("saved_steps"):
        return [(s, s, e, v) for s, e, v in steps]
    losses = [(s, e, v) for s, e, v in steps if math.isfinite(v)]
    values = np.array([v for _, _, v in losses])
    return [(losses[end - num_steps][0], losses[end - 1][0], losses[end - 1][1],
             float(values[end - num_steps:end].mean()))
            for end in range(num_steps, len(losses) + 1, num_steps)]


def loss_not_decreasing(stats: dict, num_steps: int, diff_percent: float) -> Outcome:
    """Every `num_steps` steps the training loss must be `diff_percent`% below its
    value `num_steps` steps earlier. Deviation where every step was recorded: the
    loss compared is the mean of the `num_steps` steps up to the check, against the
    mean of the `num_steps` before (single batches differ by more than 0.1% from
    noise alone)."""
    saved = bool(stats.get("saved_steps"))
    readings = _loss_readings(stats, num_steps)
    if saved and len(readings) < 2:
        return _not("needs at least two saved training losses")
    if not saved and len(readings) < 2:
        finite = sum(1 for _, _, v in stats.get("steps", []) if math.isfinite(v))
        return _not(f"needs {2 * num_steps} training steps, has {finite}")
    last_steps = [r[1] for r in readings]
    checks, last_check = 0, None
    for i, (first, step, epoch, now) in enumerate(readings):
        if last_check is not None and step < last_check + num_steps:
            continue
        last_check = step
        j = bisect.bisect_right(last_steps, step - num_steps, 0, i) - 1  # the latest reading
        if j < 0:                                                       # num_steps before
            continue
        checks += 1
        before_step, before = readings[j][1], readings[j][3]
        if now > before * (1 - diff_percent / 100):
            reason = (f"mean training loss of steps {first}-{step} is {now:.4f}, not "
                      f"{diff_percent}% below {before:.4f} of the {num_steps} steps before"
                      if not saved else
                      f"training loss {now:.4f} at step {step} is not {diff_percent}% below "
                      f"{before:.4f} at step {before_step}")
            return _fired(reason, {"loss": now, "previous": before}, epoch, step)
    if not checks:
        return _not(f"losses span fewer than num_steps={num_steps} steps")
    return _ok(f"training loss fell at each of {checks} checks (every {num_steps} steps)",
               {"checks": checks})


def poor_weight_initialization(stats: dict, threshold: float, distribution_range: float,
                               patience: int, steps: int) -> Outcome:
    """In the first `steps` steps: the variance of the ReLU inputs across layers
    spans more than `threshold` times; or the gradients' 5th-95th percentile
    range is below `distribution_range`; or the loss does not fall within
    `patience` steps. Deviation: the percentiles are of all layers' gradients
    together, from a strided sample of at most 64k values per layer."""
    early = stats.get("early", [])[:steps]
    if not early:
        return _not("no statistics of the first steps recorded")
    for rec in early:
        var = [v for v in rec.get("relu_var", []) if v is not None and v > 0 and
               math.isfinite(v)]
        if len(var) > 1 and max(var) / min(var) > threshold:
            return _fired(f"ReLU input variance across layers spans {max(var) / min(var):.1f}x "
                          f"at step {rec['step']} (threshold {threshold:g}x)",
                          {"max_var": max(var), "min_var": min(var)}, rec["epoch"], rec["step"])
        spread = rec.get("grad_p95", 0) - rec.get("grad_p5", 0)
        if rec.get("grad_p95") is not None and spread < distribution_range:
            return _fired(f"gradients' 5th-95th percentile range is {spread:.2e} at step "
                          f"{rec['step']}, below {distribution_range:g}", {"range": spread},
                          rec["epoch"], rec["step"])
    losses = [v for _, _, v in stats.get("steps", [])[:steps]]
    if len(losses) > patience and min(losses[1:patience + 1]) >= losses[0]:
        return _fired(f"training loss did not fall below its first value {losses[0]:.4f} in "
                      f"the next {patience} steps", {"first_loss": losses[0]},
                      stats["steps"][0][1], stats["steps"][patience][0])
    return _ok(f"ReLU input variances within {threshold:g}x across layers and gradients "
               f"spread out in the first {len(early)} steps")


def class_imbalance(stats: dict, threshold_imbalance: float, threshold_misprediction: float,
                    samples: int) -> Outcome:
    """Largest class more than `threshold_imbalance` times the smallest; or, once
    `samples` labels were seen, an under-represented class (fewer training images
    than the median) mispredicted more than `threshold_misprediction` of the time.
    Deviation: mispredictions are counted on each validation pass, not on training
    batches."""
    counts = stats.get("class_counts") or {}
    if not counts:
        return _not("class counts unknown")
    most, least = max(counts.values()), min(counts.values())
    ratio = most / max(least, 1)
    if ratio > threshold_imbalance:
        small = min(counts, key=counts.get)
        return _fired(f"largest class has {most} training images, {small} only {least} "
                      f"({ratio:.1f}x, threshold {threshold_imbalance}x)",
                      {"largest": most, "smallest": least, "class": small}, 0, 0)
    median = float(np.median(list(counts.values())))
    labels = list(counts)
    for rec in stats.get("valid_per_class", []):
        if sum(rec["total"]) < samples:
            continue
        for label, correct, total in zip(labels, rec["correct"], rec["total"], strict=True):
            if total and counts[label] < median and 1 - correct / total > threshold_misprediction:
                return _fired(f"under-represented class {label} ({counts[label]} images) is "
                              f"mispredicted {1 - correct / total:.0%} of the time at epoch "
                              f"{rec['epoch']}", {"class": label}, rec["epoch"])
    return _ok(f"class sizes within {ratio:.1f}x (threshold {threshold_imbalance}x)",
               {"ratio": ratio})


# ---- system rules ---------------------------------------------------------------------

def _system(stats: dict, patience: int, need_gpu: bool = True):
    system = stats.get("system") or {}
    if need_gpu and not system.get("gpu_util"):
        return None, _not("needs a GPU (no GPU samples)")
    n = len(system.get("cpu") or system.get("gpu_util") or [])
    if n <= patience:
        return None, _not(f"{n} samples of 0.5 s; the rule waits for patience={patience}")
    return system, None


def low_gpu_utilization(stats: dict, threshold_p95: float, threshold_p5: float, window: int,
                        patience: int) -> Outcome:
    """Over the last `window` samples after the first `patience`: the 95th
    percentile of GPU utilization below `threshold_p95` (idle GPU), or above it
    with the 5th percentile below `threshold_p5` (fluctuating)."""
    system, early = _system(stats, patience)
    if early:
        return early
    util = np.array(system["gpu_util"][patience:])
    for end in range(min(window, len(util)), len(util) + 1, window):
        part = util[max(0, end - window):end]
        p95, p5 = np.percentile(part, 95), np.percentile(part, 5)
        if p95 < threshold_p95:
            return _fired(f"95th percentile of GPU utilization {p95:.0f}% < {threshold_p95}%",
                          {"p95": p95, "p5": p5}, system["epoch"][patience + end - 1])
        if p5 < threshold_p5:
            return _fired(f"GPU utilization fluctuates: 5th percentile {p5:.0f}% < "
                          f"{threshold_p5}%", {"p95": p95, "p5": p5},
                          system["epoch"][patience + end - 1])
    return _ok(f"GPU utilization p95 {np.percentile(util, 95):.0f}%, "
               f"p5 {np.percentile(util, 5):.0f}%")


def _bottleneck(stats: dict, key: str, limit: float, threshold: float, gpu_threshold: float,
                patience: int, what: str) -> Outcome:
    system, early = _system(stats, patience)
    if early:
        return early
    load = np.array(system[key][patience:])
    gpu = np.array(system["gpu_util"][patience:])
    share = float(np.mean((load > limit) & (gpu < gpu_threshold)) * 100)
    if share > threshold:
        return _fired(f"{what} above {limit}% with the GPU below {gpu_threshold}% in "
                      f"{share:.0f}% of the samples (threshold {threshold}%)", {"share": share},
                      system["epoch"][-1])
    return _ok(f"{what} bottleneck in {share:.0f}% of the samples", {"share": share})


def cpu_bottleneck(stats: dict, threshold, gpu_threshold, cpu_threshold, patience) -> Outcome:
    """Share of samples with CPU utilization above `cpu_threshold` while the GPU is
    below `gpu_threshold`, above `threshold` percent."""
    return _bottleneck(stats, "cpu", cpu_threshold, threshold, gpu_threshold, patience,
                       "CPU utilization")


def io_bottleneck(stats: dict, threshold, gpu_threshold, io_threshold, patience) -> Outcome:
    """As CPUBottleneck, with the CPUs' I/O wait share above `io_threshold`."""
    return _bottleneck(stats, "iowait", io_threshold, threshold, gpu_threshold, patience,
                       "I/O wait")


def gpu_memory_increase(stats: dict, increase: float, patience: int, window: int) -> Outcome:
    """The moving average of GPU memory use (percent of the GPU's memory) over
    `window` samples rising by more than `increase` percent over the window before."""
    system, early = _system(stats, patience)
    if early:
        return early
    mem = np.array(system["gpu_mem"][patience:], dtype=float)
    for end in range(2 * window, len(mem) + 1):
        now, before = mem[end - window:end].mean(), mem[end - 2 * window:end - window].mean()
        if before > 0 and (now - before) / before * 100 > increase:
            return _fired(f"GPU memory moving average rose from {before:.1f}% to {now:.1f}%",
                          {"before": before, "now": now}, system["epoch"][patience + end - 1])
    return _ok(f"GPU memory steady (peak {mem.max():.1f}% of the GPU)")


def batch_size(stats: dict, cpu_threshold_p95, gpu_threshold_p95, gpu_memory_threshold_p95,
               patience, window) -> Outcome:
    """95th percentiles of CPU, GPU and GPU-memory utilization over the last
    `window` samples all below their thresholds: the batch could be larger."""
    system, early = _system(stats, patience)
    if early:
        return early
    p95 = {k: float(np.percentile(system[k][-window:], 95)) for k in ("cpu", "gpu_util",
                                                                      "gpu_mem")}
    if (p95["cpu"] < cpu_threshold_p95 and p95["gpu_util"] < gpu_threshold_p95
            and p95["gpu_mem"] < gpu_memory_threshold_p95):
        return _fired(f"p95 CPU {p95['cpu']:.0f}%, GPU {p95['gpu_util']:.0f}%, GPU memory "
                      f"{p95['gpu_mem']:.0f}%: all below their thresholds", p95,
                      system["epoch"][-1])
    return _ok(f"p95 CPU {p95['cpu']:.0f}%, GPU {p95['gpu_util']:.0f}%, GPU memory "
               f"{p95['gpu_mem']:.0f}%", p95)


RULES = {
    "VanishingGradient": vanishing_gradient,
    "ExplodingTensor": exploding_tensor,
    "Overfit": overfit,
    "Overtraining": overtraining,
    "LossNotDecreasing": loss_not_decreasing,
    "PoorWeightInitialization": poor_weight_initialization,
    "ClassImbalance": class_imbalance,
    "LowGPUUtilization": low_gpu_utilization,
    "CPUBottleneck": cpu_bottleneck,
    "IOBottleneck": io_bottleneck,
    "GPUMemoryIncrease": gpu_memory_increase,
    "BatchSize": batch_size,
}


class RuleBook:
    """The verdicts of one source: re-evaluated on the statistics so far, sticky once
    issues were found. `announce`: one RULE log line per change (the job's own
    verdicts, which the rule metrics read; not the Debugger tensors' verdicts)."""

    def __init__(self, names: tuple[str, ...] = tuple(RULES), announce: bool = True):
        self.verdicts = {name: Verdict(name, advice=ADVICE[name], parameters=DEFAULTS[name])
                         for name in names}
        self.announce = announce
        self.reported: set[str] = set()  # rules whose status has had its log line

    def evaluate(self, stats: dict, only: tuple[str, ...] | None = None) -> None:
        for name in only or self.verdicts:
            verdict = self.verdicts[name]
            if verdict.status == ISSUES:
                continue
            try:
                outcome = RULES[name](stats, **DEFAULTS[name])
            except Exception as exc:  # noqa: BLE001 - one broken rule must not hide others
                log.warning("rule %s not evaluated: %s: %s", name, type(exc).__name__, exc)
                continue
            self._update(verdict, outcome, stats)

    def _update(self, verdict: Verdict, outcome: Outcome, stats: dict) -> None:
        changed = outcome.status != verdict.status
        verdict.status, verdict.reason = outcome.status, outcome.reason
        verdict.numbers = _plain(outcome.numbers)
        if outcome.status == ISSUES:
            epoch = outcome.epoch
            if epoch is None and outcome.step is not None:
                epoch = _epoch_of(stats, outcome.step)
            verdict.first = {"epoch": epoch, "step": outcome.step}
        if changed and self.announce:
            self._log(verdict)

    def _log(self, verdict: Verdict) -> None:
        where = ""
        if verdict.status == ISSUES and verdict.first:
            where = " ".join(f"{k}={v}" for k, v in verdict.first.items() if v is not None)
            where = f" {where}" if where else ""
        line = (f"RULE {verdict.rule} status={STATUS_CODE[verdict.status]} "
                f"{verdict.status}{where}: {verdict.reason}")
        # An argument, so that a class name in the reason is escaped (metrics.LineFormatter).
        (log.warning if verdict.status == ISSUES else log.info)("%s", line)
        self.reported.add(verdict.rule)

    def report_unevaluated(self) -> None:
        """The end of the job: one NotEvaluated line for each rule that never had one."""
        for verdict in self.verdicts.values():
            if verdict.rule not in self.reported:
                self._log(verdict)

    def as_list(self) -> list[dict]:
        return [asdict(v) for v in self.verdicts.values()]

    def summary_lines(self, title: str = "rule verdicts:") -> list[str]:
        width = max(len(n) for n in self.verdicts)
        lines = [title]
        lines += [f"  {v.rule:<{width}}  {v.status:<13}  {v.reason}"
                  for v in self.verdicts.values()]
        return lines


def write(book: RuleBook, target: Path) -> None:
    """The verdicts as a JSON list (the format of rules.json)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(book.as_list(), indent=2) + "\n")


def _plain(obj):
    """JSON-ready numbers (numpy scalars, non-finite values as strings)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else str(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    from . import debugger

    parser = argparse.ArgumentParser(
        prog="python -m dogbreed_train.rules",
        description="Evaluate SageMaker Debugger built-in rules on locally saved tensors.")
    parser.add_argument("tensors", help="smdebug output folder (the hook config's LocalPath)")
    parser.add_argument("--json", type=Path, help="also write the verdicts as JSON here")
    args = parser.parse_args(argv)
    if not Path(args.tensors).is_dir():
        parser.error(f"no such folder: {args.tensors}")
    logging.getLogger("smdebug").setLevel(logging.WARNING)
    book = debugger.evaluate_tensors(args.tensors)
    print("\n".join(book.summary_lines(debugger.RULES_TITLE)))
    if args.json:
        write(book, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
