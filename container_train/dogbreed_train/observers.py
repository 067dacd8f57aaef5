"""What watches the training loop: called at the same points, in the same order.

The loop (train.py) holds one `Observers` list and calls it at each point below;
it never knows who listens. The members: recording.Recorder (statistics, the
rules, TensorBoard; every job) and debugger.Hook (smdebug, only with a Debugger
hook config). A point an observer does not need is the base class's no-op.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Observer:
    """The loop's points, in the order they come."""

    def start_train(self) -> None:
        """An epoch's training steps begin."""

    def after_backward(self, step: int, epoch: int, loss: torch.Tensor,
                       scaler: torch.amp.GradScaler) -> None:
        """Between backward() and the optimizer step: the gradients are there."""

    def end_train(self) -> None:
        """The epoch's training steps are done (or cut short)."""

    def start_eval(self) -> None:
        """A validation pass begins."""

    def eval_batch(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """One validation batch's outputs."""

    def end_epoch(self, row: dict, valid_per_class: dict | None, system: dict) -> None:
        """After validation: the epoch's numbers, per-class counts, CPU/GPU samples."""

    def end_training(self) -> None:
        """No more training steps: done, or stopped by SIGTERM."""

    def report(self, out_dir: Path) -> None:
        """Rank 0, after the test predictions: write what this observer reports."""

    def before_export(self, model: nn.Module) -> nn.Module:
        """The model to export in place of `model`."""
        return model

    def close(self, test: dict | None = None) -> None:
        """The job ends (also at a NaN stop): final files, with the test metrics if any."""


class Observers(list):
    """The loop's observers, called one after another at each point."""

    def start_train(self) -> None:
        for o in self:
            o.start_train()

    def after_backward(self, step, epoch, loss, scaler) -> None:
        for o in self:
            o.after_backward(step, epoch, loss, scaler)

    def end_train(self) -> None:
        for o in self:
            o.end_train()

    def start_eval(self) -> None:
        for o in self:
            o.start_eval()

    def eval_batch(self, logits, targets) -> None:
        for o in self:
            o.eval_batch(logits, targets)

    def end_epoch(self, row, valid_per_class, system) -> None:
        for o in self:
            o.end_epoch(row, valid_per_class, system)

    def end_training(self) -> None:
        for o in self:
            o.end_training()

    def report(self, out_dir) -> None:
        for o in self:
            o.report(out_dir)

    def before_export(self, model: nn.Module) -> nn.Module:
        for o in self:
            model = o.before_export(model)
        return model

    def close(self, test=None) -> None:
        for o in self:
            o.close(test)
