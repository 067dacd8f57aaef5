"""Resumable training state in /opt/ml/checkpoints (SageMaker syncs it with S3).

One file, ``checkpoint.pt``, always complete: it is written to a temporary file
in the same folder, flushed to disk and renamed over the old one, so a kill at
any moment leaves either the old checkpoint or the new one, never half of one.
Checkpoints come from S3 and are loaded with ``weights_only=True``: tensors and
plain Python values only, no arbitrary pickles.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from . import paths
from .errors import UserError

log = logging.getLogger(__name__)

FILENAME = "checkpoint.pt"
# A checkpoint is only reused for the same task: these must match to resume.
MUST_MATCH = ("model", "image-size", "hidden-units")


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
    # One fixed temporary name: a save cut short by a kill is overwritten by the next
    # one instead of lying around (and being uploaded to S3).
    tmp = target.with_name(f".{FILENAME}.tmp")
    for stale in target.parent.glob(f".{FILENAME}*.tmp"):  # left by older images, too
        stale.unlink(missing_ok=True)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError, with the OSError as its cause.
        cause = exc if isinstance(exc, OSError) else (exc.__context__ or exc)
        reason = getattr(cause, "strerror", None) or str(cause)
        tmp.unlink(missing_ok=True)
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
    old = state.get("hyperparameters", {})
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
