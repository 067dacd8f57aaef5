"""SageMaker Debugger (smdebug) hook, only when the job asks for it.

SageMaker writes /opt/ml/input/config/debughookconfig.json when a training job
has a DebugHookConfig (the SDK adds one with Debugger rules). Without that file
smdebug is never imported, so training pays nothing for it. With it, the hook
records what the config's collections ask for (losses, weights, gradients,
biases, relu_input ...) in TRAIN and EVAL modes. smdebug is an old library: any
failure to set it up is logged and training goes on without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import paths

log = logging.getLogger(__name__)


def config_file() -> Path:
    env = os.environ.get("SMDEBUG_CONFIG_FILE_PATH")
    return Path(env) if env else paths.config_dir() / "debughookconfig.json"


class Debugger:
    """Thin wrapper: every method is safe to call when no hook is active."""

    def __init__(self, hook=None, modes=None):
        self.hook, self.modes = hook, modes

    @property
    def active(self) -> bool:
        return self.hook is not None

    @property
    def tensor_dir(self) -> str | None:
        return self.hook.out_dir if self.hook else None

    def train(self) -> None:
        if self.hook:
            self.hook.set_mode(self.modes.TRAIN)

    def eval(self) -> None:
        if self.hook:
            self.hook.set_mode(self.modes.EVAL)

    def close(self) -> None:
        if self.hook:
            try:
                self.hook.close()
            except Exception as exc:  # noqa: BLE001 - the model matters more than tensors
                log.warning("smdebug hook did not close cleanly: %s", exc)


def create(model, criterion, enabled: bool = True) -> Debugger:
    """A hook registered on `model` and `criterion` if the config file exists."""
    cfg = config_file()
    if not enabled or not cfg.exists():
        return Debugger()
    try:
        import smdebug.pytorch as smd
        from smdebug import modes

        hook = smd.Hook.create_from_json_file(str(cfg))
        hook.register_module(model)
        hook.register_loss(criterion)
    except Exception as exc:  # noqa: BLE001 - smdebug must never stop training
        log.warning("SageMaker Debugger hook disabled: %s: %s", type(exc).__name__, exc)
        return Debugger()
    log.info("SageMaker Debugger: saving tensors to %s", hook.out_dir)
    return Debugger(hook, modes)
