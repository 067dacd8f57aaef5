"""``python -m dogbreed_train``: the training program (cli.py), started by launch.py.

SIGTERM is handled before anything heavy is imported (the training program
imports torch, which takes seconds): a job stopped while it starts says so and
exits 143.
"""

import sys

from . import stopping

stopping.stop_at_once(stopping.STARTING)

from . import errors  # noqa: E402 - after the handler, on purpose

try:
    from .cli import main  # noqa: E402

    code = main()
except stopping.Stopped as exc:  # during the imports; main() reports its own
    code = errors.report(exc)
sys.exit(code)
