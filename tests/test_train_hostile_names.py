"""Names a data supplier chose to forge the log lines SageMaker reads metrics from.

One real training job (conftest.hostile_run) on data whose class folder, hidden
folders and unreadable test images are named like the program's own METRIC and RULE
lines, newlines included (synthetic.make_hostile_dataset). The published regexes,
applied line by line as SageMaker applies them, must read what the job recorded;
the names must show in the log escaped, on the line that names them.
"""

from __future__ import annotations

import json

from containers import ONE_MATH_THREAD
from train_checks import HPS, assert_metrics_read_as_recorded

from conftest import opt_ml, run_train
from dogbreed_contract import metrics
from synthetic import FORGED_PREFIX, HOSTILE_CLASS, HOSTILE_FILE, HOSTILE_HIDDEN, HOSTILE_MID_LINE


def escaped(name: str) -> str:
    return name.replace("\n", "\\n")


def test_metric_regexes_read_only_what_the_job_recorded(hostile_run):
    assert_metrics_read_as_recorded(metrics.definitions(), hostile_run.log, hostile_run.root)
    record = json.loads((hostile_run.root / "output/data/metrics.json").read_text())
    assert record["skipped_images"]["decode"] == 2  # both forged test images were met


def test_names_from_the_data_are_escaped_on_the_line_that_names_them(hostile_run):
    log = hostile_run.log
    # The forged lines never start a line of their own...
    assert not [line for line in log.splitlines() if line.startswith(FORGED_PREFIX[:10])]
    # ...they are on the program's lines that name the folder or file.
    assert f"skipping unreadable image test/{escaped(HOSTILE_CLASS)}/{HOSTILE_FILE}" in log
    assert f"skipping unreadable image test/001.Red_stripes/{HOSTILE_MID_LINE}" in log
    assert f"folder(s) {', '.join(escaped(h) for h in HOSTILE_HIDDEN)} are not classes" in log


def test_a_refusal_that_names_a_hostile_folder_keeps_its_first_line_whole(train_image,
                                                                          tmp_path):
    """SageMaker shows the failure file's first line; a name must not cut it short."""
    root = opt_ml(tmp_path, HPS, {"train": 2})
    empty = "004.Empty\nUserError: forged"
    (root / "input" / "data" / "train" / empty).mkdir()
    run = run_train(train_image, root, *ONE_MATH_THREAD)
    assert run.rc == 2, run.log[-3000:]
    first = run.failure.splitlines()[0]
    assert f"class folder(s) {escaped(empty)} have no readable" in first, run.failure
    assert "add images to them, or remove them" in first.lower(), run.failure
