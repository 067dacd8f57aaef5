"""Writing a file so that no reader ever sees half of it, and no failure leaves debris.

Everything the job leaves in /opt/ml/model, /opt/ml/output/data and /opt/ml/checkpoints
is uploaded as it is, so a failed write (a full disk, an error, a kill) must not leave a
temporary file there. No torch import: report.py runs on its own, too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path):
    """Yield a temporary name beside `path` to write to, then rename it over `path`:
    a reader sees the old file or the whole new one, and a write that fails leaves no
    temporary file behind (one fixed name: one a kill left is overwritten next time)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """`data` to `path` atomically, flushed to disk before the rename."""
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
