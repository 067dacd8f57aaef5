"""A data loader that never hangs: every wait for a batch is bounded (``loader-timeout``).

A batch that never comes leaves the GPU idle until the job's MaxRuntime, days
later, and says nothing. Seen on an H200 (2026-12-04): a worker's batch dropped
by Python's queue feeder (``OSError: [Errno 9] Bad file descriptor``) while the
worker lived on, so PyTorch never noticed (pytorch#96629); and here, on CPU, a
worker frozen with SIGSTOP, or a FIFO where an image was, ran on silently.

Two guards end such a wait, whichever comes first:

- DataLoader's own ``timeout`` (with loader workers), whose error reaches the
  training loop like any other;
- the ``Watchdog``, a thread that ends the job when any one wait outlasts the
  bound, also where nothing can raise: a read blocked in the training process
  itself (workers=0) or in a thread.

Either way the job ends at once (``stop``): one ``LoaderStalled:`` line in the
failure file naming what stalled and what to try, exit code 3, the loader's
workers killed (a stopped process would otherwise hold the exit forever). The
checkpoint of the last finished epoch stays as it was: checkpoints are written
atomically (checkpoints.py), and nothing is saved on the way out.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import errors, paths

log = logging.getLogger(__name__)

EXIT_CODE = 3
# Where loader workers put the batches they share (not a temporary file).
SHM = "/dev/shm"  # nosec B108
# What DataLoader raises when a wait runs out or a worker died: messages, not types.
LOADER_FAILURE = re.compile(r"^DataLoader (timed out|worker)")
# /proc/<pid>/stat states, as a person would say them.
STATES = {"R": "running", "S": "waiting", "D": "blocked in I/O", "T": "stopped",
          "t": "stopped", "Z": "dead", "X": "dead"}


def shm_bytes() -> int:
    """The size of /dev/shm, where loader workers hand their batches over (0 if none)."""
    try:
        return shutil.disk_usage(SHM).total
    except OSError:
        return 0


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def process_state(pid: int) -> str:
    """What a process is doing, from /proc: waiting, stopped, blocked in I/O..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    state = stat.rsplit(")", 1)[1].split()[0]
    return STATES.get(state, state)


def main_thread_state() -> str:
    """Where this process's main thread sits in the kernel (e.g. ``pipe_read``)."""
    tid = threading.main_thread().native_id
    try:
        wchan = Path(f"/proc/self/task/{tid}/wchan").read_text().strip()
    except OSError:
        wchan = ""
    state = process_state(tid)
    return f"{state} ({wchan})" if wchan and wchan != "0" else state


def loader_workers() -> list[int]:
    """This process's loader worker processes (its multiprocessing children)."""
    return sorted(p.pid for p in multiprocessing.active_children() if p.pid)


def describe(what: str, waited: float, cause: str = "") -> str:
    """The failure line: what stalled, the loader's state, and what to try.

    `what` names the wait ("'train' batch 2 of 3 in epoch 2"); `cause`, when given,
    replaces "never came" (e.g. a worker that died)."""
    workers = loader_workers()
    if workers:
        states = ", ".join(f"pid {pid} {process_state(pid)}" for pid in workers)
        who = f"{len(workers)} worker(s): {states}"
    else:
        who = f"no loader workers, the training process {main_thread_state()}"
    happened = cause or f"no {what} came within loader-timeout ({waited:g} s)"
    shm = shm_bytes()
    advice = ("Try fewer loader workers or workers=0; check the data's storage (for a read "
              "that never returns: File input mode rather than FastFile, or a healthy "
              "file system)")
    if cause:
        advice += (f"; a worker killed by SIGBUS means /dev/shm ({mib(shm)}) ran out: a "
                   "smaller batch-size, fewer workers or a bigger /dev/shm")
    advice += ("; DOGBREED_SHARING_STRATEGY=file_descriptor changes how workers hand "
               "batches over (file_system by default); raise loader-timeout only if one "
               "batch truly takes longer.")
    return (f"LoaderStalled: {happened}. Loader: {who}; /dev/shm {mib(shm)}. The job "
            f"stopped; the checkpoint of its last finished epoch in "
            f"{paths.checkpoint_dir()} is intact, and a rerun resumes from it. {advice}")


_stopping = threading.Lock()


def stop(message: str) -> None:
    """End the job now: the failure line, the loader's workers killed, exit code 3.

    A hard exit (os._exit) rather than an exception: the training process may be
    blocked in a read that no exception can reach, and a normal exit would join
    the loader's workers, which a stopped worker never lets finish.
    """
    if not _stopping.acquire(blocking=False):  # the other guard is ending the job
        _stopping.acquire()  # never returns: that exit ends this thread too
    log.error(message)
    errors.write_failure(message)
    for pid in loader_workers():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def is_loader_failure(exc: BaseException) -> bool:
    """DataLoader's own timeout, or a worker that died (e.g. by SIGBUS)."""
    return isinstance(exc, RuntimeError) and bool(LOADER_FAILURE.match(str(exc)))


class Watchdog:
    """Ends the job when one wait (``with watchdog.waiting("'train' batch 3 of 9"):``)
    lasts longer than `timeout` seconds. One thread per process, started on first use.

    `grace` more seconds let DataLoader's own timeout, which started its wait a little
    later and knows more (a worker that died), speak first where there is one."""

    def __init__(self, timeout: float, grace: float = 0.0, on_stall=None):
        self.timeout, self.grace = timeout, grace
        self.on_stall = on_stall or (lambda what, waited: stop(describe(what, waited)))
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._what = ""
        self._thread: threading.Thread | None = None

    @contextmanager
    def waiting(self, what: str):
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="loader-watchdog",
                                                daemon=True)
                self._thread.start()
            self._deadline = time.monotonic() + self.timeout + self.grace
            self._what = what
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None:
                    self._cond.wait()
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                what, self._deadline = self._what, None
            self.on_stall(what, self.timeout)
