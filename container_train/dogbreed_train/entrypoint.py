"""The image's ``train`` command: what SageMaker runs, as ``docker run IMAGE train``.

That makes this process the container's PID 1, and the kernel drops every signal
PID 1 has no handler for: a SIGTERM that came before a handler was in place would
be lost, and the job would run on until it is killed. The kernel keeps a blocked
signal pending, though, so bin/train starts Python with SIGTERM blocked, and this,
before anything else:

1. installs a SIGTERM handler and unblocks the signal: until launch.py starts the
   training program there is nothing to save, and a SIGTERM, however early, stops
   the job at once with exit 143 and a ``Stopped:`` failure file;
2. reads the job once (job_config.read): the config files, the hyperparameters and
   the cluster, validated, so that a bad one fails the job with one line that names
   it, before the toolkit or torch is imported; the job is handed down as DOGBREED_JOB;
3. runs the SageMaker training toolkit's own ``train`` in this process; it calls
   launch.main (SAGEMAKER_TRAINING_MODULE), which starts the training program.

The training toolkit
--------------------
What the toolkit (sagemaker-training: trainer.train, environment.Environment)
forces on this image, in one place; other modules name these by their tags:

- [toolkit-reads-config] It reads the three config files itself, with a bare
  json.load, before it calls launch.main, and a file it cannot read ends the job
  as ``Framework Error:`` with a traceback. Hence step 2, first.
- [toolkit-decodes-hyperparameters] It JSON-decodes each hyperparameter value, as
  the SDK's estimators and tuners JSON-encode them (``"\\"8\\""``). The image reads
  the file itself and takes both forms (config.unquote).
- [toolkit-keeps-SM-variables] It exports SM_HOSTS, SM_NUM_GPUS, SM_CHANNEL_* ...
  only on its path for a user script (``Environment.to_env_vars``), not when it
  calls a framework module as it calls launch.main. So the cluster comes from
  resourceconfig.json, SM_* winning only where someone set them
  (cluster.Cluster.from_config), and the job travels in DOGBREED_JOB instead.
- [toolkit-exits-0-on-SystemExit] A SystemExit from launch.main is reported as
  success (its ``finally`` exits 0); any other exception exits with the
  exception's ``errno``, else 1. So launch.py raises TrainingFailed, whose errno
  is the program's exit code, and this module leaves before the toolkit runs:
  ``sys.exit`` for a bad job, ``os._exit`` from the SIGTERM handler.
- [toolkit-writes-failure] On an exception it writes ``Framework Error:`` and a
  traceback to the failure file unless one is there: every failure of the image's
  own writes the failure file first (errors.report).
"""

from __future__ import annotations

import os
import signal
import sys

from . import errors, job_config, paths, stopping


def stop_at_once(signum, frame) -> None:
    """SIGTERM before the program starts (launch.py then takes over the signal)."""
    code = errors.report(stopping.Stopped(f"SIGTERM {stopping.STARTING}"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: [toolkit-exits-0-on-SystemExit]


def main() -> None:
    signal.signal(signal.SIGTERM, stop_at_once)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one already here: now
    errors.clear_failure()
    if paths.base_dir().exists():  # else the toolkit lays out a job of defaults itself
        try:
            job = job_config.read()
        except errors.UserError as exc:
            sys.exit(errors.report(exc))
        os.environ.update(job.to_env())
    from sagemaker_training.cli.train import main as toolkit_train

    toolkit_train()  # exits with the job's code
