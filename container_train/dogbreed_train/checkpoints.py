"""Resumable training state in /opt/ml/checkpoints (SageMaker syncs it with S3).

One file, ``checkpoint.pt``, always complete: it is written to a temporary file
in the same folder, flushed to disk and renamed over the old one, so a kill at
any moment leaves either the old checkpoint or the new one, never half of one.
Checkpoints come from S3 and are loaded with ``weights_only=True``: tensors and
plain Python values only, no arbitrary pickles.

Resuming (``restore``) applies a checkpoint to the freshly built model, optimizer,
scheduler and loss scaler. A part that a changed hyperparameter shapes (another
optimizer, a frozen backbone, another scheduler or AMP mode) starts fresh, and the
log says so; a checkpoint whose content does not fit the run its metadata names is
refused in one line. Either way the job never dies of a traceback.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from . import paths
from .errors import UserError
from .files import replacing

log = logging.getLogger(__name__)

FILENAME = "checkpoint.pt"
# A checkpoint is only reused for the same task: these must match to resume.
MUST_MATCH = ("model", "image-size", "hidden-units")
# The parts of the training state that these hyperparameters shape: when one of them
# changed since the checkpoint, that part starts fresh (the saved one does not fit).
FRESH_WHEN_CHANGED = {"optimizer": ("optimizer", "freeze-backbone"),
                      "lr scheduler": ("lr-scheduler",)}


def path() -> Path:
    return paths.checkpoint_dir() / FILENAME


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(state: dict) -> Path:
    """Atomically replace the checkpoint with `state` (rank 0 alone writes)."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{FILENAME}*.tmp"):  # left by older images, too
        stale.unlink(missing_ok=True)
    try:
        with replacing(target) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError, with the OSError as its cause.
        cause = exc if isinstance(exc, OSError) else (exc.__context__ or exc)
        reason = getattr(cause, "strerror", None) or str(cause)
        raise UserError(f"cannot write the checkpoint to {target.parent}: {reason}. "
                        "Free space or fix the permissions of the checkpoint folder.") from None
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return target


def load(hyperparameters: dict, labels: list[str]) -> dict | None:
    """The checkpoint to resume from, or None when there is none."""
    target = path()
    if not target.exists():
        return None
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        log.debug("loading %s failed: %r", target, exc)
        raise UserError(f"the checkpoint {target} cannot be read: it is damaged or was not "
                        f"written by this training image ({type(exc).__name__}). Delete it "
                        "(or use another checkpoint_s3_uri) to start over.") from None
    old = state.get("hyperparameters", {}) if isinstance(state, dict) else None
    if not isinstance(old, dict):
        raise UserError(f"the checkpoint {target} does not hold a training state of this "
                        "image (no hyperparameters). Delete it (or use another "
                        "checkpoint_s3_uri) to start over.")
    clashes = [k for k in MUST_MATCH if old.get(k) != hyperparameters.get(k)]
    if state.get("labels") != labels:
        clashes.append("classes")
    if clashes:
        raise UserError(f"the checkpoint in {target.parent} belongs to another training run "
                        f"(different {', '.join(clashes)}). Delete it or use another "
                        "checkpoint_s3_uri to start over.")
    changed = sorted(k for k in hyperparameters if old.get(k) != hyperparameters[k])
    if changed:
        log.warning("resuming with changed hyperparameters: %s", ", ".join(changed))
    return state


def refuse(what: str) -> UserError:
    return UserError(f"the checkpoint {path()} does not fit this training run: {what}. "
                     "Delete it (or use another checkpoint_s3_uri) to start over.")


def restore(state: dict, hyperparameters: dict, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
            announce: bool = True) -> list[str]:
    """Apply a checkpoint (load()'s) to a freshly built run; returns the parts that
    start fresh. Every rank calls it with the same state, so all refuse alike."""
    _check_progress(state)
    _load_model(model, state.get("model"))
    old = state["hyperparameters"]
    changed = {part: [k for k in keys if old.get(k) != hyperparameters.get(k)]
               for part, keys in FRESH_WHEN_CHANGED.items()}
    changed = {part: keys for part, keys in changed.items() if keys}
    if "optimizer" not in changed:
        _load_optimizer(optimizer, state.get("optimizer"))
    if "lr scheduler" not in changed:
        _load_scheduler(scheduler, state.get("scheduler"), len(optimizer.param_groups))
        if "optimizer" in changed:  # the new optimizer takes up the schedule where it was
            for group, base, lr in zip(optimizer.param_groups, scheduler.base_lrs,
                                       scheduler.get_last_lr(), strict=True):
                group["initial_lr"], group["lr"] = base, lr
    else:  # the new schedule, stepped to the checkpoint's epoch
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["initial_lr"] = group["lr"] = base
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state["next_epoch"] - 1):
                scheduler.step()
    try:
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError):
        raise refuse("its random-number state is missing or damaged") from None
    fresh = list(changed)
    if not _load_scaler(scaler, state.get("scaler")):
        fresh.append("loss scaler")  # it finds its scale again within a few steps
    if fresh and announce:
        why = "; ".join(f"{k} was {old.get(k)!r}, is {hyperparameters.get(k)!r}"
                        for keys in changed.values() for k in keys)
        log.warning("resuming with a fresh %s (%s); the weights, epoch and history are the "
                    "checkpoint's", " and ".join(fresh),
                    why or "the saved one does not fit this device or AMP mode")
    return fresh


