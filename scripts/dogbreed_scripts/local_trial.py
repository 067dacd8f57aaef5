"""One trial of a local tuning job: a training container on a /opt/ml tree of its own.

The container is laid out and started as SageMaker would start a training job
(config files under input/config, one read-only folder per channel, the `train`
command), with its own share of the machine. Its log is streamed line by line
into the trial's log file, and each METRIC line is read with the image's published
metric regexes (anchored on the program's own lines, as SageMaker reads them), so
that the tuner can prune a trial between epochs. A trial's objective is the value
the job wrote to output/data/metrics.json, never free log text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dogbreed_contract import metrics as contract_metrics

DOCKER = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"
# Every trial container carries this label, its value the tuning job's folder: what a
# resumed run removes (containers a killed run left behind) and nothing else.
LABEL = "dogbreed.local-tuning"


@dataclass(frozen=True)
class Share:
    """What one trial container may use: CPU cores, and one GPU (its index) or none."""

    cpus: float
    gpu: str | None = None

    def docker_args(self) -> list[str]:
        threads = str(max(1, int(self.cpus)))
        args = ["--cpus", f"{self.cpus:g}", "-e", f"OMP_NUM_THREADS={threads}"]
        return args + (["--gpus", f"device={self.gpu}"] if self.gpu is not None else [])


@dataclass
class Outcome:
    status: str                  # Completed, Pruned, Failed or Stopped (interrupted)
    objective: float | None      # metrics.json's final value; the last one logged if none
    failure_reason: str
    started: float
    ended: float


class Metrics:
    """The objective and the epoch number, read from log lines with the image's regexes
    (for pruning between epochs), and the objective's final value from the record."""

    def __init__(self, definitions: list[dict[str, str]], objective: str):
        regex = {d["Name"]: re.compile(d["Regex"]) for d in definitions}
        self.name = objective
        self.objective = regex[objective]
        self.epoch = regex.get("epoch")

    def read(self, line: str) -> tuple[float | None, int | None]:
        value = self.objective.search(line)
        epoch = self.epoch.search(line) if self.epoch else None
        return (float(value.group(1)) if value else None,
                int(epoch.group(1)) if epoch else None)

    def final(self, opt_ml: Path) -> float | None:
        """The objective's last value in the job's output/data/metrics.json."""
        try:
            record = json.loads((opt_ml / "output" / "data" / "metrics.json").read_text())
        except (OSError, ValueError):
            return None
        return contract_metrics.final_value(self.name, record)


def lay_out(folder: Path, hyperparameters: dict[str, str], channels: list[str]) -> Path:
    """folder/opt_ml as SageMaker lays it out for a one-instance job (no data yet)."""
    root = folder / "opt_ml"
    if root.exists():  # a re-run of an interrupted trial starts clean
        shutil.rmtree(root)
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=1))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
             "RecordWrapperType": "None"} for c in channels}))
    for c in channels:
        (root / "input" / "data" / c).mkdir(parents=True)
    for d in ("model", "output", "checkpoints"):
        (root / d).mkdir()
    return root


def failure_reason(opt_ml: Path, code: int, last_line: str) -> str:
    """The first line of the failure file the image wrote, as SageMaker would show it."""
    failure = opt_ml / "output" / "failure"
    if failure.is_file():
        first = failure.read_text(errors="replace").strip().splitlines()
        if first:
            return first[0][:1024]
    return f"container exited with code {code}: {last_line.strip()[:300]}"


class TrialContainer:
    """`docker run IMAGE train` for one trial; stop() removes it from another thread."""

    def __init__(self, name: str, image: str, opt_ml: Path, data: dict[str, Path],
                 share: Share, job_label: str):
        self.name, self.opt_ml, self.stopping = name, opt_ml, False
        mounts = [a for c, path in data.items()
                  for a in ("-v", f"{path}:/opt/ml/input/data/{c}:ro")]
        self.command = [DOCKER, "run", "--rm", "--name", name, "--label",
                        f"{LABEL}={job_label}", "--network", "none", "--hostname", "algo-1",
                        "-e", "SM_STUDIO_LOCAL_MODE=true", *share.docker_args(),
                        "-v", f"{opt_ml}:/opt/ml", *mounts, image, "train"]

    def run(self, log_path: Path, metrics: Metrics,
            on_epoch: Callable[[int, float], bool]) -> Outcome:
        """Run to the end, or until on_epoch(epoch, value) says prune, or stop()."""
        started, last, value, pruned = time.time(), "", None, False
        with open(log_path, "a") as log:
            # Its own session: a Ctrl-C in the terminal reaches the tuner, which then
            # removes the container, rather than the docker client directly.
            proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.strip():
                    last = line
                seen, epoch = metrics.read(line)
                if seen is None:
                    continue
                value = seen
                if epoch is not None and not pruned and not self.stopping \
                        and on_epoch(epoch, seen):
                    pruned = True
                    self.remove()
            code = proc.wait()
        ended = time.time()
        if self.stopping:
            return Outcome("Stopped", value, "interrupted", started, ended)
        if pruned:
            return Outcome("Pruned", value, "", started, ended)
        if code != 0:
            return Outcome("Failed", value, failure_reason(self.opt_ml, code, last),
                           started, ended)
        final = metrics.final(self.opt_ml)
        if final is None:
            return Outcome("Failed", value, f"the job wrote no finite {metrics.name} to "
                           "output/data/metrics.json", started, ended)
        return Outcome("Completed", final, "", started, ended)

    def stop(self) -> None:
        self.stopping = True
        self.remove()

    def remove(self) -> None:
        subprocess.run([DOCKER, "rm", "-f", self.name], capture_output=True, check=False)


def remove_job_containers(job_label: str) -> list[str]:
    """Remove every container of this tuning job (those a killed run left); their ids."""
    ids = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label={LABEL}={job_label}"],
                         capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, check=False)
    return ids


def check_with_image(image: str, candidates: list[tuple[str, dict[str, str]]]) -> str | None:
    """The image's own hyperparameter rules (dogbreed_train.config) applied to each
    candidate set, in one short container with no network and no data; the first
    problem as one line, or None. Nothing is trained."""
    code = ("import json, sys\nfrom dogbreed_train import config\n"
            "for label, hps in json.loads(sys.argv[1]):\n"
            "    try:\n        config.parse(hps)\n"
            "    except Exception as exc:\n        print(json.dumps([label, str(exc)]))\n"
            "        break\n")
    proc = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "--label",
                           f"{LABEL}=check", image, "python", "-c", code,
                           json.dumps(candidates)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"could not run the training image {image}: {tail[-1] if tail else proc.returncode}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    if not lines:
        return None
    label, message = json.loads(lines[0])
    return f"{label}: the training image rejects it ({message})"
