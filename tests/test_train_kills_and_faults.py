"""Resilience of `docker run dogbreed-train train`: kills, SIGTERM, faults.

Every test runs the real image offline on a local /opt/ml tree, as SageMaker would:
a hard kill and a SIGTERM in the middle of training must resume from the
checkpoint to a complete, valid result; and each fault (read-only model folder,
full checkpoint folder, corrupt images, bad hyperparameters, a corrupt or foreign
checkpoint) must end with a clear first line in /opt/ml/output/failure and a
non-zero exit, never with a silently wrong result.

Kept small for 2 CPU cores: ResNet-18 from scratch at 32 px on a few images.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest
from containers import ONE_MATH_THREAD, detached
from train_checks import (
    HPS,
    SAVED,
    assert_complete_history,
    assert_valid_model,
    epochs_trained,
    failure_of,
)

from conftest import docker, opt_ml, run_train

DATA = {"train": 6, "valid": 2, "test": 2}
# For the kill tests: enough short epochs that a signal sent once the first
# checkpoint is logged lands while a later epoch trains, on a busy machine (an
# epoch of several seconds) as on an idle one (under a second).
KILL_EPOCHS = 6
KILL_HPS = {**HPS, "epochs": str(KILL_EPOCHS), "batch-size": "6", "max-steps-per-epoch": "3"}
RESUMED = re.compile(r"resuming from checkpoint (\S+) at epoch (\d+)(?:, step (\d+))?")


# ---------------------------------------------------------------- kills and SIGTERM

@pytest.fixture(scope="module")
def killed_and_resumed(train_image, tmp_path_factory) -> dict:
    """A run SIGKILLed in epoch 2, then run again on the same /opt/ml."""
    root = opt_ml(tmp_path_factory.mktemp("opt_ml"), KILL_HPS, DATA)
    with detached(train_image, root) as run:
        saved = run.wait_for_log(SAVED)
        assert saved.group(2) == "2" and saved.group(3) is None, saved.group(0)
        time.sleep(0.2)  # into epoch 2's steps
        assert run.running(), "finished before it could be killed: make the epochs longer"
        docker("kill", run.id)  # SIGKILL: no handler runs, nothing is saved
        code = run.wait()
        killed_log = run.logs()
    checkpoints = root / "checkpoints"
    # What a kill during a save leaves (whether this kill hit one is down to timing).
    data = (checkpoints / "checkpoint.pt").read_bytes()
    (checkpoints / ".checkpoint.pt.9999.tmp").write_bytes(data[: len(data) // 2])
    return {"root": root, "code": code, "killed_log": killed_log,
            "model_after_kill": (root / "model" / "model.onnx").exists(),
            "rerun": run_train(train_image, root, *ONE_MATH_THREAD)}


def test_hard_kill_mid_training_resumes_to_a_complete_model(killed_and_resumed):
    root, rerun = killed_and_resumed["root"], killed_and_resumed["rerun"]
    assert killed_and_resumed["code"] == 137
    assert KILL_EPOCHS not in epochs_trained(killed_and_resumed["killed_log"]), \
        "the run finished training before the kill"
    assert not killed_and_resumed["model_after_kill"]

    assert rerun.rc == 0, rerun.log[-3000:]
    resumed = RESUMED.search(rerun.log)
    assert resumed, rerun.log[-3000:]
    first = int(resumed.group(2))
    assert first >= 2, resumed.group(0)
    # Only the epochs the checkpoint did not have are trained again.
    assert epochs_trained(rerun.log) == list(range(first, KILL_EPOCHS + 1))
    assert rerun.failure is None
    assert_valid_model(root, 32)
    assert_complete_history(root, KILL_EPOCHS)


def test_resumed_job_leaves_no_temporary_checkpoint(killed_and_resumed):
    assert killed_and_resumed["rerun"].rc == 0
    listing = sorted(p.name for p in (killed_and_resumed["root"] / "checkpoints").iterdir())
    assert listing == ["checkpoint.pt"]


def test_sigterm_saves_mid_epoch_checkpoint_and_resumes(train_image, tmp_path):
    root = opt_ml(tmp_path, KILL_HPS, DATA)
    with detached(train_image, root) as run:
        run.wait_for_log(SAVED)
        assert run.running()
        # SIGTERM, then SIGKILL after 30 s: 143 means the job stopped by itself in time.
        docker("stop", "-t", "30", run.id)
        assert run.wait() == 143  # 128 + SIGTERM: an interrupted job never looks finished
        log = run.logs()
    assert "SIGTERM received" in log
    saves = SAVED.findall(log)
    assert len(saves) >= 2, log[-3000:]  # the epoch-1 one and the one on SIGTERM
    stop_epoch, stop_step = int(saves[-1][1]), int(saves[-1][2] or 0)
    assert stop_epoch >= 2
    failure = failure_of(root)
    assert failure.startswith("Stopped:"), failure
    assert f"epoch {stop_epoch}" in failure and "resume" in failure
    assert (root / "checkpoints" / "checkpoint.pt").stat().st_size > 1_000_000
    assert not (root / "model" / "model.onnx").exists()

    rerun = run_train(train_image, root, *ONE_MATH_THREAD)
    assert rerun.rc == 0, rerun.log[-3000:]
    resumed = RESUMED.search(rerun.log)
    assert resumed, rerun.log[-3000:]
    # It resumes exactly where the SIGTERM run said it would.
    assert (int(resumed.group(2)), int(resumed.group(3) or 0)) == (stop_epoch, stop_step)
    assert epochs_trained(rerun.log) == list(range(stop_epoch, KILL_EPOCHS + 1))
    assert rerun.failure is None  # the "Stopped:" file of the first run is gone
    assert_valid_model(root, 32)
    assert_complete_history(root, KILL_EPOCHS)


# ---------------------------------------------------------------- faults

def test_read_only_model_dir_fails_before_training(train_image, tmp_path):
    root = opt_ml(tmp_path, HPS, DATA)
    run = run_train(train_image, root, *ONE_MATH_THREAD, "-v", f"{root / 'model'}:/opt/ml/model:ro")
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith("UserError: cannot write to the model directory /opt/ml/model")
    assert "Read-only file system" in first
    assert epochs_trained(run.log) == []  # no hours of training lost first
    assert not (root / "checkpoints").exists()
    assert list((root / "model").iterdir()) == []


def test_full_checkpoint_dir_fails_clearly(train_image, tmp_path):
    root = opt_ml(tmp_path, HPS, DATA)
    # sh as PID 1 so the tmpfs can be listed after the job fails.
    script = ("train; rc=$?; ls -A /opt/ml/checkpoints > /opt/ml/output/checkpoint-listing; "
              "exit $rc")
    name = f"dogbreed-resil-{uuid.uuid4().hex[:8]}"
    try:
        proc = docker("run", "--name", name, "--network", "none", "--hostname", "algo-1",
                      "-v", f"{root}:/opt/ml", "--tmpfs", "/opt/ml/checkpoints:size=64k", *ONE_MATH_THREAD,
                      train_image, "sh", "-c", script, check=False, timeout=600)
    finally:
        docker("rm", "-f", name, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    first = failure_of(root).splitlines()[0]
    assert first.startswith("UserError: cannot write the checkpoint to /opt/ml/checkpoints"), \
        first
    assert "No space left on device" in first and "Free space" in first
    # The half-written temporary file was removed, and no model was exported.
    assert (root / "output" / "checkpoint-listing").read_text().split() == []
    assert not (root / "model" / "model.onnx").exists()


def write_corrupt_images(root: Path) -> tuple[Path, Path]:
    """One file that is not an image at all, one JPEG cut off in the middle of its data."""
    folder = root / "input" / "data" / "train" / "002.Green_bars"
    garbage = folder / "garbage.jpg"
    garbage.write_bytes(os.urandom(2048))
    source = folder / "000.jpg"
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return garbage, truncated


def test_corrupt_image_with_bad_images_fail_names_the_file(train_image, tmp_path):
    root = opt_ml(tmp_path, {**HPS, "bad-images": "fail"}, DATA)
    write_corrupt_images(root)
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith("UserError: unreadable image train/002.Green_bars/garbage.jpg")
    assert "bad-images=skip" in first
    assert epochs_trained(run.log) == []


def test_truncated_image_with_bad_images_fail_names_the_file(train_image, tmp_path):
    """Only decoding finds this one (its header is fine), in a data-loader worker."""
    root = opt_ml(tmp_path, {**HPS, "bad-images": "fail", "workers": "1",
                             "max-steps-per-epoch": "0"}, DATA)
    _, truncated = write_corrupt_images(root)
    (root / "input" / "data" / "train" / "002.Green_bars" / "garbage.jpg").unlink()
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith("UserError: unreadable image"), run.failure[:2000]
    assert "002.Green_bars/truncated.jpg" in first, run.failure[:2000]
    assert not (root / "model" / "model.onnx").exists()


def test_corrupt_images_with_bad_images_skip_are_counted(train_image, tmp_path):
    root = opt_ml(tmp_path, {**HPS, "bad-images": "skip", "max-steps-per-epoch": "0"}, DATA)
    write_corrupt_images(root)
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 0, run.log[-3000:]
    assert "train: skipped 1 unreadable image(s), e.g. 002.Green_bars/garbage.jpg" in run.log
    assert "images skipped as unreadable" in run.log
    record = assert_complete_history(root, 2)
    skipped = record["skipped_images"]
    assert skipped["scan"]["train"] == 1
    # One truncated file, read in each of the 2 epochs, is still one skipped image.
    assert skipped["decode"] == 1, skipped
    assert_valid_model(root, 32)


def test_out_of_range_hyperparameters_fail_clearly(train_image, tmp_path):
    root = opt_ml(tmp_path, {**HPS, "lr": "-1", "epochs": "0", "profile-steps": "5-2"},
                  per_class={"train": 2})
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith("UserError: invalid hyperparameters:")
    for fragment in ("'lr'='-1'", "'epochs'='0'", "'profile-steps'='5-2'",
                     "END must be greater than START"):
        assert fragment in first, first
    assert "Traceback" not in run.failure


def assert_checkpoint_refused(run, message_start: str) -> None:
    """Exit 2 before any training, and a first failure line that says what to do."""
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith(message_start), first
    assert "Delete it" in first
    assert epochs_trained(run.log) == []


def test_corrupt_checkpoint_fails_and_is_kept(train_image, tmp_path):
    root = opt_ml(tmp_path, HPS, DATA)
    corrupt = os.urandom(4096)
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "checkpoint.pt").write_bytes(corrupt)
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert_checkpoint_refused(run, "UserError: the checkpoint /opt/ml/checkpoints/"
                                   "checkpoint.pt cannot be read")
    # Not silently replaced by a fresh run: the user decides.
    assert (root / "checkpoints" / "checkpoint.pt").read_bytes() == corrupt


def test_checkpoint_is_reused_by_its_own_run_and_refused_by_another(train_image, tmp_path):
    root = opt_ml(tmp_path, {**HPS, "epochs": "1"}, DATA)
    checkpoint = root / "checkpoints" / "checkpoint.pt"
    with detached(train_image, root) as run:
        # The last epoch's checkpoint is saved; kill it during the test and export.
        assert run.wait_for_log(SAVED).group(2) == "2"
        docker("kill", run.id)
        run.wait()
        assert "finished:" not in run.logs()
    assert not (root / "model" / "model.json").exists()

    # The same job again: nothing left to train, straight to test and export.
    again = run_train(train_image, root, *ONE_MATH_THREAD)
    assert again.rc == 0, again.log[-3000:]
    assert RESUMED.search(again.log).group(2) == "2"
    assert epochs_trained(again.log) == []
    assert_valid_model(root, 32)
    assert_complete_history(root, 1)

    # Another job on the same checkpoint folder (a different image size): refused.
    before = checkpoint.read_bytes()
    model_before = (root / "model" / "model.onnx").stat().st_mtime_ns
    (root / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({**HPS, "epochs": "1", "image-size": "48"}))
    other = run_train(train_image, root, *ONE_MATH_THREAD)
    assert_checkpoint_refused(other, "UserError: the checkpoint in /opt/ml/checkpoints "
                                     "belongs to another training run (different image-size)")
    assert checkpoint.read_bytes() == before
    assert (root / "model" / "model.onnx").stat().st_mtime_ns == model_before


def test_resume_after_changing_optimizer_and_freeze_backbone_starts_them_fresh(train_image,
                                                                                tmp_path):
    """The checkpoint's optimizer state cannot serve SGD over the head alone: the job
    resumes with a fresh optimizer and says so (checkpoints.restore)."""
    root = opt_ml(tmp_path, {**HPS, "epochs": "1"}, DATA)
    first = run_train(train_image, root, *ONE_MATH_THREAD)
    assert first.rc == 0, first.log[-3000:]
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {**HPS, "epochs": "2", "optimizer": "sgd", "freeze-backbone": "true"}))
    again = run_train(train_image, root, *ONE_MATH_THREAD)
    assert again.rc == 0, again.log[-3000:]
    assert RESUMED.search(again.log).group(2) == "2"
    assert ("resuming with a fresh optimizer (optimizer was 'adamw', is 'sgd'; "
            "freeze-backbone was False, is True)") in again.log
    assert epochs_trained(again.log) == [2] and "Traceback" not in again.log
    assert_complete_history(root, 2)
    assert_valid_model(root, 32)


def test_full_model_dir_fails_clearly_and_leaves_no_temporary_file(train_image, tmp_path):
    """The ONNX export (about 45 MB) cannot fit a 1 MB model folder."""
    root = opt_ml(tmp_path, {**HPS, "epochs": "1"}, DATA)
    script = "train; rc=$?; ls -A /opt/ml/model > /opt/ml/output/model-listing; exit $rc"
    name = f"dogbreed-resil-{uuid.uuid4().hex[:8]}"
    try:
        proc = docker("run", "--name", name, "--network", "none", "--hostname", "algo-1",
                      "-v", f"{root}:/opt/ml", "--tmpfs", "/opt/ml/model:size=1m",
                      *ONE_MATH_THREAD, train_image, "sh", "-c", script, check=False,
                      timeout=600)
    finally:
        docker("rm", "-f", name, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    first = failure_of(root).splitlines()[0]
    assert first.startswith("UserError: could not save the model to /opt/ml/model"), first
    assert "No space left on device" in first
    assert (root / "output" / "model-listing").read_text().split() == []
