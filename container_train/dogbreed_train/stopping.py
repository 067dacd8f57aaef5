"""SIGTERM: finish the current step, save a checkpoint, exit.

SageMaker sends SIGTERM when a spot instance is reclaimed or a job is stopped,
and `docker stop` does the same; the process is killed for good about two
minutes later on SageMaker (10 s by default for `docker stop`, see `-t`). The
handler only sets a flag: the training loop checks it after every step, saves
its place and raises Stopped, which exits with 143 (128 + SIGTERM) so that an
interrupted job never looks like a finished one.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Training stopped on SIGTERM after saving a checkpoint."""


class StopRequest:
    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            log.warning("SIGTERM received: stopping after the current step")
        self.requested = True
