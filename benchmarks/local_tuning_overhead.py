#!/usr/bin/env python3
"""What `tune.py --local` costs over the training containers themselves.

    .venv/bin/python benchmarks/local_tuning_overhead.py --trials 3 --rounds 2

Each round runs N trials through the tuner (one at a time, no early stopping, so
every trial trains to the end), then the same N training containers by hand: the
hyperparameters each trial got, the same /opt/ml layout, the same `docker run ...
train` with the same CPU share, back to back. Rounds alternate which goes first,
so a noisy neighbour hits both alike. The tuner's figure is the whole command's
wall time: Python start, the input checks (one short container applying the
image's hyperparameter rules), Optuna and its SQLite study, the report and plot.
Prints JSON (last line) and writes it to --json if given.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# photo.py sits beside this file, on sys.path as the script's folder.
from photo import photo_dataset

from dogbreed_scripts import local_trial

ROOT = Path(__file__).resolve().parents[1]

STATIC = {"model": "resnet18", "pretrained": "false", "image-size": "32", "workers": "0",
          "test-batch-size": "16", "batch-size": "8"}
OFF = ("lr", "eps", "weight-decay", "batch-size", "epochs", "model")


def through_the_tuner(image: str, data: Path, work: Path, trials: int, epochs: int
                      ) -> tuple[float, list[dict], Path]:
    cmd = [sys.executable, str(ROOT / "scripts" / "tune.py"), "--local", "--data", str(data),
           "--workdir", str(work), "--max-jobs", str(trials), "--max-parallel-jobs", "1",
           "--early-stopping", "Off", "--seed", "0", *(f"--range={n}=off" for n in OFF),
           "--range", "lr=cont:0.002:0.02:log",
           *(f"--static={k}={v}" for k, v in {**STATIC, "epochs": str(epochs)}.items())]
    env = {**os.environ, "TRAIN_IMAGE": image, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"tuner failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    job = json.loads((work / "state.json").read_text())["tuning_job"]
    job_dir = work / "tuning" / job
    with open(job_dir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    return seconds, rows, job_dir


def by_hand(image: str, data: Path, work: Path, rows: list[dict], epochs: int,
            cpus: float) -> tuple[float, list[float]]:
    """The same containers, run one after the other with plain `docker run`."""
    share = local_trial.Share(cpus).docker_args()
    channels = [c for c in ("train", "valid", "test") if (data / c).is_dir()]
    each = []
    start = time.monotonic()
    for i, row in enumerate(rows):
        hps = {**STATIC, "epochs": str(epochs), "lr": row["lr"]}
        opt_ml = local_trial.lay_out(work / f"hand-{i}", hps, channels)
        mounts = [a for c in channels for a in ("-v", f"{data / c}:/opt/ml/input/data/{c}:ro")]
        t0 = time.monotonic()
        proc = subprocess.run([local_trial.DOCKER, "run", "--rm", "--network", "none",
                               "--hostname", "algo-1", "-e", "SM_STUDIO_LOCAL_MODE=true",
                               *share, "-v", f"{opt_ml}:/opt/ml", *mounts, image, "train"],
                              capture_output=True, text=True, check=False)
        each.append(time.monotonic() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"training container failed:\n{proc.stdout[-2000:]}")
    return time.monotonic() - start, each


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=os.environ.get("TRAIN_IMAGE", "dogbreed-train:latest"))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cpus = float(os.cpu_count() or 1)  # one trial at a time gets every core
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-local-tuning-") as tmp:
        data = photo_dataset(Path(tmp) / "dogImages", {"train": 8, "valid": 2, "test": 2},
                             size=32)
        for r in range(args.rounds):
            work = Path(tmp) / f"round-{r}"
            rows = None
            if r % 2:  # by hand first: the hyperparameters of the previous round's trials
                hand_s, each = by_hand(args.image, data, work, rounds[-1]["rows"],
                                       args.epochs, cpus)
                tuner_s, rows, _ = through_the_tuner(args.image, data, work, args.trials,
                                                     args.epochs)
            else:
                tuner_s, rows, _ = through_the_tuner(args.image, data, work, args.trials,
                                                     args.epochs)
                hand_s, each = by_hand(args.image, data, work, rows, args.epochs, cpus)
            inside = sum(float(row["duration_s"]) for row in rows)
            rounds.append({"tuner_s": round(tuner_s, 1), "by_hand_s": round(hand_s, 1),
                           "overhead_pct": round(100 * (tuner_s / hand_s - 1), 1),
                           "tuner_trials_s": round(inside, 1),
                           "tuner_outside_trials_s": round(tuner_s - inside, 1),
                           "by_hand_each_s": [round(s, 1) for s in each],
                           "rows": [{"lr": row["lr"]} for row in rows]})
            print(f"round {r + 1}: tuner {tuner_s:.1f} s (trials {inside:.1f} s), "
                  f"by hand {hand_s:.1f} s, overhead {rounds[-1]['overhead_pct']:+.1f}%",
                  flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "image": args.image, "trials": args.trials, "epochs": args.epochs,
              "rounds": rounds,
              "median_overhead_pct": statistics.median(r["overhead_pct"] for r in rounds)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
