"""`tune.py --local`: the cloud tuner's search, run over local training containers.

Optuna does the searching (samplers for SageMaker's strategies, pruners for its
early stopping) and keeps the study in a SQLite file through its own storage, so a
run that was killed resumes with `--resume JOB`: finished trials stay, the
interrupted ones run again with the same hyperparameters. Each trial is a training
container (local_trial.py) with its share of the machine; the report is the cloud
tuner's (tuning_report.py), so train.py takes best.json from either.

    WORKDIR/tuning/JOB/study.db            the Optuna study (SQLite)
    WORKDIR/tuning/JOB/trials/NAME/        one trial: trial.log, opt_ml/ (model, output)
    WORKDIR/tuning/JOB/{trials.csv,best.json,search.png}
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dogbreed_contract import metrics as contract_metrics
from dogbreed_scripts import local_trial, settings, tuning_report
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError

# SageMaker's scaling names for the report's ParameterRanges.
SCALING_TYPE = {"Logarithmic": "Logarithmic", "ReverseLogarithmic": "ReverseLogarithmic",
                "Linear": "Linear", "Auto": "Auto"}
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a folder under WORKDIR/tuning, no path
RANGE_KEY = {"continuous": "ContinuousParameterRanges", "integer": "IntegerParameterRanges",
             "categorical": "CategoricalParameterRanges"}


# --- the plan: everything a run (or its resumption) needs, stored with the study ---

def gpus() -> list[str]:
    """GPU indices on this host (nvidia-smi -L), or none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def default_parallelism(gpu_ids: list[str], cores: int) -> int:
    """One trial per GPU; on CPU one per 4 cores (a trial scales to a few cores)."""
    return len(gpu_ids) if gpu_ids else max(1, cores // 4)


def candidates(ranges: dict[str, tuple[str, list]], static: dict[str, str]
               ) -> list[tuple[str, dict[str, str]]]:
    """Hyperparameter sets to check with the image: the statics, and each range's ends
    (every value of a categorical one) beside them."""
    out = [("--static", dict(static))]
    for name, (kind, values) in ranges.items():
        ends = values if kind == "categorical" else values[:2]
        out += [(f"--range {name}={value}", {**static, name: str(value)}) for value in ends]
    return out


def new_plan(args: argparse.Namespace, cfg, ranges: dict[str, tuple[str, list]],
             static: dict[str, str]) -> dict:
    """Check the whole request on this host, then with the image's own rules: one
    readable line (ConfigError) before any trial container starts."""
    from dogbreed_scripts import data as data_step

    if not args.data:
        raise ConfigError("--local needs --data DIR (a folder with train/ valid/ test/)")
    clash = sorted(set(static) & set(ranges))
    if clash:
        raise ConfigError(f"{', '.join(clash)} both static and tuned: add --range NAME=off")
    for name, (kind, values) in ranges.items():
        if kind == "categorical" and not values:
            raise ConfigError(f"--range {name}: a categorical range needs at least one value")
    names = [d["Name"] for d in settings.metric_definitions(args.metric_definitions)]
    if args.objective not in names:
        raise ConfigError(f"objective {args.objective!r} is not a metric the training image "
                          f"logs (one of: {', '.join(names)})")
    if args.objective not in contract_metrics.RECORDED:
        raise ConfigError(f"objective {args.objective!r}: a local trial's objective is read "
                          "from the metrics.json the job writes, which holds "
                          f"{', '.join(contract_metrics.RECORDED)}")
    if args.strategy == "Grid" and any(k != "categorical" for k, _ in ranges.values()):
        raise ConfigError("--strategy Grid needs categorical ranges only (cat:A,B,C), "
                          "as on SageMaker")
    if args.max_jobs < 1:
        raise ConfigError("--max-jobs must be at least 1")
    root = data_step.find_root(Path(args.data).expanduser().resolve())
    layout = data_step.check_layout(root)
    gpu_ids = gpus()
    cores = os.cpu_count() or 1
    parallel = (default_parallelism(gpu_ids, cores) if args.max_parallel_jobs is None
                else args.max_parallel_jobs)  # 0 is refused by tune.check_args
    if gpu_ids and parallel > len(gpu_ids):
        raise ConfigError(f"--max-parallel-jobs {parallel}: this host has {len(gpu_ids)} "
                          "GPU(s), one per trial")
    image = cfg.local_train_image
    problem = local_trial.check_with_image(image, candidates(ranges, static))
    if problem:
        raise ConfigError(problem)
    max_jobs = args.max_jobs
    if args.strategy == "Grid":
        grid = 1
        for _, values in ranges.values():
            grid *= len(values)
        max_jobs = min(max_jobs, grid)
    objective_type = args.objective_type or (
        "Minimize" if args.objective.endswith("loss") else "Maximize")
    return {"image": image, "data": {s: str(root / s) for s in layout.files},
            "ranges": ranges, "static": static, "objective": args.objective,
            "objective_type": objective_type, "strategy": args.strategy,
            "early_stopping": args.early_stopping or "Auto", "max_jobs": max_jobs,
            "parallel": parallel, "cpus_per_trial": round(cores / parallel, 2),
            "gpus": gpu_ids[:parallel], "seed": args.seed,
            "metric_definitions": settings.metric_definitions(args.metric_definitions)}


# --- Optuna: the study, its sampler and pruner ------------------------------------

class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler, less its study.stop() once the grid is done: stop() only works
    inside study.optimize(), and this tuner asks and tells (it runs no more trials
    than the grid has points: new_plan caps --max-jobs)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def distributions(ranges: dict[str, tuple[str, list]]) -> dict:
    out = {}
    for name, (kind, values) in ranges.items():
        if kind == "categorical":
            out[name] = optuna.distributions.CategoricalDistribution(values)
        elif kind == "integer":
            out[name] = optuna.distributions.IntDistribution(int(values[0]), int(values[1]),
                                          log=values[2] == "Logarithmic")
        else:
            out[name] = optuna.distributions.FloatDistribution(float(values[0]), float(values[1]),
                                            log=values[2] == "Logarithmic")
    return out


def sampler(plan: dict):
    """SageMaker's strategies: Bayesian = TPE, Random, Grid; Hyperband samples with TPE
    and prunes with Hyperband."""
    seed = plan["seed"]
    if plan["strategy"] == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if plan["strategy"] == "Grid":
        return AskTellGridSampler({n: v for n, (_, v) in plan["ranges"].items()}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)



def pruner(plan: dict):
    """Early stopping per epoch: Hyperband's, or SageMaker's Auto rule (stop a trial
    whose objective so far is worse than the median of earlier trials at the same
    epoch), or none (--early-stopping Off)."""
    if plan["strategy"] == "Hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if plan["early_stopping"] == "Auto":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def storage_url(job_dir: Path) -> str:
    return f"sqlite:///{job_dir / 'study.db'}"


# What every stored plan holds (new_plan's keys); a plan without them is not this tuner's.
PLAN_KEYS = ("image", "data", "ranges", "static", "objective", "objective_type", "strategy",
             "early_stopping", "max_jobs", "parallel", "cpus_per_trial", "gpus", "seed",
             "metric_definitions")


def check_study_file(job: str, db: Path) -> None:
    """--resume: one line, before Optuna opens (and would write to) the file, when
    study.db is not a study this tuner wrote: damaged, empty, or another program's."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"--resume {job}: {db} is not a study of a local tuning job "
                           f"({why}); start a new job without --resume")

    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"studies", "study_user_attributes"} <= tables:
                raise refuse("an empty file" if not tables else "it holds another program's "
                             f"tables: {', '.join(sorted(tables)[:3])}")
            names = {row[0] for row in con.execute("SELECT study_name FROM studies")}
    except sqlite3.DatabaseError as exc:
        raise refuse(f"not a readable SQLite file: {exc}") from None
    if job not in names:
        raise refuse(f"it holds no study named {job}")


def stored_plan(job: str, url: str) -> dict:
    """The plan a study was started with (check_study_file first)."""
    try:
        plan = json.loads(optuna.load_study(study_name=job, storage=url).user_attrs["plan"])
    except Exception as exc:  # noqa: BLE001 - Optuna's and SQLAlchemy's errors alike
        raise ConfigError(f"--resume {job}: its study cannot be read ({type(exc).__name__}); "
                          "start a new job without --resume") from None
    if not (isinstance(plan, dict) and all(k in plan for k in PLAN_KEYS)):
        raise ConfigError(f"--resume {job}: its study holds no complete plan; start a new "
                          "job without --resume")
    return plan


def open_study(job: str, job_dir: Path, plan: dict | None):
    """Create the study (plan given) or load it (plan None: --resume); (study, plan)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(job_dir)
    if plan is None:
        check_study_file(job, job_dir / "study.db")
        plan = stored_plan(job, url)
    direction = "maximize" if plan["objective_type"] == "Maximize" else "minimize"
    study = optuna.create_study(study_name=job, storage=url, direction=direction,
                                sampler=sampler(plan), pruner=pruner(plan),
                                load_if_exists=True)
    study.set_user_attr("plan", json.dumps(plan))
    return study, plan


def requeue_interrupted(study) -> list[int]:
    """Trials a killed run left RUNNING are marked failed-by-interruption and queued to
    run again with the same hyperparameters; their numbers."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        mark_interrupted(study, t.number, t.params)
    return [t.number for t in stale]


def mark_interrupted(study, number: int, params: dict) -> None:
    interrupted = set(study.user_attrs.get("interrupted", []))
    study.set_user_attr("interrupted", sorted(interrupted | {number}))
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params, user_attrs={"rerun_of": number})


def finished(study) -> int:
    """Trials that count towards --max-jobs: all that ended, except interrupted ones."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in ended and t.number not in interrupted)


# --- running the trials -----------------------------------------------------------

class Tuner:
    """Starts trials while fewer than --max-parallel-jobs run and --max-jobs are not
    reached; each trial runs in a worker thread that waits on its container. Every
    study call goes through one lock (the SQLite storage is shared)."""

    def __init__(self, job: str, job_dir: Path, study, plan: dict):
        self.job, self.job_dir, self.study, self.plan = job, job_dir, study, plan
        self.lock = threading.Lock()
        self.metrics = local_trial.Metrics(plan["metric_definitions"], plan["objective"])
        self.distributions = distributions(plan["ranges"])
        self.free_gpus = list(plan["gpus"])
        self.running: dict = {}  # future -> (trial, TrialContainer)

    def name(self, number: int) -> str:
        return f"{self.job}-{number + 1:03d}"

    def start(self, pool: ThreadPoolExecutor) -> None:
        with self.lock:
            trial = self.study.ask(self.distributions)
        name = self.name(trial.number)
        hps = {**self.plan["static"], **{k: str(v) for k, v in trial.params.items()}}
        folder = self.job_dir / "trials" / name
        folder.mkdir(parents=True, exist_ok=True)
        opt_ml = local_trial.lay_out(folder, hps, list(self.plan["data"]))
        gpu = self.free_gpus.pop(0) if self.free_gpus else None
        share = local_trial.Share(self.plan["cpus_per_trial"], gpu)
        container = local_trial.TrialContainer(
            name, self.plan["image"], opt_ml,
            {c: Path(p) for c, p in self.plan["data"].items()}, share, str(self.job_dir))
        with open(folder / "trial.log", "w") as log:
            log.write(f"# trial {name}\n# hyperparameters {json.dumps(hps)}\n"
                      f"# container {' '.join(container.command)}\n")
        rerun = trial.user_attrs.get("rerun_of")
        print(f"--> {name} started{f' (re-run of {self.name(rerun)})' if rerun is not None else ''}"
              f": {json.dumps({k: str(v) for k, v in trial.params.items()})}", flush=True)
        future = pool.submit(self.run_trial, trial, container, folder, gpu)
        self.running[future] = (trial, container)

    def run_trial(self, trial, container, folder: Path, gpu: str | None):
        def on_epoch(epoch: int, value: float) -> bool:
            with self.lock:
                trial.report(value, epoch)
                return trial.should_prune()

        try:
            outcome = container.run(folder / "trial.log", self.metrics, on_epoch)
        finally:
            if gpu is not None:
                self.free_gpus.append(gpu)
        self.record(trial, outcome, folder)
        return outcome

    def record(self, trial, outcome: local_trial.Outcome, folder: Path) -> None:
        seconds = outcome.ended - outcome.started
        with open(folder / "trial.log", "a") as log:
            log.write(f"# status {outcome.status}; objective {self.plan['objective']}="
                      f"{outcome.objective}; duration {seconds:.1f} s"
                      f"{'; failure ' + outcome.failure_reason if outcome.failure_reason else ''}\n")
        with self.lock:
            trial.set_user_attr("started", outcome.started)
            trial.set_user_attr("duration_s", round(seconds, 1))
            trial.set_user_attr("failure_reason", outcome.failure_reason)
            if outcome.objective is not None:
                trial.set_user_attr("last_objective", outcome.objective)
            if outcome.status == "Completed":
                self.study.tell(trial, outcome.objective)
            elif outcome.status == "Pruned":
                self.study.tell(trial, state=TrialState.PRUNED)
            elif outcome.status == "Failed":
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                mark_interrupted(self.study, trial.number, trial.params)
        objective = "-" if outcome.objective is None else f"{outcome.objective:.4f}"
        print(f"<-- {self.name(trial.number)} {outcome.status} ({seconds:.0f} s), "
              f"{self.plan['objective']} {objective}"
              f"{': ' + outcome.failure_reason if outcome.failure_reason else ''}", flush=True)

    def run(self) -> None:
        """Until --max-jobs trials have ended. Ctrl-C stops and removes this run's
        containers; their trials are queued to run again on --resume."""
        pool = ThreadPoolExecutor(max_workers=self.plan["parallel"])
        try:
            while True:
                with self.lock:
                    done = finished(self.study)
                while (len(self.running) < self.plan["parallel"]
                       and done + len(self.running) < self.plan["max_jobs"]):
                    self.start(pool)
                if not self.running:
                    return
                ended, _ = wait(list(self.running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in ended:
                    self.running.pop(future)
                    future.result()  # a bug in the tuner itself must not pass silently
        except BaseException:
            for _, container in self.running.values():
                container.stop()
            wait(list(self.running))
            raise
        finally:
            pool.shutdown(wait=True)


# --- the report, in the cloud tuner's shape ---------------------------------------

def _iso(seconds: float | None) -> str:
    return "" if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def description(job: str, plan: dict, status: str) -> dict:
    """What DescribeHyperParameterTuningJob would say about this study."""
    ranges: dict[str, list] = {}
    for name, (kind, values) in plan["ranges"].items():
        entry = {"Name": name}
        if kind == "categorical":
            entry["Values"] = [str(v) for v in values]
        else:
            entry.update(MinValue=str(values[0]), MaxValue=str(values[1]),
                         ScalingType=SCALING_TYPE[values[2]])
        ranges.setdefault(RANGE_KEY[kind], []).append(entry)
    return {"HyperParameterTuningJobName": job, "HyperParameterTuningJobStatus": status,
            "HyperParameterTuningJobConfig": {
                "Strategy": plan["strategy"], "ParameterRanges": ranges,
                "HyperParameterTuningJobObjective": {"MetricName": plan["objective"],
                                                     "Type": plan["objective_type"]}},
            "TrainingJobDefinition": {"StaticHyperParameters": plan["static"]}}


STATUS = {"COMPLETE": "Completed", "PRUNED": "Pruned", "FAIL": "Failed",
          "RUNNING": "Stopped", "WAITING": "Stopped"}


def summaries(study, job: str, job_dir: Path, plan: dict) -> list[dict]:
    """What ListTrainingJobsForHyperParameterTuningJob would list, plus the local
    columns: duration and failure reason (the log is trials/NAME/trial.log)."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":
            continue
        name = f"{job}-{t.number + 1:03d}"
        status = "Stopped" if t.number in interrupted else STATUS[t.state.name]
        value = t.value if t.state.name == "COMPLETE" else t.user_attrs.get("last_objective")
        reason = t.user_attrs.get("failure_reason", "")
        if t.number in interrupted:
            reason = "interrupted; run again as a later trial"
        summary = {"TrainingJobName": name, "TrainingJobStatus": status,
                   "CreationTime": _iso(t.user_attrs.get("started") or (
                       t.datetime_start.timestamp() if t.datetime_start else None)),
                   "TunedHyperParameters": {k: str(v) for k, v in t.params.items()},
                   "duration_s": t.user_attrs.get("duration_s", ""),
                   "failure_reason": reason}
        if value is not None:
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "MetricName": plan["objective"], "Value": value}
        out.append(summary)
    return out


def report(study, job: str, job_dir: Path, plan: dict, status: str) -> dict:
    return tuning_report.write(description(job, plan, status),
                               summaries(study, job, job_dir, plan), job_dir,
                               extra_columns=("duration_s", "failure_reason"))


# --- entry point ------------------------------------------------------------------

def hold(job_dir: Path):
    """One tuner per study: an exclusive lock that the OS drops when the process dies."""
    handle = open(job_dir / "study.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{job_dir.name} is being run by another tuner right now") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def main(ctx: Context, ranges: dict | None, static: dict[str, str]) -> int:
    """tune.py --local: a new search over `ranges`, or --resume of a stopped one."""
    args, cfg = ctx.args, ctx.settings
    workdir = ctx.workdir.resolve()
    if args.resume:
        job, plan = args.resume, None
        if not JOB_NAME.fullmatch(job):
            raise ConfigError(f"--resume {job!r}: not a job name (a name in "
                              f"{workdir / 'tuning'}, such as dogbreed-hpo-local-...)")
        job_dir = workdir / "tuning" / job
        if not (job_dir / "study.db").is_file():
            raise ConfigError(f"--resume {job}: no study at {job_dir / 'study.db'}")
    else:
        plan = new_plan(args, cfg, ranges, static)
        job = time.strftime("dogbreed-hpo-local-%y%m%d-%H%M%S", time.gmtime())
        job_dir = workdir / "tuning" / job
        job_dir.mkdir(parents=True, exist_ok=True)
    lock = hold(job_dir)
    try:
        study, plan = open_study(job, job_dir, plan)
        ctx.save(tuning_job=job)
        left = local_trial.remove_job_containers(str(job_dir))
        if args.resume:
            again = requeue_interrupted(study)
            print(f"==> resuming {job}: {finished(study)} of {plan['max_jobs']} trials done"
                  f"{', removed ' + str(len(left)) + ' container(s) of the killed run' if left else ''}"
                  f"{', re-running ' + ', '.join(f'{job}-{n + 1:03d}' for n in again) if again else ''}")
        else:
            where = (f"GPU {', '.join(plan['gpus'])}, one each" if plan["gpus"]
                     else f"{plan['cpus_per_trial']:g} CPU cores each")
            print(f"==> local tuning job {job} with {plan['image']}: {plan['strategy']}, "
                  f"{plan['max_jobs']} trials ({plan['parallel']} at a time, {where}), "
                  f"objective {plan['objective']} ({plan['objective_type']}), early stopping "
                  f"{'Hyperband' if plan['strategy'] == 'Hyperband' else plan['early_stopping']}")
            for name, (kind, values) in plan["ranges"].items():
                print(f"    {name:<13} {kind:<11} {values}")
            print(f"    study {storage_url(job_dir)}", flush=True)
        tuner = Tuner(job, job_dir, study, plan)
        try:
            tuner.run()
        except KeyboardInterrupt:
            report(study, job, job_dir, plan, "Stopped")
            print(f"\nstopped; trial containers removed. Later: scripts/tune.py --local "
                  f"--resume {job}")
            raise
        result = report(study, job, job_dir, plan, "Completed")
    finally:
        lock.close()
    ctx.save(tuning_job=job, **(
        {"best_hyperparameters": result["best"]} if "best" in result else {}))
    if "best" in result:
        print(f"\nwrote {result['best']}, {result['csv']}, {result.get('plot')}")
    return 0
