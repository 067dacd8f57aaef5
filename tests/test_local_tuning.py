"""`scripts/tune.py --local`: hyperparameter searches over real training containers,
with the study in a real SQLite file (Optuna's storage), no AWS account.

Trials are tiny (32 px, resnet18 without pretrained weights, one or a few epochs on a
generated dataset): each is mostly the container's start and the model export.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aws_stand_in import SCRIPTS, explain, run_script, script_env

from conftest import docker
from synthetic import make_dataset, make_hostile_dataset

LABEL = "dogbreed.local-tuning"
# Every default range off but those a test names, and a tiny model for each trial.
QUIET_DEFAULTS = [f"--range={n}=off" for n in
                  ("lr", "eps", "weight-decay", "batch-size", "epochs", "model")]
TINY = {"model": "resnet18", "pretrained": "false", "image-size": "32", "workers": "0",
        "test-batch-size": "16"}


def statics(**extra: str | None) -> list[str]:
    """--static flags for TINY and extra (a None value leaves that name out)."""
    return [f"--static={k}={v}" for k, v in {**TINY, **extra}.items() if v is not None]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tuning") / "dogImages",
                        {"train": 8, "valid": 2, "test": 2}, size=32)


@pytest.fixture
def env(train_image, tmp_path):
    return script_env(None, tmp_path / "work", AWS_ACCESS_KEY_ID=None,
                      AWS_SECRET_ACCESS_KEY=None, TRAIN_IMAGE=train_image)


def job_containers(job_dir: Path) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={LABEL}={job_dir}").stdout.split()


def read_rows(job_dir: Path) -> list[dict]:
    with open(job_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "work" / "state.json").read_text())


def tune(*args: str, env: dict, cwd: Path, timeout: float = 1200):
    return run_script("tune", "--local", *QUIET_DEFAULTS, *args, env=env, cwd=cwd,
                      timeout=timeout)


def test_three_trial_study_writes_the_cloud_report_and_train_uses_its_best(
        data, env, tmp_path):
    proc = tune("--data", str(data), "--max-jobs", "3", "--max-parallel-jobs", "2",
                "--early-stopping", "Off", "--range", "lr=cont:0.002:0.02:log",
                "--range", "batch-size=cat:4,8", *statics(epochs="1"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    job = state(tmp_path)["tuning_job"]
    job_dir = tmp_path / "work" / "tuning" / job
    rows = read_rows(job_dir)
    assert [r["status"] for r in rows] == ["Completed"] * 3
    assert list(rows[0]) == ["training_job", "status", "objective", "batch-size", "lr",
                             "duration_s", "failure_reason"]
    for r in rows:
        assert 0.0 <= float(r["objective"]) <= 1.0 and float(r["duration_s"]) > 0
        assert 0.002 <= float(r["lr"]) <= 0.02 and r["batch-size"] in ("4", "8")
        log = (job_dir / "trials" / r["training_job"] / "trial.log").read_text()
        assert "# hyperparameters" in log and "METRIC epoch=1/1" in log
        assert f"# status Completed; objective valid:accuracy={float(r['objective'])}" in log
        assert f"--cpus {round((os.cpu_count() or 1) / 2, 2):g} " in log  # cores shared
    top = max(rows, key=lambda r: float(r["objective"]))
    best = json.loads((job_dir / "best.json").read_text())
    assert best["objective"] == {"name": "valid:accuracy", "type": "Maximize",
                                 "value": float(top["objective"])}
    assert best["training_job"] == top["training_job"]
    assert best["hyperparameters"] == {**TINY, "epochs": "1", "lr": top["lr"],
                                       "batch-size": top["batch-size"]}
    assert (job_dir / "search.png").stat().st_size > 10_000
    assert (job_dir / "study.db").is_file() and job_containers(job_dir) == []
    assert state(tmp_path)["best_hyperparameters"] == str(job_dir / "best.json")

    trained = run_script("train", "--local", "--data", str(data), "--quiet", env=env,
                         cwd=tmp_path, timeout=900)
    assert trained.returncode == 0, explain(trained)
    assert f"hyperparameters from {job_dir / 'best.json'}" in trained.stdout
    assert f"hyperparameters {json.dumps(best['hyperparameters'])}" in trained.stdout


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def start_tune(*args: str, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / "tune.py"), "--local", *args],
                            env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def training_started(job_dir: Path, name: str):
    log = job_dir / "trials" / name / "trial.log"
    return lambda: log.is_file() and "dogbreed_train: data:" in log.read_text()


def signal_during_first_trial(args: list[str], signum: int, env: dict, tmp_path: Path):
    """Start a study, send `signum` once its first trial trains; (proc, job, job_dir, out)."""
    proc = start_tune(*QUIET_DEFAULTS, *args, env=env, cwd=tmp_path)
    wait_for(lambda: (tmp_path / "work" / "state.json").exists(), 120, "the job to start")
    job = state(tmp_path)["tuning_job"]
    job_dir = tmp_path / "work" / "tuning" / job
    wait_for(training_started(job_dir, f"{job}-001"), 300, "trial 1 to train")
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    return proc, job, job_dir, out


def test_killed_study_resumes_keeps_finished_trials_and_reruns_the_interrupted_one(
        data, env, tmp_path):
    args = ["--data", str(data), "--max-jobs", "2", "--max-parallel-jobs", "1",
            "--early-stopping", "Off", "--range", "lr=cont:0.002:0.02:log",
            *statics(epochs="1", **{"batch-size": "8"})]
    # Ctrl-C during the first trial: its container is stopped and removed.
    proc, job, job_dir, out = signal_during_first_trial(args, signal.SIGINT, env, tmp_path)
    assert proc.returncode == 130, out
    assert f"--resume {job}" in out and job_containers(job_dir) == []
    assert [r["status"] for r in read_rows(job_dir)] == ["Stopped"]

    # Resumed, then killed with SIGKILL while the re-run trains: its container outlives it.
    proc = start_tune("--resume", job, env=env, cwd=tmp_path)
    wait_for(training_started(job_dir, f"{job}-002"), 300, "the re-run to train")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(job_containers(job_dir)) == 1

    # Resumed again: the orphan is removed, the interrupted trial runs a third time.
    done = run_script("tune", "--local", "--resume", job, env=env, cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, explain(done)
    assert "removed 1 container(s) of the killed run" in done.stdout
    assert f"re-running {job}-002" in done.stdout
    rows = read_rows(job_dir)
    assert [r["status"] for r in rows] == ["Stopped", "Stopped", "Completed", "Completed"]
    assert rows[0]["lr"] == rows[1]["lr"] == rows[2]["lr"]  # the same trial, re-run
    assert rows[3]["lr"] != rows[0]["lr"]
    assert json.loads((job_dir / "best.json").read_text())["training_job"] in (
        rows[2]["training_job"], rows[3]["training_job"])
    assert job_containers(job_dir) == []


def test_sigterm_stops_the_study_as_ctrl_c_does(data, env, tmp_path):
    """`timeout`, systemd and CI runners stop a command with SIGTERM: the running trial's
    container is removed and the trial is queued to run again on --resume."""
    args = ["--data", str(data), "--max-jobs", "1", "--max-parallel-jobs", "1",
            "--range", "lr=cont:0.002:0.02:log", *statics(epochs="1", **{"batch-size": "8"})]
    proc, job, job_dir, out = signal_during_first_trial(args, signal.SIGTERM, env, tmp_path)
    assert proc.returncode == 143, out
    assert f"--resume {job}" in out and "terminated (SIGTERM)" in out
    assert job_containers(job_dir) == []
    assert [r["status"] for r in read_rows(job_dir)] == ["Stopped"]


def test_a_hostile_dataset_cannot_set_a_trials_objective(env, tmp_path):
    """Folder and file names that forge METRIC lines (synthetic.make_hostile_dataset):
    the trial's objective is the valid accuracy its job wrote to metrics.json."""
    hostile = make_hostile_dataset(tmp_path / "hostile", {"train": 6, "valid": 2, "test": 2})
    proc = tune("--data", str(hostile), "--max-jobs", "1", "--max-parallel-jobs", "1",
                "--range", "lr=cat:0.003", *statics(epochs="1", **{"batch-size": "6",
                                                                   "bad-images": "skip"}),
                env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    job_dir = tmp_path / "work" / "tuning" / state(tmp_path)["tuning_job"]
    [row] = read_rows(job_dir)
    trial = job_dir / "trials" / row["training_job"]
    record = json.loads((trial / "opt_ml" / "output" / "data" / "metrics.json").read_text())
    assert row["status"] == "Completed"
    assert float(row["objective"]) == record["summary"]["valid_acc"] != 0.9999
    assert record["skipped_images"]["decode"] == 2  # the forged names were logged
    best = json.loads((job_dir / "best.json").read_text())
    assert best["objective"]["value"] == record["summary"]["valid_acc"]


def test_pruning_stops_a_trial_whose_loss_does_not_move(data, env, tmp_path):
    # Grid with seed 1 runs lr=0.003 first, then lr=1e-9, whose loss stays put.
    proc = tune("--data", str(data), "--strategy", "Grid", "--seed", "1", "--max-jobs", "2",
                "--max-parallel-jobs", "1", "--objective", "train:loss",
                "--range", "lr=cat:0.003,0.000000001",
                *statics(epochs="4", **{"batch-size": "4"}), env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    job_dir = tmp_path / "work" / "tuning" / state(tmp_path)["tuning_job"]
    good, bad = read_rows(job_dir)
    assert (good["lr"], good["status"]) == ("0.003", "Completed")
    assert (bad["lr"], bad["status"]) == ("0.000000001", "Pruned")
    log = (job_dir / "trials" / bad["training_job"] / "trial.log").read_text()
    assert "METRIC epoch=1/4" in log and "METRIC epoch=4/4" not in log
    assert float(bad["duration_s"]) < float(good["duration_s"])
    assert float(bad["objective"]) > float(good["objective"])


def test_a_failed_trial_is_recorded_with_its_reason_and_the_study_goes_on(data, env, tmp_path):
    # AlexNet's pooling cannot shrink a 32-pixel image five times: that trial fails
    # while training, though every value is valid on its own.
    proc = tune("--data", str(data), "--strategy", "Grid", "--max-jobs", "2",
                "--max-parallel-jobs", "1", "--early-stopping", "Off",
                "--range", "model=cat:alexnet,resnet18",
                *statics(epochs="1", model=None, **{"batch-size": "8"}), env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    job_dir = tmp_path / "work" / "tuning" / state(tmp_path)["tuning_job"]
    rows = {r["model"]: r for r in read_rows(job_dir)}
    assert rows["alexnet"]["status"] == "Failed" and rows["alexnet"]["objective"] == ""
    failure = (job_dir / "trials" / rows["alexnet"]["training_job"] / "opt_ml" / "output"
               / "failure").read_text().splitlines()[0]
    assert rows["alexnet"]["failure_reason"] == failure[:1024] and failure
    assert rows["resnet18"]["status"] == "Completed"
    best = json.loads((job_dir / "best.json").read_text())
    assert best["training_job"] == rows["resnet18"]["training_job"]


@pytest.mark.parametrize(("args", "message"), [
    (["--range", "lrr=cont:0.001:0.1"], "unknown hyperparameter 'lrr'"),
    (["--range", "lr=cont:0.1:0.001"], "--range lr=cont:0.1:0.001: LOW must be below HIGH"),
    (["--range", "batch-size=cat:,"], "--range batch-size: a categorical range needs"),
    (["--range", "lr=cont:1:20"], "--range lr=20.0: the training image rejects it"),
    (["--empty-data"], "has no class folders with .jpg/.jpeg/.png images"),
], ids=["unknown-name", "inverted", "empty", "rejected-value", "no-classes"])
def test_bad_input_is_one_line_before_any_trial_starts(data, env, tmp_path, args, message):
    folder = data
    if args == ["--empty-data"]:
        folder, args = tmp_path / "empty", ["--range", "lr=cont:0.001:0.1"]
        (folder / "train").mkdir(parents=True)
    proc = tune("--data", str(folder), *args, *statics(epochs="1"), env=env, cwd=tmp_path,
                timeout=300)
    assert proc.returncode == 1, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        proc.stderr
    assert not (tmp_path / "work" / "tuning").exists()  # no study, no trial


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "/nonexistent"], "/nonexistent is not a folder"),
    (["--max-parallel-jobs", "0"], "--max-parallel-jobs must be at least 1 (got 0)"),
    (["--max-jobs", "0"], "--max-jobs must be at least 1 (got 0)"),
    (["--objective", "rule:Overfit"], "a local trial's objective is read from the metrics.json"),
    (["--metric-definitions", "/nonexistent.json"],
     "--metric-definitions /nonexistent.json: cannot be read as JSON"),
], ids=["no-data-folder", "parallel-0", "jobs-0", "log-only-objective", "no-definitions"])
def test_more_bad_input_is_one_line_before_any_trial_starts(data, env, tmp_path, args,
                                                           message):
    given = {a for a in args if a.startswith("--")}
    proc = tune(*([] if "--data" in given else ["--data", str(data)]), *args,
                "--range", "lr=cont:0.001:0.1", *statics(epochs="1"), env=env, cwd=tmp_path,
                timeout=300)
    assert proc.returncode == 1, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        proc.stderr
    assert not (tmp_path / "work" / "tuning").exists()