def _is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_progress(state: dict) -> None:
    """Where the run resumes: what Progress.from_checkpoint and resume() read."""
    if not (_is_count(state.get("next_epoch"), 1) and _is_count(state.get("next_step"), 0)
            and isinstance(state.get("history"), list)):
        raise refuse("its epoch, step or history is missing or damaged")
    partial = state.get("partial")
    if state["next_step"] and not (isinstance(partial, dict)
                                   and {"loss", "correct", "seen"} <= set(partial)):
        raise refuse("the running sums of its unfinished epoch are missing")
    bad = state.get("bad_images", [])
    if not (isinstance(bad, list) and all(isinstance(b, str) for b in bad)):
        raise refuse("its list of unreadable images is damaged")


def _load_model(model: torch.nn.Module, saved) -> None:
    """The weights, each layer checked by name and shape first: one clear line rather
    than load_state_dict's list of errors."""
    if not isinstance(saved, dict):
        raise refuse("it holds no model weights")
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        which = (f"lacks layer {missing[0]}" if missing else
                 f"has a layer {extra[0]} that this model lacks")
        raise refuse(f"its network {which} ({len(missing)} missing, {len(extra)} unknown)")
    for key, ours in expected.items():
        value = saved[key]
        if not isinstance(value, torch.Tensor) or value.shape != ours.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise refuse(f"layer {key} is {shape} in the checkpoint, {tuple(ours.shape)} "
                         "in this model")
    model.load_state_dict(saved)


def _load_optimizer(optimizer: torch.optim.Optimizer, saved) -> None:
    """The optimizer's state, checked against this run's parameters first: the group
    sizes, the shape of each per-parameter tensor, then every setting it needs."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    per_param = saved.get("state") if isinstance(saved, dict) else None
    if not (isinstance(groups, list) and isinstance(per_param, dict)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise refuse("its optimizer state is missing or damaged")
    sizes = [len(g["params"]) for g in groups]
    ours = [len(g["params"]) for g in optimizer.param_groups]
    if sizes != ours:
        raise refuse(f"its optimizer holds {sum(sizes)} parameter tensors in {len(sizes)} "
                     f"group(s), this model trains {sum(ours)} in {len(ours)}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for param, saved_id in zip(params, [i for g in groups for i in g["params"]], strict=True):
        entry = per_param.get(saved_id, {})
        if not isinstance(entry, dict):
            raise refuse("its optimizer state is damaged")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                raise refuse(f"its optimizer's {name} of shape {tuple(value.shape)} belongs "
                             f"to another network (the parameter is {tuple(param.shape)})")
    needed = [set(g) for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise refuse(f"its optimizer state does not load ({type(exc).__name__})") from None
    for group, keys in zip(optimizer.param_groups, needed, strict=True):
        lacking = sorted(keys - set(group))
        if lacking:
            raise refuse(f"its optimizer state lacks {', '.join(lacking)}, which "
                         f"{type(optimizer).__name__} needs")


def _load_scheduler(scheduler, saved, groups: int) -> None:
    """The scheduler's state: every key it keeps, and a learning rate per group."""
    if not isinstance(saved, dict):
        raise refuse("its lr scheduler state is missing")
    lacking = sorted(set(scheduler.state_dict()) - set(saved))
    if lacking:
        raise refuse(f"its lr scheduler state lacks {', '.join(lacking)}")
    try:
        scheduler.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise refuse(f"its lr scheduler state does not load ({type(exc).__name__})") from None
    rates = [scheduler.base_lrs, scheduler.get_last_lr()]
    if not (_is_count(scheduler.last_epoch, 0) and all(
            isinstance(r, list) and len(r) == groups and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in r)
            for r in rates)):
        raise refuse("its lr scheduler state is damaged")


def _load_scaler(scaler: torch.amp.GradScaler, saved) -> bool:
    """The AMP loss scale when the saved one fits this run; False when it starts fresh
    (a CPU checkpoint on a GPU, another AMP mode, or a damaged one)."""
    if not scaler.is_enabled():
        return True  # nothing to restore: no fp16 loss scaling here
    keys = scaler.state_dict()
    if not (isinstance(saved, dict) and all(
            isinstance(saved.get(k), (int, float)) and not isinstance(saved[k], bool)
            for k in keys)):
        return False
    try:
        scaler.load_state_dict(saved)
    except (ValueError, KeyError, TypeError, RuntimeError):
        return False
    return True
