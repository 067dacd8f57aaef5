"""What every training job records about itself, for the rules, TensorBoard and the report.

Recorded, cheaply enough to stay on in every job (benchmarks/recording_cost.py
measures the cost):
- the training loss of every step, read back from the device every
  SYNC_STEPS steps on GPU (every step on CPU, where reading is free), so the
  GPU is not waited on; a non-finite loss stops the job (nan-loss=stop) with
  the step, the last finite loss and the likely cause;
- per-layer gradient mean |g| and L2 norm, and weight L2 norm, at every
  ``debug-interval``-th step and in the first EARLY_STEPS steps (fused
  torch._foreach_norm, one device read);
- in the first EARLY_STEPS steps, each ReLU's input variance (forward
  pre-hooks, removed afterwards) and gradient percentiles from a sample;
- weight and gradient histograms of a sample of each conv/linear weight at the
  first recorded step of each epoch;
- per epoch: losses, accuracies, learning rate, images/s, data-wait share, GPU
  use; and the CPU/GPU samples of profiling.GpuSampler.

Rank 0 alone writes: TensorBoard event files under /opt/ml/output/tensorboard
(SageMaker's TensorBoardOutputConfig path, copied into output/data/tensorboard at
the end so output.tar.gz always has them), statistics.json and rules.json in
/opt/ml/output/data. Nothing in here may fail training: each part that fails
logs one warning and switches itself off.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
from pathlib import Path

import torch
from torch import nn

from . import rules
from .errors import UserError
from .files import replacing
from .observers import Observer

log = logging.getLogger(__name__)

SYNC_STEPS = 10         # GPU: read the step losses back every this many steps
EARLY_STEPS = 10        # PoorWeightInitialization's `steps`
SAMPLE = 65536          # values per tensor for percentiles and histograms
STATISTICS_FILE, RULES_FILE = "statistics.json", "rules.json"


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite (nan-loss=stop)."""