def sqlite_of_another_program(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('mine')")
    con.close()


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.write_bytes(os.urandom(4096)), "not a readable SQLite file"),
    (lambda p: p.write_bytes(b""), "an empty file"),
    (sqlite_of_another_program, "it holds another program's tables: notes"),
], ids=["random-bytes", "empty", "another-program"])
def test_resume_of_a_damaged_study_is_one_line_and_leaves_the_file(env, tmp_path, make, says):
    job = "dogbreed-hpo-local-241122-1200"
    db = tmp_path / "work" / "tuning" / job / "study.db"
    db.parent.mkdir(parents=True)
    make(db)
    before = db.read_bytes()
    proc = run_script("tune", "--local", "--resume", job, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: --resume {job}: {db} is not a study of a local tuning job (") and says in \
        lines[0] and lines[0].endswith("; start a new job without --resume"), proc.stderr
    assert db.read_bytes() == before  # read, never written


@pytest.mark.parametrize(("args", "message"), [
    (["--range", "lr=cont:0.001:0.1"], "stored settings: drop --range"),
    (["--max-parallel-jobs", "2", "--strategy", "Random"],
     "stored settings: drop --strategy, --max-parallel-jobs"),
    (["--seed", "3"], "stored settings: drop --seed"),
], ids=["range", "parallel-and-strategy", "seed"])
def test_resume_refuses_what_would_change_the_stored_search(env, tmp_path, args, message):
    proc = run_script("tune", "--local", "--resume", "dogbreed-hpo-local-241122-1200", *args,
                      env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, explain(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_each_trial_gets_one_gpu_or_its_share_of_the_cores():
    from dogbreed_scripts import local_trial, local_tuning

    assert local_tuning.default_parallelism(["0", "1"], 16) == 2  # one trial per GPU
    assert local_tuning.default_parallelism([], 16) == 4
    assert local_tuning.default_parallelism([], 2) == 1
    assert local_trial.Share(8, "1").docker_args() == [
        "--cpus", "8", "-e", "OMP_NUM_THREADS=8", "--gpus", "device=1"]
    assert local_trial.Share(0.5).docker_args() == ["--cpus", "0.5", "-e", "OMP_NUM_THREADS=1"]
