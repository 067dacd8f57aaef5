"""Decode memory shared by all the workers of a container, sized from its memory limit.

A large image costs hundreds of MiB while it is decoded and brought to RGB (a
40-megapixel 16-bit PNG about 500). Several at once, in the decode threads of several
workers, can take a container past its limit, and the kernel then kills the workers. So
each large decode first reserves what it needs from one budget for the container:
``serve`` sizes it from the cgroup's memory limit once the workers are up
(``budget_bytes``) and writes it down as the length of a file, one byte per MiB.

A worker reserves N MiB by taking fcntl record locks on N bytes of that file. The
kernel drops the locks of a process that dies, so a killed worker cannot leak its
share. Record locks belong to a process, not to a thread: the threads of one worker
keep the bytes their process holds in a set, and take the file's extra last byte
while they look for free ones, so that two workers never grab halves of each other's
reservation.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time
from contextlib import contextmanager
from pathlib import Path

MIB = 1024 * 1024
# The share of the memory that is free once the workers have loaded the model which
# large decodes may use at once; the rest is left to the JVM's heap growth, nginx's
# body buffers and the models' own working memory.
DECODE_SHARE = 0.5
FILE_NAME = "decode-memory"  # in serve's run folder (Settings.run_dir)


class NotEnoughMemory(Exception):
    def __init__(self, need_mib: int, total_mib: int):
        super().__init__(f"needs {need_mib} MiB of {total_mib}")
        self.need_mib, self.total_mib = need_mib, total_mib


class MemoryBusy(Exception):
    """Other decodes held the memory until the request's deadline."""


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def container_memory(cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[int, int]:
    """(limit, in use) in bytes: the memory cgroup's (v2 or v1), or the machine's.

    "In use" leaves out the page cache, which the kernel gives back under pressure.
    """
    meminfo = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        meminfo[key] = int(rest.split()[0]) * 1024
    machine = meminfo["MemTotal"], meminfo["MemTotal"] - meminfo["MemAvailable"]
    if (limit := _read_int(cgroup / "memory.max")) is not None:  # v2 ("max": unlimited)
        used = (_read_int(cgroup / "memory.current") or 0) - _stat(
            cgroup / "memory.stat").get("file", 0)
    elif (limit := _read_int(cgroup / "memory" / "memory.limit_in_bytes")) is not None:
        used = (_read_int(cgroup / "memory" / "memory.usage_in_bytes") or 0) - _stat(
            cgroup / "memory" / "memory.stat").get("total_cache", 0)
    else:
        return machine
    if limit >= machine[0]:  # no limit below the machine's own memory
        return machine
    return limit, max(0, used)


def budget_bytes(configured_mb: int = 0) -> int:
    """DOGBREED_DECODE_MEMORY_MB (Settings.decode_memory_mb), or else DECODE_SHARE of
    what the container has left."""
    if configured_mb:
        return configured_mb * MIB
    limit, used = container_memory()
    return int(DECODE_SHARE * max(0, limit - used))


def create(run_dir: Path, total_bytes: int) -> int:
    """The budget file, one byte per MiB (serve, before the first request); its MiB."""
    mib = max(1, total_bytes // MIB)
    with open(run_dir / FILE_NAME, "wb") as f:
        f.truncate(mib)
    return mib


class DecodeMemory:
    def __init__(self, path: str | Path):
        self.fd = os.open(path, os.O_RDWR)
        self.total_mib = os.fstat(self.fd).st_size
        self._mine: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def in_run_dir(cls, run_dir: str | None) -> "DecodeMemory | None":
        """The budget serve created for this container; None outside one (host tests)."""
        path = Path(run_dir) / FILE_NAME if run_dir else None
        return cls(path) if path and path.exists() else None

    def _take(self, need: int) -> list[int] | None:
        """All ``need`` slots at once, or none of them."""
        taken: list[int] = []
        with self._lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, self.total_mib)  # the search lock
            try:
                for slot in range(self.total_mib):
                    if len(taken) == need:
                        break
                    if slot in self._mine:
                        continue
                    try:
                        fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
                    except OSError:
                        continue  # another worker holds it
                    self._mine.add(slot)
                    taken.append(slot)
                if len(taken) < need:
                    self._give_back(taken)
                    return None
                return taken
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.total_mib)

    def _give_back(self, slots: list[int]) -> None:
        for slot in slots:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, slot)
            self._mine.discard(slot)

    @contextmanager
    def reserve(self, nbytes: int, deadline: float):
        """Hold ``nbytes`` of the budget for the ``with`` block; wait until ``deadline``."""
        need = max(1, -(-nbytes // MIB))
        if need > self.total_mib:
            raise NotEnoughMemory(need, self.total_mib)
        while (slots := self._take(need)) is None:
            if time.monotonic() > deadline:
                raise MemoryBusy
            time.sleep(random.uniform(0.01, 0.03))  # nosec B311
        try:
            yield
        finally:
            with self._lock:
                self._give_back(slots)
