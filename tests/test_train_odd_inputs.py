"""Odd but real inputs to `docker run dogbreed-train train`.

A SIGTERM at any stage of a job, a last batch of one image, folders that are not
classes, JSON-quoted hyperparameters, Pipe mode, other image formats and config
files the training toolkit cannot read. Each case runs the real image offline on
a local /opt/ml tree, as SageMaker would, and checks the exit code and the first
line of /opt/ml/output/failure.

Kept small for 2 CPU cores: ResNet-18 from scratch at 32 px on a few images.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from containers import ONE_MATH_THREAD, detached
from PIL import Image
from train_checks import HPS, SAVED, assert_valid_model, epochs_trained, failure_of

from conftest import docker, opt_ml, run_train
from synthetic import LABELS

DATA = {"train": 6, "valid": 2, "test": 2}
# A job far too long to finish while a test stops it.
LONG_HPS = {**HPS, "epochs": "200", "max-steps-per-epoch": "0"}
STOP_GRACE = 60  # docker stop -t: a job killed at the end of it would exit 137


def stop(run) -> tuple[int, float]:
    """`docker stop` as SageMaker's StopTrainingJob does it; (exit code, seconds taken)."""
    started = time.monotonic()
    docker("stop", "-t", str(STOP_GRACE), run.id, timeout=STOP_GRACE + 30)
    return run.wait(), time.monotonic() - started


