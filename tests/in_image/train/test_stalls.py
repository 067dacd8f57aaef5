"""Every wait for a batch is bounded (stalls.py): a frozen loader worker, and a read
that never returns in the training process itself, each end the job within
loader-timeout, with exit code 3 and a LoaderStalled line in the failure file.

The job is a child process that iterates a real batch source (stalls.stop ends the
process, as it must); the test freezes its workers with SIGSTOP, or holds a write
lease on an image, which makes the kernel block the child's open() of that image
for /proc/sys/fs/lease-break-time (45 s by default), far beyond the bound.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dogbreed_train import stalls
from synthetic import make_image

TIMEOUT = 3  # loader-timeout of the child jobs, seconds
F_SETLEASE = 1024  # fcntl.h; Python's fcntl module names it only from 3.12

CHILD = r"""
import sys
from pathlib import Path

import torch

from dogbreed_contract.preprocess import Spec
from dogbreed_train import batches, data

root, workers, timeout = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
split = data.Split("train", [(p, 0) for p in sorted(root.iterdir())])
feed = batches.Feed(torch.device("cpu"), workers=workers, timeout=timeout)
source = batches.make_batches(split, Spec.for_size(32), 2, feed, training=True)
print("ready", flush=True)
for epoch in range(1, 1000):
    source.set_epoch(epoch)
    for k, batch in enumerate(source):
        print(f"epoch {epoch} batch {k + 1}", flush=True)
        if epoch == 1 and k == 0:
            sys.stdin.readline()  # the test freezes the workers now
"""


def images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(count):
        make_image(i % 3, rng, 48).save(folder / f"{i:03d}.jpg", quality=90)
    return folder


def start_job(base: Path, folder: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(workers),
                             str(TIMEOUT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def loader_workers_of(pid: int) -> list[int]:
    """The job's loader workers: its children running its own program (not, e.g.,
    torch_shm_manager)."""
    own = Path(f"/proc/{pid}/cmdline").read_bytes()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if Path(f"/proc/{c}/cmdline").read_bytes() == own]


def failure_line(base: Path) -> str:
    return (base / "output" / "failure").read_text().splitlines()[0]


def test_a_frozen_loader_worker_ends_the_job_within_loader_timeout(tmp_path):
    folder = images(tmp_path / "data", 24)
    job = start_job(tmp_path, folder, workers=2)
    try:
        assert job.stdout.readline().strip() == "ready"
        assert job.stdout.readline().strip() == "epoch 1 batch 1"
        workers = loader_workers_of(job.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        job.stdin.write("\n")
        job.stdin.flush()
        out, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    waited = time.monotonic() - frozen
    assert job.returncode == stalls.EXIT_CODE, out[-3000:]
    line = failure_line(tmp_path)
    assert line.startswith("LoaderStalled: no 'train' batch "), line
    assert f"came within loader-timeout ({TIMEOUT} s)" in line
    assert all(f"pid {pid} stopped" in line for pid in workers), line
    assert "workers=0" in line and "intact" in line
    assert waited < TIMEOUT + 60, waited  # the bound, with room for a busy machine
    assert all(stalls.process_state(pid) in ("dead", "gone") for pid in workers)


def test_a_read_that_never_returns_ends_the_job_within_loader_timeout(tmp_path):
    """workers=0: the training process itself blocks in open(); only the watchdog
    thread can end that wait."""
    folder = images(tmp_path / "data", 4)
    lease_break = float(Path("/proc/sys/fs/lease-break-time").read_text())
    leased = sorted(folder.iterdir())[0]  # the first image the job reads
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the kernel's "give it back"
    fd = os.open(leased, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_WRLCK)
        job = start_job(tmp_path, folder, workers=0)
        try:
            assert job.stdout.readline().strip() == "ready"
            started = time.monotonic()
            out, _ = job.communicate(timeout=120)
        finally:
            job.kill()
        waited = time.monotonic() - started
    finally:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
        os.close(fd)
        signal.signal(signal.SIGIO, previous)
    assert job.returncode == stalls.EXIT_CODE, out[-3000:]
    assert "epoch 1 batch" not in out  # the very first read never returned
    line = failure_line(tmp_path)
    assert line.startswith(f"LoaderStalled: no 'train' batch 1 of 2 in epoch 1 came within "
                           f"loader-timeout ({TIMEOUT} s)"), line
    assert "no loader workers, the training process" in line
    # The open() would have blocked for lease_break seconds; the job ended well before.
    assert waited < lease_break - 5, (waited, lease_break)


@pytest.mark.parametrize("exc,stalled", [
    (RuntimeError("DataLoader timed out after 3 seconds"), True),
    (RuntimeError("DataLoader worker (pid(s) 41) exited unexpectedly"), True),
    (RuntimeError("DataLoader worker (pid 41) is killed by signal: Bus error. "), True),
    (RuntimeError("CUDA out of memory"), False),
    (ValueError("DataLoader timed out"), False),
])
def test_what_counts_as_a_stalled_loader(exc, stalled):
    assert stalls.is_loader_failure(exc) is stalled
