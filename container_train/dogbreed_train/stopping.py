"""SIGTERM, honoured at every stage of a job: stop, save what is worth saving, exit 143.

SageMaker sends SIGTERM when a spot instance is reclaimed or a job is stopped,
and `docker stop` does the same; the process is killed for good about two
minutes later on SageMaker (10 s by default for `docker stop`, see `-t`). Exit
143 (128 + SIGTERM) and a ``Stopped: ...`` failure file mean that an interrupted
job never looks like a finished one.

Each process of a job handles SIGTERM in one of two ways:

- *at once* (``stop_at_once``): before training starts and after it ends there
  is no step to finish, so the handler raises Stopped wherever the program is,
  even in the middle of ``import torch``. The program starts this way.
- *after the step* (``StopRequest``): while training, the handler only sets a
  flag; the loop checks it after every step, saves its place and raises Stopped.

The container's PID 1 (the image's ``train`` command) stops the job at once
until it starts the program (entrypoint.py), then passes SIGTERM on (launch.py).
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)

# Where a job can be when a SIGTERM stops it at once, as the failure file says it.
STARTING = ("while the job was starting, before any training step; nothing new was "
            "trained. Run the job again to start it (it resumes from a checkpoint if "
            "there is one).")
FINISHING = ("after training, while testing and exporting the model; the last epoch's "
             "checkpoint is saved. Run the job again to finish it without training.")


class Stopped(BaseException):
    """The job stopped on SIGTERM (after saving a checkpoint, where there was one).

    A BaseException, as KeyboardInterrupt is: raised by a handler anywhere, it must
    not be taken for a library's own error by an ``except Exception`` on its way."""


def stop_at_once(where: str) -> None:
    """From now on a SIGTERM raises Stopped(`where`) at once, the first time it comes."""
    raised = False

    def _raise(signum, frame) -> None:
        nonlocal raised
        if raised:  # a second SIGTERM must not interrupt the report of the first
            return
        raised = True
        raise Stopped(f"SIGTERM {where}")

    signal.signal(signal.SIGTERM, _raise)


class StopRequest:
    """SIGTERM during training: stop after the current step (the loop asks ``requested``)."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            log.warning("SIGTERM received: stopping after the current step")
        self.requested = True

    def training_done(self, requested: bool) -> None:
        """After the last epoch's checkpoint: a SIGTERM that came since the loop last
        looked (`requested`, as all ranks agree), or that comes during test and export,
        stops the job at once."""
        if requested:
            raise Stopped(f"SIGTERM {FINISHING}")
        stop_at_once(FINISHING)
