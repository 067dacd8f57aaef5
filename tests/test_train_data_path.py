"""`docker run dogbreed-train train` where the data path or the host goes wrong.

A job whose loader workers freeze, and one whose image turns into a FIFO after the
scan, must not run on silently until MaxRuntime: the first ends within its
loader-timeout with a LoaderStalled failure line and its checkpoint intact, the
second skips the FIFO as an unreadable image. A host whose GPUs the image's torch
cannot use fails at once rather than train on the CPU.

The real image, offline, on a local /opt/ml tree. The workers are frozen from the
host: they are the training program's child processes (`docker top`), stopped
with SIGSTOP as a hung worker would stop.
"""

from __future__ import annotations

import json
import os
import signal
import time

from containers import ONE_MATH_THREAD, detached
from train_checks import HPS, SAVED, epochs_trained, failure_of

from conftest import docker, opt_ml, run_train

DATA = {"train": 6, "valid": 2, "test": 2}
LOADER_TIMEOUT = 30


def training_processes(container: str) -> tuple[int, list[int]]:
    """(the training program's host pid, its loader workers' pids), from `docker top`.
    Workers are forked: their command line is the program's own."""
    rows = docker("top", container, "-eo", "pid,ppid,args").stdout.splitlines()[1:]
    procs = [(int(r.split(None, 2)[0]), int(r.split(None, 2)[1]), r.split(None, 2)[2])
             for r in rows if len(r.split(None, 2)) == 3]
    program = [(pid, ppid) for pid, ppid, args in procs if "-m dogbreed_train" in args]
    pids = {pid for pid, _ in program}
    (root,) = [pid for pid, ppid in program if ppid not in pids]
    return root, [pid for pid, ppid in program if ppid == root]


def test_frozen_loader_workers_end_the_job_with_its_checkpoint(train_image, tmp_path):
    hps = {**HPS, "epochs": "50", "batch-size": "4", "max-steps-per-epoch": "0",
           "workers": "2", "loader-timeout": str(LOADER_TIMEOUT)}
    root = opt_ml(tmp_path, hps, DATA)
    with detached(train_image, root) as run:
        saved = run.wait_for_log(SAVED)  # epoch 1 is done and checkpointed
        assert saved.group(2) == "2", saved.group(0)
        program, workers = training_processes(run.id)
        assert len(workers) == 4, workers  # 2 training and 2 validation loader workers
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        code = run.wait(timeout=LOADER_TIMEOUT + 300)
        ended = time.monotonic() - frozen
        log = run.logs()
    assert code == 3, log[-3000:]
    assert ended < LOADER_TIMEOUT + 120, ended  # the bound, with room for a busy machine
    first = failure_of(root).splitlines()[0]
    assert first.startswith("LoaderStalled: no 'train' batch ") or first.startswith(
        "LoaderStalled: no 'valid' batch "), first
    assert f"came within loader-timeout ({LOADER_TIMEOUT} s)" in first
    assert "stopped" in first and "workers=0" in first and "is intact" in first
    assert "finished:" not in log and 50 not in epochs_trained(log)
    # The checkpoint of the last finished epoch is whole, and it is what the job said.
    last_saved = int(SAVED.findall(log)[-1][1])
    script = ("import torch; s = torch.load('/opt/ml/checkpoints/checkpoint.pt', "
              "weights_only=True); print(s['next_epoch'], s['next_step'])")
    out = docker("run", "--rm", "--network", "none", "-v", f"{root}:/opt/ml", train_image,
                 "python", "-c", script).stdout.split()
    assert out == [str(last_saved), "0"], out
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["checkpoint.pt"]


def test_a_fifo_where_an_image_was_is_skipped_not_waited_on(train_image, tmp_path):
    """Opening a FIFO waits for a writer that never comes; it is refused instead."""
    root = opt_ml(tmp_path, {**HPS, "epochs": "4", "max-steps-per-epoch": "0",
                             "bad-images": "skip"}, DATA)
    image = root / "input" / "data" / "train" / "002.Green_bars" / "000.jpg"
    with detached(train_image, root) as run:
        run.wait_for_log(SAVED)  # the scan saw a JPEG here; epoch 2 will open a FIFO
        image.unlink()
        os.mkfifo(image)
        code = run.wait(timeout=600)
        log = run.logs()
    assert code == 0, log[-3000:]
    assert ("skipping unreadable image train/002.Green_bars/000.jpg: not a regular file"
            in log)
    record = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert record["skipped_images"]["decode"] == 1
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]


def test_gpus_torch_cannot_use_fail_at_once(train_image, tmp_path):
    """SageMaker says there is a GPU; this image's CUDA 13 torch sees none (no driver
    here at all): one failure line, before any training process starts."""
    root = opt_ml(tmp_path, HPS, DATA)
    started = time.monotonic()
    run = run_train(train_image, root, "-e", "SM_NUM_GPUS=1", *ONE_MATH_THREAD)
    took = time.monotonic() - started
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith("UserError: this host has GPUs (SM_NUM_GPUS=1), but PyTorch "
                            "cannot use them: NVIDIA driver none found"), first
    assert "needs CUDA 13.0, which needs NVIDIA driver 580 or newer" in first
    assert "forward-compatibility" in first
    assert "dogbreed_train: hyperparameters:" not in run.log  # the program never started
    assert epochs_trained(run.log) == []
    assert took < 120, took  # seconds, not a CPU training run
