"""Failures a user can fix, and the SageMaker failure file.

SageMaker shows the first 1024 characters of /opt/ml/output/failure as the job's
FailureReason, so its first line must say what went wrong and what to do.
"""

import logging

from dogbreed_contract import ContractError
from dogbreed_contract.metrics import escape

from . import paths
from .stopping import Stopped

log = logging.getLogger(__name__)


class UserError(Exception):
    """Bad input (data, hyperparameters, weights): reported without a traceback.

    The contract package's refusals (``ContractError``: a data layout, an image) are
    reported the same way.
    """


def clear_failure() -> None:
    """A failure file from an earlier run on the same /opt/ml must not outlive it."""
    paths.failure_file().unlink(missing_ok=True)


def write_failure(message: str) -> None:
    path = paths.failure_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message.rstrip() + "\n")
    except OSError as exc:  # an unwritable output dir must not hide the real error
        log.error("could not write %s: %s", path, exc)


def failure_reason() -> str:
    """The kind of failure recorded (``UserError``, ``Stopped`` ...); "" for none."""
    try:
        return paths.failure_file().read_text().split(":", 1)[0]
    except OSError:
        return ""


def report(exc: BaseException) -> int:
    """Log and record a failure; return the process exit code.

    The exception's text is escaped (names from the data may hold newlines), so the
    failure file's first line is the whole message."""
    text = escape(str(exc))
    if isinstance(exc, (UserError, ContractError)):
        message = f"UserError: {text}"
        log.error("%s", message)
        code = 2
    elif isinstance(exc, Stopped):
        message = f"Stopped: {text}"
        log.warning("%s", message)
        code = 143
    elif isinstance(exc, KeyboardInterrupt):
        message = "Interrupted: training was stopped before it finished."
        log.error("%s", message)
        code = 130
    else:
        headline = f"InternalError: {type(exc).__name__}: {text}"
        message = (f"{headline}\nThis is likely a bug in the training image; the job log "
                   "has the traceback.")
        log.error("%s", headline, exc_info=exc)
        code = 1
    write_failure(message)
    return code
