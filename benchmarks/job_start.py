#!/usr/bin/env python3
"""How soon `docker run IMAGE train` refuses a bad job, and how soon a good one logs.

    .venv/bin/python benchmarks/job_start.py --image dogbreed-train:latest \\
        --image dogbreed-train:dev --rounds 5

For each image, each round, on a local /opt/ml tree (offline, as the tests run it):
  refused      hyperparameters.json with a bad value (lr=fast): seconds from
               `docker run` to the container's exit (which must be 2, with a
               `UserError: invalid hyperparameters` failure file)
  first_line   a good job: seconds to the first line the container prints
  program      the same job: seconds to the training program's first log line
               (`dogbreed_train: hyperparameters: ...`); the container is then removed
Images are interleaved round by round, so a noisy neighbour hits them alike.
Prints a table and JSON (last line).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
GOOD = {"model": "resnet18", "pretrained": "false", "epochs": "1", "image-size": "32",
        "batch-size": "8", "workers": "0"}
PROGRAM_LINE = "dogbreed_train: hyperparameters:"


def opt_ml(root: Path, hyperparameters: dict) -> Path:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {"train": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"]}))
    for folder in ("model", "output", "input/data/train"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def run_command(image: str, root: Path, name: str) -> list[str]:
    return [DOCKER, "run", "--rm", "--name", name, "--network", "none", "--hostname",
            "algo-1", "-v", f"{root}:/opt/ml", image, "train"]


def refused(image: str, work: Path) -> float:
    root = opt_ml(Path(tempfile.mkdtemp(dir=work)), {**GOOD, "lr": "fast"})
    name = f"dogbreed-jobstart-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    proc = subprocess.run(run_command(image, root, name), capture_output=True, text=True,
                          timeout=600, check=False)
    seconds = time.monotonic() - start
    failure = (root / "output" / "failure").read_text()
    if proc.returncode != 2 or not failure.startswith("UserError: invalid hyperparameters"):
        raise SystemExit(f"{image}: exit {proc.returncode}, failure {failure[:200]!r}")
    return seconds


def good(image: str, work: Path) -> tuple[float, float]:
    """(seconds to the first line, seconds to the program's first log line)."""
    root = opt_ml(Path(tempfile.mkdtemp(dir=work)), GOOD)
    name = f"dogbreed-jobstart-{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    proc = subprocess.Popen(run_command(image, root, name), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = program = None
    try:
        for line in proc.stdout:
            now = time.monotonic() - start
            first = now if first is None else first
            if PROGRAM_LINE in line:
                program = now
                break
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
        proc.wait(timeout=60)
    if program is None:
        raise SystemExit(f"{image}: the program never logged {PROGRAM_LINE!r}")
    return first, program


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", action="append", required=True, help="a training image")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args()
    samples = {image: {"refused": [], "first_line": [], "program": []} for image in args.image}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = args.image if round_ % 2 == 0 else list(reversed(args.image))
            for image in order:
                samples[image]["refused"].append(refused(image, Path(tmp)))
                first, program = good(image, Path(tmp))
                samples[image]["first_line"].append(first)
                samples[image]["program"].append(program)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg": os.getloadavg()},
        "rounds": args.rounds,
        "images": {image: {what: {"median_s": round(statistics.median(values), 2),
                                  "samples_s": [round(v, 2) for v in values]}
                           for what, values in kinds.items()}
                   for image, kinds in samples.items()}}
    print(f"{'image':32} {'refused':>9} {'first line':>11} {'program':>9}  (median s)")
    for image, kinds in result["images"].items():
        print(f"{image:32} {kinds['refused']['median_s']:9.2f} "
              f"{kinds['first_line']['median_s']:11.2f} {kinds['program']['median_s']:9.2f}")
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