def guarded(method):
    """Run a reporting method; on any error log once and switch that part off.
    NonFiniteLoss passes: stopping the job is the point of it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if method.__name__ in self.broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except NonFiniteLoss:
            raise
        except Exception as exc:  # noqa: BLE001 - reporting must never fail training
            self.broken.add(method.__name__)
            log.warning("recording: %s switched off after %s: %s", method.__name__,
                        type(exc).__name__, exc)
            return None

    return wrapper


def _sample(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    if flat.numel() > SAMPLE:
        flat = flat[:: flat.numel() // SAMPLE + 1]
    return flat.float()


class Recorder(Observer):
    """Statistics of one run, and the rules on them; one of the loop's observers.
    `main` (rank 0) records and writes everything; the other ranks only check their
    own losses for NaN."""

    def __init__(self, model: nn.Module, *, main: bool, enabled: bool, interval: int,
                 nan_loss: str, device: torch.device, amp: torch.dtype | None, lr: float,
                 tensorboard_dir: Path, out_dir: Path, class_counts: dict[str, int],
                 hyperparameters: dict):
        self.model, self.main, self.enabled = model, main, enabled
        self.interval, self.nan_loss, self.device, self.amp = interval, nan_loss, device, amp
        self.lr = lr
        self.sync_steps = 1 if device.type == "cpu" else SYNC_STEPS
        self.tensorboard_dir, self.out_dir = tensorboard_dir, out_dir
        self.broken: set[str] = set()
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.last_finite: tuple[int, float] | None = None
        self.nan_seen = False
        self.hist_epochs: set[int] = set()
        self.hooks: list = []
        self.relu_var: list[torch.Tensor] = []
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        amp_name = str(amp).replace("torch.", "") if amp else None
        self.stats: dict = {
            "device": device.type, "amp": amp_name, "hyperparameters": hyperparameters,
            "class_counts": class_counts, "layers": [n for n, _ in self.params],
            "debug_interval": interval, "steps": [], "gradients": [], "early": [],
            "epochs": [], "valid_per_class": [], "system": {}}
        self.rules = rules.RuleBook()
        self.writer = None
        if main and enabled:
            self._open_writer()
            self._hook_relus()
            self.rules.evaluate(self.stats, only=("ClassImbalance",))

    @property
    def recording(self) -> bool:
        return self.main and self.enabled

    # ---- set-up -------------------------------------------------------------------
    @guarded
    def _open_writer(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir), flush_secs=30)
        log.info("TensorBoard event files: %s", self.tensorboard_dir)

    @guarded
    def _hook_relus(self) -> None:
        def pre_hook(module, args):
            if module.training and args and isinstance(args[0], torch.Tensor):
                self.relu_var.append(args[0].detach().float().var())

        for module in self.model.modules():
            if isinstance(module, nn.ReLU):
                self.hooks.append(module.register_forward_pre_hook(pre_hook))

    def _unhook(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        self.relu_var.clear()

    # ---- every step ---------------------------------------------------------------
    def after_backward(self, step: int, epoch: int, loss: torch.Tensor,
                       scaler: torch.amp.GradScaler) -> None:
        """Call between backward() and the optimizer step: gradients are there."""
        self.pending.append((step, epoch, loss.detach()))
        if self.recording and (step < EARLY_STEPS or step % self.interval == 0
                               or epoch not in self.hist_epochs):
            self._layer_stats(step, epoch, scaler)
        if len(self.pending) >= self.sync_steps:
            self.flush()
        if self.hooks and step + 1 >= EARLY_STEPS:  # also right away after a resume
            self._unhook()

    def end_train(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Read the pending losses back; NaN/inf stops the job (or is recorded)."""
        if not self.pending:
            return
        values = torch.stack([t.float() for _, _, t in self.pending]).cpu().tolist()
        pending, self.pending = self.pending, []
        for (step, epoch, _), value in zip(pending, values, strict=True):
            if self.recording:
                self._record_loss(step, epoch, value)
            if math.isfinite(value):
                self.last_finite = (step, value)
            elif not self.nan_seen:
                self.nan_seen = True
                self._non_finite(step, epoch, value)

    @guarded
    def _record_loss(self, step: int, epoch: int, value: float) -> None:
        self.stats["steps"].append((step, epoch, value))
        if self.writer is not None and math.isfinite(value):
            self.writer.add_scalar("loss/train_step", value, step)

    def _non_finite(self, step: int, epoch: int, value: float) -> None:
        if self.recording:
            self.rules.evaluate(self.stats, only=("ExplodingTensor",))
        last = (f"the last finite loss was {self.last_finite[1]:.4f} at step "
                f"{self.last_finite[0]}" if self.last_finite else "no step had a finite loss")
        if self.amp == torch.float16:
            cause = ("likely cause: fp16 overflow under amp=fp16 (try amp=bf16 or amp=off), "
                     f"or the learning rate lr={self.lr:g} is too high")
        else:
            cause = (f"likely cause: the learning rate lr={self.lr:g} is too high (lower it, "
                     "or add warm-up); also check the images for all-constant or corrupt data")
        message = (f"training loss became {value} at step {step} (epoch {epoch}); {last}; "
                   f"{cause}. Set nan-loss=continue to keep training anyway.")
        if self.nan_loss == "stop":
            raise NonFiniteLoss(message)
        log.warning("non-finite loss, training goes on (nan-loss=continue): %s", message)

    @guarded
    def _layer_stats(self, step: int, epoch: int, scaler: torch.amp.GradScaler) -> None:
        names = [n for n, p in self.params if p.grad is not None]
        grads = [p.grad for _, p in self.params if p.grad is not None]
        weights = [p.detach() for _, p in self.params]
        if not grads:
            return
        l1 = torch._foreach_norm(grads, 1)  # fused: a few kernels for all layers
        l2 = torch._foreach_norm(grads, 2)
        w2 = torch._foreach_norm(weights, 2)
        numel = torch.tensor([g.numel() for g in grads], device=grads[0].device)
        parts = [torch.stack(l1).float() / numel, torch.stack(l2).float(),
                 torch.stack(w2).float()]
        early = step < EARLY_STEPS
        if early:
            sample = torch.cat([_sample(g) for g in grads])
            parts.append(torch.quantile(sample, torch.tensor([0.05, 0.95],
                                                             device=sample.device)))
            if self.relu_var:
                parts.append(torch.stack(self.relu_var))
        values = torch.cat([p.reshape(-1) for p in parts]).cpu().tolist()
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        n = len(grads)
        by_name = dict(zip(names, range(n), strict=True))
        mean_abs = [values[by_name[k]] / scale if k in by_name else None
                    for k in self.stats["layers"]]
        l2_vals = [values[n + by_name[k]] / scale if k in by_name else None
                   for k in self.stats["layers"]]
        self.stats["gradients"].append({
            "step": step, "epoch": epoch, "mean_abs": mean_abs, "l2": l2_vals,
            "weight_l2": values[2 * n:3 * n]})
        if early:
            rest = values[3 * n:]
            self.stats["early"].append({"step": step, "epoch": epoch,
                                        "grad_p5": rest[0] / scale, "grad_p95": rest[1] / scale,
                                        "relu_var": rest[2:]})
        self.relu_var.clear()
        first_of_epoch = epoch not in self.hist_epochs
        self.hist_epochs.add(epoch)
        if self.writer is not None:
            total = math.sqrt(sum(v * v for v in l2_vals if v is not None and
                                  math.isfinite(v)))
            self.writer.add_scalar("gradients/global_l2_norm", total, step)
            if first_of_epoch:
                self._histograms(step, scale)

    def _histograms(self, step: int, scale: float) -> None:
        for name, p in self.params:
            if p.dim() < 2:  # conv and linear weights; biases and norms add little
                continue
            self.writer.add_histogram(f"weights/{name}", _sample(p).cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"gradients/{name}",
                                          (_sample(p.grad) / scale).cpu(), step)

    # ---- every epoch --------------------------------------------------------------
    @guarded
    def end_epoch(self, row: dict, valid_per_class: dict | None, system: dict) -> None:
        """After validation: scalars, the epoch's numbers, and the rules on all of it."""
        if not self.recording:
            return
        self.stats["epochs"].append(row)
        if valid_per_class:
            self.stats["valid_per_class"].append({"epoch": row["epoch"], **valid_per_class})
        self.stats["system"] = system
        if self.writer is not None:
            e = row["epoch"]
            for tag, key in (("loss/train", "train_loss"), ("loss/valid", "valid_loss"),
                             ("accuracy/train", "train_acc"), ("accuracy/valid", "valid_acc"),
                             ("learning_rate", "lr"), ("throughput/images_per_s",
                                                       "images_per_s"),
                             ("time/data_wait_share", "data_wait"),
                             ("gpu/utilization", "gpu_util"), ("gpu/memory_gib",
                                                               "gpu_mem_gib")):
                if row.get(key) is not None and math.isfinite(row[key]):
                    self.writer.add_scalar(tag, row[key], e)
            self.writer.flush()
        self.rules.evaluate(self.stats)
        self.save()

    # ---- the end ------------------------------------------------------------------
    @guarded
    def save(self) -> None:
        """statistics.json and rules.json, rewritten after each epoch."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.out_dir / STATISTICS_FILE, self.stats)
        _write_json(self.out_dir / RULES_FILE, self.rules.as_list())

    def close(self, test: dict | None = None) -> None:
        """Final rules, files, and the event files copied into output/data."""
        if self.hooks:
            self._unhook()
        if not self.recording:
            return
        if test is not None:
            self.stats["test"] = test
        self._final_rules()
        self.save()
        self._close_writer()

    @guarded
    def _final_rules(self) -> None:
        self.rules.evaluate(self.stats)
        self.rules.report_unevaluated()
        for line in self.rules.summary_lines():  # a record each: reasons name classes
            log.info("%s", line)

    @guarded
    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.tensorboard_dir.is_dir():
            target = self.out_dir / "tensorboard"
            shutil.copytree(self.tensorboard_dir, target, dirs_exist_ok=True)


def _write_json(path: Path, obj) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str, allow_nan=True))
