#!/usr/bin/env python3
"""train: a SageMaker training job with the image's metrics, checkpoints and TensorBoard.

    scripts/train.py                               # best.json from tune.py, if any
    scripts/train.py --hp model=resnet50 --hp epochs=8 --hp lr=0.0005
    scripts/train.py --spot --max-wait 14400       # managed spot, checkpoints in S3
    scripts/train.py --detach                      # start and return
    scripts/train.py --report JOB                  # status, metrics, artifacts of a job
    scripts/train.py --local --data ~/dogImages --hp epochs=1   # no AWS account
    scripts/train.py --local --instance-count 2 --data ~/dogImages  # two containers

Hyperparameters come from --hyperparameters FILE (tune.py's best.json or a plain
JSON object), else from the last tuning report, then --hp overrides. The job gets
the image's published metric regexes, a TensorBoard output config (the image
writes /opt/ml/output/tensorboard), checkpoints in S3 with --spot (or
--checkpoint-s3-uri), tags and --env variables. At the end it prints the status,
the final metrics, and where the model, TensorBoard files and checkpoints are.

SageMaker Debugger and the SageMaker profiler are off: Debugger is closed to new
customers since 2026-07-30 and Profiler support ends 2027-06-30, so a new
account's job must not ask for them. The image writes its own rule verdicts and
TensorBoard files. --debugger / --profiler attach them for accounts that still
have them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tarfile
import time
from pathlib import Path

from dogbreed_contract.model_card import FILE as MODEL_CARD_FILE
from dogbreed_contract.model_card import ModelCard
from dogbreed_scripts import job_report, settings
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("--hyperparameters", type=Path, metavar="FILE",
                   help="best.json from tune.py, or a JSON object of hyperparameters")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE",
                   help="set one hyperparameter (overrides the file); repeatable")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--max-run", type=int, default=8 * 3600,
                   help="seconds the job may run (default: %(default)s)")
    p.add_argument("--spot", action="store_true", help="managed spot training")
    p.add_argument("--max-wait", type=int,
                   help="with --spot: seconds to wait for spot capacity plus run time "
                        "(default: twice --max-run)")
    p.add_argument("--checkpoint-s3-uri",
                   help="where /opt/ml/checkpoints is synced (default with --spot: "
                        "s3://BUCKET/PREFIX/checkpoints/JOB)")
    p.add_argument("--debugger", action="store_true",
                   help="attach the SageMaker Debugger hook and its built-in rules (off: "
                        "Debugger is closed to new customers since 2026-07-30)")
    p.add_argument("--profiler", action="store_true",
                   help="attach the SageMaker profiler and its ProfilerReport rule (off: "
                        "Profiler support ends 2027-06-30)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE",
                   help="an environment variable for the container; repeatable")
    p.add_argument("--resource-tag", action="append", metavar="KEY=VALUE",
                   help="an AWS tag on the job (besides project=dogbreed); repeatable")
    p.add_argument("--data", help="S3 prefix with train/ valid/ test/ (default: what "
                                  "data.py uploaded); with --local, a local folder")
    p.add_argument("--image-uri", help="training image URI (default: from the registry settings)")
    p.add_argument("--job-name", help="default: dogbreed-train-YYYYMMDD-HHMMSS")
    p.add_argument("--detach", action="store_true", help="start the job and return")
    p.add_argument("--report", metavar="JOB", help="only print the summary of a job "
                                                   "(waits for it to end)")
    p.add_argument("--local", action="store_true",
                   help="local containers through the SDK's ModelTrainer, no AWS account")
    p.add_argument("--quiet", action="store_true",
                   help="don't stream the training log (with --local: WORKDIR/local-jobs/JOB.log)")
    settings.add_arguments(p, ["region", "profile", "role", "bucket", "prefix", "registry",
                               "train_repository", "tag", "local_train_image",
                               "train_instance_type", "workdir"])
    return p.parse_args(argv)


def hyperparameters(ctx: Context) -> dict[str, str]:
    args = ctx.args
    path = args.hyperparameters
    if path is None and ctx.state.best_hyperparameters:
        path = Path(ctx.state.best_hyperparameters)
    hps: dict[str, str] = {}
    if path is not None:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"--hyperparameters {path}: {exc}") from None
        hps = doc.get("hyperparameters", doc) if isinstance(doc, dict) else None
        if not isinstance(hps, dict):
            raise ConfigError(f"{path} holds no JSON object of hyperparameters")
        print(f"==> hyperparameters from {path}")
    hps = {str(k): str(v) for k, v in hps.items()}
    hps.update(settings.parse_pairs(args.hp, "--hp"))
    return hps


def summary(description: dict) -> str:
    """Status, rules, final metrics and artifact locations of a training job."""
    name = description["TrainingJobName"]
    lines = [f"training job {name}: {description['TrainingJobStatus']}"
             f" ({description.get('SecondaryStatus', '')})"]
    if description.get("FailureReason"):
        lines.append(f"  failure: {description['FailureReason']}")
    rules = (description.get("DebugRuleEvaluationStatuses") or []) + \
        (description.get("ProfilerRuleEvaluationStatuses") or [])
    if rules:
        lines.append("  rules:")
        for r in rules:
            detail = f" - {r['StatusDetails']}" if r.get("StatusDetails") else ""
            lines.append(f"    {r['RuleConfigurationName']:<28} "
                         f"{r.get('RuleEvaluationStatus', '?')}{detail}")
        if any(r.get("RuleEvaluationStatus") == "InProgress" for r in rules):
            lines.append(f"    (rules run on after the job; later: scripts/train.py "
                         f"--report {name})")
    metrics = description.get("FinalMetricDataList") or []
    if metrics:
        lines.append("  final metrics:")
        lines += [f"    {m['MetricName']:<16} {m['Value']:.4f}" for m in metrics]
    model = description.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model:
        lines.append(f"  model:            {model}")
    out = description.get("OutputDataConfig", {}).get("S3OutputPath", "").rstrip("/")
    profiler = [r["RuleConfigurationName"] for r in
                description.get("ProfilerRuleEvaluationStatuses") or []
                if r["RuleConfigurationName"].startswith("ProfilerReport")]
    if profiler and out:
        lines.append(f"  profiler report:  {out}/{name}/rule-output/{profiler[0]}/"
                     "profiler-output/profiler-report.html")
    if description.get("ProfilerConfig", {}).get("S3OutputPath"):
        lines.append(f"  profiler data:    {description['ProfilerConfig']['S3OutputPath']}"
                     f"/{name}/profiler-output")
    if description.get("DebugHookConfig", {}).get("S3OutputPath"):
        lines.append(f"  debugger tensors: {description['DebugHookConfig']['S3OutputPath']}"
                     f"/{name}/debug-output")
    if description.get("TensorBoardOutputConfig", {}).get("S3OutputPath"):
        lines.append(f"  tensorboard:      {description['TensorBoardOutputConfig']['S3OutputPath']}")
    if description.get("CheckpointConfig", {}).get("S3Uri"):
        lines.append(f"  checkpoints:      {description['CheckpointConfig']['S3Uri']}")
    if description.get("EnableManagedSpotTraining"):
        lines.append(f"  spot: billable {description.get('BillableTimeInSeconds', '?')} s "
                     f"of {description.get('TrainingTimeInSeconds', '?')} s")
    return "\n".join(lines)


def train_local(ctx: Context) -> int:
    args, cfg = ctx.args, ctx.settings
    from dogbreed_scripts import data as data_step
    from dogbreed_scripts import sagemaker_calls

    if not args.data:
        raise ConfigError("--local needs --data DIR (a folder with train/ valid/ test/)")
    root = data_step.find_root(Path(args.data).expanduser().resolve())
    layout = data_step.check_layout(root)
    workdir = Path(cfg.workdir).resolve()
    sagemaker_calls.opt_out_of_telemetry(workdir / ".sagemaker")
    hps = hyperparameters(ctx)
    image = cfg.local_train_image
    job = args.job_name or time.strftime("dogbreed-train-%Y%m%d-%H%M%S", time.gmtime())
    jobdir = workdir / "local-jobs" / job
    print(f"==> local training job {job} with {image} on {args.instance_count} "
          f"container(s), hyperparameters {json.dumps(hps)}", flush=True)
    try:
        tarball = sagemaker_calls.train_locally(
            image, {s: root / s for s in layout.files}, hps, jobdir, args.instance_count,
            log=jobdir.parent / f"{job}.log" if args.quiet else None)
    finally:
        sagemaker_calls.remove_leftovers(jobdir)
    if not tarball.is_file():
        raise ConfigError(f"the local training job left no model ({tarball}); "
                          f"see {jobdir}/output")
    with tarfile.open(tarball) as tar:
        card = ModelCard.parse(tar.extractfile(MODEL_CARD_FILE).read(), where=str(tarball))
    ctx.save(local_model=str(tarball))
    print(f"\nlocal training job done\n  model:   {tarball}")
    for key, value in sorted(card.metrics.items()):
        if isinstance(value, (int, float)):
            print(f"  {key:<14} {value:.4f}")
    job_report.show(job_report.output_archive(tarball), Path(tarball).parent / "output")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Context.build(args)
    cfg = ctx.settings
    if args.local:
        return train_local(ctx)

    session = ctx.session
    from dogbreed_scripts import sagemaker_calls

    sagemaker_calls.opt_out_of_telemetry(Path(cfg.workdir) / ".sagemaker")
    if args.report:
        description = sagemaker_calls.follow_training_job(session, args.report, logs=False)
        print(summary(description))
        return 0 if description["TrainingJobStatus"] == "Completed" else 1

    settings.require(cfg, "role")
    hps = hyperparameters(ctx)
    environment = settings.parse_pairs(args.env, "--env")
    tags = {"project": "dogbreed", **settings.parse_pairs(args.resource_tag, "--resource-tag")}
    max_wait = args.max_wait or (2 * args.max_run if args.spot else None)
    if args.spot and max_wait < args.max_run:
        raise ConfigError(f"--max-wait {max_wait} is below --max-run {args.max_run}: spot "
                          "waiting time includes the run time")
    if not args.spot and args.max_wait:
        raise ConfigError("--max-wait only applies to --spot")
    image = ctx.image_uri("train", args.image_uri)
    settings.require_image_in_registry(session, image)
    ctx.bucket()
    channels = ctx.channels(args.data)
    job = args.job_name or time.strftime("dogbreed-train-%Y%m%d-%H%M%S", time.gmtime())
    checkpoint = args.checkpoint_s3_uri or (cfg.s3("checkpoints", job) if args.spot else None)
    print(f"==> training job {job}: {image} on {args.instance_count} x "
          f"{cfg.train_instance_type}{' (spot)' if args.spot else ''}")
    print(f"    hyperparameters {json.dumps(hps)}")
    print(f"    channels {json.dumps(channels)}", flush=True)
    ctx.save(training_job=job)
    sagemaker_calls.start_training_job(
        session, name=job, image_uri=image, role=cfg.role,
        instance_type=cfg.train_instance_type, instance_count=args.instance_count,
        hyperparameters=hps, channels=channels, output_path=cfg.s3("training-output"),
        metric_definitions=settings.metric_definitions(), max_run=args.max_run,
        spot=args.spot, max_wait=max_wait, checkpoint_s3_uri=checkpoint,
        tensorboard_s3_uri=cfg.s3("tensorboard", job), environment=environment,
        tags=tags, debugger=args.debugger, profiler=args.profiler)
    if args.detach:
        print(f"detached; later: scripts/train.py --report {job}")
        return 0
    try:
        description = sagemaker_calls.follow_training_job(session, job, logs=not args.quiet)
    except Exception:
        # Say what SageMaker knows about the job, then the error: the original error
        # matters more than a failed describe.
        with contextlib.suppress(Exception):
            print(summary(sagemaker_calls.describe_training_job(session, job)))
        raise
    print("\n" + summary(description))
    model = description.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if model:
        ctx.save(model_data=model)
        job_report.show(job_report.output_archive(model), Path(cfg.workdir) / "jobs" / job,
                        session.client("s3"))
    return 0 if description["TrainingJobStatus"] == "Completed" else 1


if __name__ == "__main__":
    settings.run(main)
