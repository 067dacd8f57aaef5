"""The image's ``train`` command: what SageMaker runs, as ``docker run IMAGE train``.

That makes this process the container's PID 1, and the kernel drops every signal
PID 1 has no handler for: a SIGTERM that came before a handler was in place would
be lost, and the job would run on until it is killed. The kernel keeps a blocked
signal pending, though, so bin/train starts Python with SIGTERM blocked, and this,
before anything else:

1. installs a SIGTERM handler and unblocks the signal: until launch.py starts the
   training program there is nothing to save, and a SIGTERM, however early, stops
   the job at once with exit 143 and a ``Stopped:`` failure file;
2. checks the config files (job_config.check): a file the toolkit cannot read
   fails the job with one line that names it, not with a toolkit traceback;
3. runs the SageMaker training toolkit's own ``train`` in this process; it sets up
   the SM_* environment and calls launch.main (SAGEMAKER_TRAINING_MODULE).
"""

from __future__ import annotations

import os
import signal
import sys

from . import errors, job_config, stopping


def stop_at_once(signum, frame) -> None:
    """SIGTERM before the program starts (launch.py then takes over the signal)."""
    code = errors.report(stopping.Stopped(f"SIGTERM {stopping.STARTING}"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: the toolkit would report that as success


def main() -> None:
    signal.signal(signal.SIGTERM, stop_at_once)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one already here: now
    errors.clear_failure()
    try:
        job_config.check()
    except errors.UserError as exc:
        sys.exit(errors.report(exc))
    from sagemaker_training.cli.train import main as toolkit_train

    toolkit_train()  # exits with the job's code