def wait_until(check, what: str, run, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not run.running():
            pytest.fail(f"container ended before {what}:\n{run.logs()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s:\n{run.logs()[-3000:]}")
        time.sleep(0.05)


def program_started(run) -> bool:
    """The training program (`python -m dogbreed_train`) is a process of the container."""
    top = docker("top", run.id, "-o", "pid,args", check=False).stdout
    return "-m dogbreed_train" in top


def assert_stopped(root, code: int, seconds: float, message: str) -> str:
    assert code == 143, f"exit {code} after {seconds:.1f}s"
    assert seconds < STOP_GRACE - 10, f"took {seconds:.1f}s: it ran until docker stop's kill"
    failure = failure_of(root)
    assert failure.splitlines()[0].startswith(f"Stopped: SIGTERM {message}"), failure
    assert "Traceback" not in failure and "Framework Error" not in failure, failure
    return failure


# ---------------------------------------------------------------- SIGTERM at every stage

STAGES = {
    # docker run -d has returned: PID 1 (the image's `train`) has just started.
    "at_once": (None, "while the job was starting"),
    # The toolkit has imported the launcher, which has not started the program yet.
    "launcher": (re.compile(r"Imported framework dogbreed_train\.launch"),
                 "while the job was starting"),
    # The program is importing torch (seconds on these cores); scanning the data and
    # building the model, which follow, are handled the same way.
    "program_start": (program_started, "while the job was starting"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigterm_before_training_stops_the_job_at_once(train_image, tmp_path, stage):
    root = opt_ml(tmp_path, LONG_HPS, DATA)
    trigger, message = STAGES[stage]
    with detached(train_image, root) as run:
        if isinstance(trigger, re.Pattern):
            run.wait_for_log(trigger)
        elif trigger is not None:
            wait_until(lambda: trigger(run), "the training program", run)
        code, seconds = stop(run)
        log = run.logs()
    failure = assert_stopped(root, code, seconds, message)
    assert "nothing new was trained" in failure
    assert epochs_trained(log) == []
    assert not (root / "checkpoints" / "checkpoint.pt").exists()
    assert not (root / "model" / "model.onnx").exists()


def test_sigterm_after_training_stops_and_the_rerun_finishes(train_image, tmp_path):
    """Stopped during test and export: the last epoch's checkpoint lets a rerun finish."""
    root = opt_ml(tmp_path, {**HPS, "epochs": "1"}, DATA)
    with detached(train_image, root) as run:
        assert run.wait_for_log(SAVED).group(2) == "2"  # the last epoch's checkpoint
        code, seconds = stop(run)
        assert "finished:" not in run.logs()
    failure = assert_stopped(root, code, seconds, "after training")
    assert "Run the job again to finish it" in failure
    assert not (root / "model" / "model.json").exists()

    again = run_train(train_image, root, *ONE_MATH_THREAD)
    assert again.rc == 0, again.log[-3000:]
    assert epochs_trained(again.log) == [] and again.failure is None
    assert_valid_model(root, 32)


# ---------------------------------------------------------------- data

def add_image(folder, name: str, size: int = 40) -> None:
    Image.new("RGB", (size, size), (120, 30, 200)).save(folder / name)


def test_last_batch_of_one_image_trains(train_image, tmp_path):
    """25 training images in batches of 8 at 32 px: the last batch would hold one."""
    root = opt_ml(tmp_path, {**HPS, "epochs": "1", "max-steps-per-epoch": "0"},
                  {"train": 8, "valid": 2})
    add_image(root / "input" / "data" / "train" / "001.Red_stripes", "extra.png")
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 0, run.failure or run.log[-3000:]
    record = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert record["history"][0]["train_images"] == 25  # every image, none dropped


def test_folders_and_files_that_are_not_classes_or_images(train_image, tmp_path):
    """A Mac zip's __MACOSX, hidden folders and files, and formats the image does not read."""
    root = opt_ml(tmp_path, {**HPS, "epochs": "1", "bad-images": "fail"}, DATA)
    train = root / "input" / "data" / "train"
    for junk in (train / "__MACOSX" / "001.Red_stripes", train / ".Trashes"):
        junk.mkdir(parents=True)
        (junk / "._000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (train / "002.Green_bars" / "._000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    for name in ("a.webp", "b.bmp", "c.gif", "d.tif"):
        add_image(train / "003.Blue_checks", name)
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 0, run.failure or run.log[-3000:]
    assert "train: folder(s) .Trashes, __MACOSX are not classes: ignored" in run.log
    assert ("train: 4 file(s) not read, as they are not .jpg/.jpeg/.png (1 .bmp, 1 .gif, "
            "1 .tif, 1 .webp; e.g. 003.Blue_checks/a.webp)") in run.log
    assert json.loads((root / "model" / "model.json").read_text())["labels"] == LABELS


def assert_refused(run, *fragments: str) -> str:
    """Exit 2 before any training, with one first line that has every fragment."""
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert first.startswith("UserError: "), run.failure
    for fragment in fragments:
        assert fragment in first, first
    assert "Traceback" not in run.failure and "Framework Error" not in run.failure
    assert epochs_trained(run.log) == []
    return first


def test_empty_class_folder_is_refused(train_image, tmp_path):
    root = opt_ml(tmp_path, HPS, DATA)
    (root / "input" / "data" / "train" / "004.Empty").mkdir()
    assert_refused(run_train(train_image, root, *ONE_MATH_THREAD),
                   "class folder(s) 004.Empty have no readable .jpg/.jpeg/.png images")


def test_folders_with_the_same_label_are_refused(train_image, tmp_path):
    root = opt_ml(tmp_path, HPS, DATA)
    train = root / "input" / "data" / "train"
    shutil.copytree(train / "001.Red_stripes", train / "004.Red_stripes")
    assert_refused(run_train(train_image, root, *ONE_MATH_THREAD),
                   "001.Red_stripes and 004.Red_stripes give the same label ('Red_stripes')")


# ---------------------------------------------------------------- job configuration

def test_json_quoted_hyperparameters_are_accepted(train_image, tmp_path):
    """As the SDK's framework estimators and tuners write them: json.dumps of each value."""
    quoted = {key: json.dumps(value) for key, value in {**HPS, "epochs": "1"}.items()}
    assert quoted["batch-size"] == '"8"' and quoted["model"] == '"resnet18"'
    root = opt_ml(tmp_path, quoted, DATA)
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 0, run.failure or run.log[-3000:]
    meta = json.loads((root / "model" / "model.json").read_text())
    assert meta["architecture"] == "resnet18"
    assert meta["hyperparameters"]["batch-size"] == 8
    assert meta["hyperparameters"]["image-size"] == 32


def test_pipe_mode_is_refused(train_image, tmp_path):
    root = opt_ml(tmp_path, HPS, DATA)
    (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "Pipe"} for c in DATA}))
    for channel in DATA:  # what SageMaker mounts for Pipe mode: no folders
        shutil.rmtree(root / "input" / "data" / channel)
    first = assert_refused(run_train(train_image, root, *ONE_MATH_THREAD))
    assert first.startswith("UserError: Pipe mode is not supported: use File or FastFile"), first


@pytest.mark.parametrize("text,message", [
    ("", "hyperparameters.json is empty: it must hold a JSON object"),
    ("[]", "hyperparameters.json must hold a JSON object ({...}), not a list"),
    ('"epochs=1"', "hyperparameters.json must hold a JSON object ({...}), not a str"),
    ("{'epochs': '1'}", "hyperparameters.json is not valid JSON"),
])
def test_unreadable_hyperparameters_file_is_one_line(train_image, tmp_path, text, message):
    root = opt_ml(tmp_path, None, per_class={"train": 2})
    (root / "input" / "config" / "hyperparameters.json").write_text(text)
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    first = assert_refused(run, f"/opt/ml/input/config/{message}")
    assert run.failure.strip() == first  # one line, nothing after it
