#!/usr/bin/env python3
"""tune: a SageMaker hyperparameter tuning job over the training image.

    scripts/tune.py                                   # default ranges, Bayesian, 8 jobs
    scripts/tune.py --max-jobs 12 --max-parallel-jobs 3 --strategy Random
    scripts/tune.py --range lr=cont:0.001:0.1:log --range model=cat:resnet50,vgg16 \\
                    --range eps=off --static pretrained=true
    scripts/tune.py --report dogbreed-hpo-241122-1200  # the report of an earlier job
    scripts/tune.py --local --data ~/dogImages --max-jobs 6   # local containers, no AWS
    scripts/tune.py --local --resume dogbreed-hpo-local-241122-1200   # after Ctrl-C/kill

Range specs: cont:LOW:HIGH[:log], int:LOW:HIGH[:log], cat:A,B,C, or off (not tuned).
The objective is a metric the training image logs (valid:accuracy by default), read
with the image's own published regexes (metric_definitions.json). When the job
ends it prints every trial (hyperparameters, status, objective), and writes
WORKDIR/tuning/JOB/{trials.csv,best.json,search.png}; `train.py` then uses best.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dogbreed_scripts import settings, tuning_report
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError

# What the source projects tuned: lr 0.001-0.1, eps 1e-9-1e-8, weight decay 0.1x-10x
# of its default, batch size 64/128/256, epochs 2-10, and the backbone they chose.
DEFAULT_RANGES: dict[str, tuple[str, list]] = {
    "lr": ("continuous", [1e-4, 1e-1, "Logarithmic"]),
    "eps": ("continuous", [1e-9, 1e-8, "Logarithmic"]),
    "weight-decay": ("continuous", [1e-3, 1e-1, "Logarithmic"]),
    "batch-size": ("categorical", ["64", "128", "256"]),
    "epochs": ("integer", [2, 10, "Auto"]),
    "model": ("categorical", ["resnet18", "resnet50", "vgg16", "alexnet"]),
}
KINDS = {"cont": "continuous", "int": "integer", "cat": "categorical"}
SCALING = {"log": "Logarithmic", "linear": "Linear", "auto": "Auto",
           "reverselog": "ReverseLogarithmic"}


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("--range", action="append", metavar="NAME=SPEC", dest="ranges",
                   help="override or add (or 'off') one hyperparameter range; repeatable")
    p.add_argument("--static", action="append", metavar="NAME=VALUE",
                   help="a fixed hyperparameter for every trial; repeatable")
    p.add_argument("--objective", default=None,
                   help="metric to optimise (default: valid:accuracy)")
    p.add_argument("--objective-type", choices=["Maximize", "Minimize"], default=None,
                   help="default: Minimize for *loss metrics, else Maximize")
    p.add_argument("--strategy", choices=["Bayesian", "Random", "Hyperband", "Grid"],
                   default=None, help="search strategy (default: Bayesian)")
    p.add_argument("--max-jobs", type=int, default=None, help="trials in all (default: 8)")
    p.add_argument("--max-parallel-jobs", type=int, default=None,
                   help="trials at the same time (default: 2; with --local, one per GPU, "
                        "else one per 4 CPU cores)")
    p.add_argument("--early-stopping", choices=["Off", "Auto"], default=None,
                   help="stop trials that do worse than the median so far (default: Off; "
                        "with --local, Auto)")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--max-run", type=int, default=4 * 3600,
                   help="seconds each trial may run (default: %(default)s)")
    p.add_argument("--data", help="S3 prefix holding train/ valid/ test/ "
                                  "(default: what data.py uploaded); with --local, a folder")
    p.add_argument("--image-uri", help="training image URI (default: from the registry settings)")
    p.add_argument("--metric-definitions", type=Path, default=None, metavar="FILE",
                   help="a JSON list of metric regexes (default: the ones the training "
                        "image logs, from dogbreed_contract)")
    p.add_argument("--job-name", help="default: dogbreed-hpo-YYMMDD-HHMMSS (32 characters at most)")
    p.add_argument("--detach", action="store_true",
                   help="start the job and return; run --report JOB later")
    p.add_argument("--report", metavar="JOB",
                   help="only write the report of an existing tuning job")
    local = p.add_argument_group("local tuning (dogbreed_scripts/local_tuning.py)")
    local.add_argument("--local", action="store_true",
                       help="run the trials as local training containers (Optuna), no AWS")
    local.add_argument("--resume", metavar="JOB",
                       help="with --local: go on with a stopped or killed local tuning job")
    local.add_argument("--seed", type=int, default=None,
                       help="with --local: seed of the search, for a repeatable order")
    settings.add_arguments(p, ["region", "profile", "role", "bucket", "prefix", "registry",
                               "train_repository", "tag", "local_train_image",
                               "train_instance_type", "workdir"])
    args = p.parse_args(argv)
    check_args(args)
    args.objective = args.objective or "valid:accuracy"
    args.strategy = args.strategy or "Bayesian"
    args.max_jobs = 8 if args.max_jobs is None else args.max_jobs
    if not args.local:
        args.max_parallel_jobs = 2 if args.max_parallel_jobs is None else args.max_parallel_jobs
        args.early_stopping = args.early_stopping or "Off"
    return args


# What a local tuning job stores when it starts (local_tuning.new_plan): --resume runs
# the search as stored, so these cannot be given with it.
STORED_IN_PLAN = {"ranges": "--range", "static": "--static", "data": "--data",
                  "objective": "--objective", "objective_type": "--objective-type",
                  "strategy": "--strategy", "early_stopping": "--early-stopping",
                  "max_jobs": "--max-jobs", "max_parallel_jobs": "--max-parallel-jobs",
                  "seed": "--seed", "metric_definitions": "--metric-definitions"}


def check_args(args: argparse.Namespace) -> None:
    """Refuse, in one line, what parses but cannot be meant (flags left None when not
    given, so that a 0 is never taken for "the default")."""
    for name in ("max_jobs", "max_parallel_jobs", "instance_count", "max_run"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if not args.local:
        given = [f for f, v in (("--resume", args.resume), ("--seed", args.seed)) if v is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} "
                              "for --local tuning only")
    elif args.resume:
        given = [flag for name, flag in STORED_IN_PLAN.items() if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"--resume {args.resume} goes on with the search as it was "
                              f"started, with its stored settings: drop {', '.join(given)}")


def parse_range(name: str, spec: str) -> tuple[str, list] | None:
    if spec == "off":
        return None
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise ConfigError(f"--range {name}={spec}: expected cont:LOW:HIGH[:log], "
                          "int:LOW:HIGH[:log], cat:A,B,C or off")
    if kind == "cat":
        values = [v.strip() for v in rest.split(",") if v.strip()]
        return "categorical", values
    parts = rest.split(":")
    try:
        low, high = (float(parts[0]), float(parts[1])) if kind == "cont" else \
            (int(parts[0]), int(parts[1]))
        scaling = SCALING[parts[2].lower()] if len(parts) > 2 else "Auto"
    except (ValueError, IndexError, KeyError):
        raise ConfigError(f"--range {name}={spec}: bad bounds or scaling "
                          f"(scaling: {', '.join(SCALING)})") from None
    if not low < high:
        raise ConfigError(f"--range {name}={spec}: LOW must be below HIGH")
    if scaling == "Logarithmic" and low <= 0:
        raise ConfigError(f"--range {name}={spec}: a log scale needs LOW > 0")
    return KINDS[kind], [low, high, scaling]


def ranges_from(args: argparse.Namespace) -> dict[str, tuple[str, list]]:
    ranges = dict(DEFAULT_RANGES)
    for name, spec in settings.parse_pairs(args.ranges, "--range").items():
        parsed = parse_range(name, spec)
        if parsed is None:
            ranges.pop(name, None)
        else:
            ranges[name] = parsed
    if not ranges:
        raise ConfigError("every range is off: nothing to tune")
    return ranges


def report(sm_client, job: str, workdir: Path) -> dict:
    description = sm_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job)
    trials = tuning_report.list_trials(sm_client, job)
    return tuning_report.write(description, trials, workdir / "tuning" / job)


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Context.build(args)
    cfg = ctx.settings
    workdir = ctx.workdir
    if args.local:
        from dogbreed_scripts import local_tuning

        return local_tuning.main(ctx, None if args.resume else ranges_from(args),
                                 settings.parse_pairs(args.static, "--static"))
    session = ctx.session
    sm_client = session.client("sagemaker")
    if args.report:
        result = report(sm_client, args.report, workdir)
        ctx.save(tuning_job=args.report, **(
            {"best_hyperparameters": result["best"]} if "best" in result else {}))
        return 0

    settings.require(cfg, "role")
    static = settings.parse_pairs(args.static, "--static")
    ranges = ranges_from(args)
    clash = sorted(set(static) & set(ranges))
    if clash:
        raise ConfigError(f"{', '.join(clash)} both static and tuned: add --range NAME=off")
    definitions = settings.metric_definitions(args.metric_definitions)
    names = [d["Name"] for d in definitions]
    if args.objective not in names:
        raise ConfigError(f"objective {args.objective!r} is not a metric the training image "
                          f"logs (one of: {', '.join(names)})")
    objective_type = args.objective_type or (
        "Minimize" if args.objective.endswith("loss") else "Maximize")

    from dogbreed_scripts import sagemaker_calls

    sagemaker_calls.opt_out_of_telemetry(workdir / ".sagemaker")
    image = ctx.image_uri("train", args.image_uri)
    settings.require_image_in_registry(session, image)
    ctx.bucket()
    channels = ctx.channels(args.data)
    job = args.job_name or time.strftime("dogbreed-hpo-%y%m%d-%H%M%S", time.gmtime())
    print(f"==> tuning {image} on {cfg.train_instance_type}: {args.strategy}, "
          f"{args.max_jobs} jobs ({args.max_parallel_jobs} at a time), "
          f"objective {args.objective} ({objective_type})")
    for name, (kind, values) in ranges.items():
        print(f"    {name:<13} {kind:<11} {values}")
    job = sagemaker_calls.start_tuning_job(
        session, name=job, image_uri=image, role=cfg.role,
        instance_type=cfg.train_instance_type, instance_count=args.instance_count,
        static=static, channels=channels, output_path=cfg.s3("tuning-output"),
        metric_definitions=definitions, max_run=args.max_run, objective=args.objective,
        objective_type=objective_type, ranges=ranges, strategy=args.strategy,
        max_jobs=args.max_jobs, max_parallel_jobs=args.max_parallel_jobs,
        early_stopping=args.early_stopping, tags={"project": "dogbreed"},
        wait=not args.detach)
    ctx.save(tuning_job=job)
    print(f"==> tuning job {job}")
    if args.detach:
        print(f"detached; later: scripts/tune.py --report {job}")
        return 0
    result = report(sm_client, job, workdir)
    if "best" in result:
        ctx.save(best_hyperparameters=result["best"])
        print(f"\nwrote {result['best']}, {result['csv']}, {result.get('plot')}")
    return 0


if __name__ == "__main__":
    settings.run(main)
