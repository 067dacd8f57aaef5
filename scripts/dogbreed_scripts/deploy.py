#!/usr/bin/env python3
"""deploy: the serving image with a trained model, as an endpoint or a batch transform.

    scripts/deploy.py                                   # the model train.py made
    scripts/deploy.py --training-job JOB --instance-count 2 --autoscale 1:4
    scripts/deploy.py --serverless --serverless-memory 3072 --serverless-max-concurrency 5
    scripts/deploy.py --async --async-output s3://BUCKET/async/ --async-max-concurrent 4
    scripts/deploy.py --batch-input s3://BUCKET/photos/ # batch transform, no endpoint
    scripts/deploy.py --local --detach                  # local endpoint, no AWS account
    scripts/deploy.py --multi-model --add-model shelter-a --training-job JOB_A
    scripts/deploy.py --add-model shelter-b=s3://BUCKET/PATH/model.tar.gz  # one more
    scripts/deploy.py --local --multi-model --add-model a=A.tar.gz --add-model b=B.tar.gz

An endpoint is a model, an endpoint config and an endpoint, all with the
endpoint's name (cleanup.py deletes them): real-time on instances (--autoscale
MIN:MAX adds a target-tracking policy on invocations per instance), serverless
(memory and maximum concurrency; CPU only), or asynchronous (requests and answers
in S3). A batch transform job sends each image under --batch-input to the model as
one request and writes NAME.out (JSON) per image to --batch-output. The local
endpoint is the serving image in a Docker container (Docker SDK) on a free
loopback port: in this process until Ctrl-C, or in the background with --detach
until `cleanup.py --local`.

A multi-model endpoint (--multi-model; CPU instances only) serves many models from
one S3 prefix of NAME.tar.gz archives: --add-model NAME[=MODEL] copies a training
job's model.tar.gz there (MODEL, else --model-data/--training-job, else the last
train.py run), now or later (without --multi-model: to the last multi-model endpoint).
SageMaker loads a model on its first invocation (invoke.py --target-model NAME) and
unloads the least used ones when memory runs short. With --local the models are
unpacked into a folder the container serves and loaded at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from dogbreed_scripts import settings
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError
from dogbreed_scripts.state import LocalEndpoint


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("--model-data", help="model.tar.gz (S3 URI; a local path with --local); "
                                        "default: the last train.py run")
    p.add_argument("--training-job", help="take the model of this training job")
    p.add_argument("--image-uri", help="serving image URI (default: from the registry settings)")
    p.add_argument("--endpoint-name", help="default: dogbreed-YYYYMMDD-HHMMSS")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--autoscale", metavar="MIN:MAX",
                   help="register the endpoint with Application Auto Scaling")
    p.add_argument("--target-invocations", type=float, default=100.0,
                   help="with --autoscale: invocations per instance per minute to hold "
                        "(default: %(default)s)")
    p.add_argument("--serverless", action="store_true",
                   help="a serverless endpoint (no instances; CPU only)")
    p.add_argument("--serverless-memory", type=int, default=3072, metavar="MB",
                   help="with --serverless: 1024-6144 in steps of 1024 (default: %(default)s)")
    p.add_argument("--serverless-max-concurrency", type=int, default=5, metavar="N",
                   help="with --serverless: 1-200 (default: %(default)s)")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="an asynchronous endpoint: requests and answers go through S3")
    p.add_argument("--async-output", metavar="S3URI",
                   help="with --async: where the answers are written (required)")
    p.add_argument("--async-max-concurrent", type=int, metavar="N",
                   help="with --async: concurrent requests per instance")
    p.add_argument("--startup-timeout", type=int, default=600, metavar="SECONDS",
                   help="container start-up health-check timeout (60-3600; default: "
                        "%(default)s)")
    p.add_argument("--batch-input", metavar="S3URI",
                   help="run a batch transform job over this S3 folder of images instead")
    p.add_argument("--batch-output", metavar="S3URI",
                   help="default: s3://BUCKET/PREFIX/batch-output/JOB")
    p.add_argument("--content-type", default="image/jpeg",
                   help="batch transform content type (the server reads PNG too)")
    p.add_argument("--detach", action="store_true",
                   help="don't wait for the batch job; with --local, serve in the background")
    p.add_argument("--poll", type=int, default=30, help="seconds between status checks")
    p.add_argument("--local", action="store_true",
                   help="the local serving image in a local container, no AWS account")
    p.add_argument("--multi-model", action="store_true",
                   help="a multi-model endpoint: many models behind one endpoint, "
                        "loaded on demand (CPU instances only)")
    p.add_argument("--add-model", action="append", default=[], metavar="NAME[=MODEL]",
                   help="add a model.tar.gz to the multi-model endpoint as NAME (MODEL: "
                        "S3 URI, or a local path; default: --model-data/--training-job/"
                        "the last train.py); repeatable")
    p.add_argument("--model-prefix", metavar="S3URI",
                   help="with --multi-model: the S3 prefix of its models (default: "
                        "s3://BUCKET/PREFIX/multi-model/ENDPOINT/)")
    settings.add_arguments(p, ["region", "profile", "role", "bucket", "prefix", "registry",
                               "serve_repository", "tag", "local_serve_image",
                               "serve_instance_type", "workdir"])
    return p.parse_args(argv)


def model_data(ctx: Context, sm_client=None) -> str:
    args = ctx.args
    if args.model_data:
        return args.model_data
    if args.training_job and sm_client is not None:
        job = sm_client.describe_training_job(TrainingJobName=args.training_job)
        return job["ModelArtifacts"]["S3ModelArtifacts"]
    found = ctx.state.local_model if args.local else ctx.state.model_data
    if not found:
        raise ConfigError("no model given: pass --model-data (or --training-job), or run "
                          f"scripts/train.py{' --local' if args.local else ''} first")
    return found


def parse_autoscale(spec: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ConfigError(f"--autoscale {spec}: expected MIN:MAX, e.g. 1:4") from None
    if not 1 <= low <= high:
        raise ConfigError(f"--autoscale {spec}: need 1 <= MIN <= MAX")
    return low, high


def autoscale(session, endpoint: str, low: int, high: int, target: float) -> None:
    """A target-tracking policy on invocations per instance for the AllTraffic variant."""
    aas = session.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/AllTraffic"
    aas.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=low, MaxCapacity=high)
    aas.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations", ServiceNamespace="sagemaker",
        ResourceId=resource, ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": target,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60})
    print(f"    auto-scaling {low} to {high} instances at {target:g} invocations "
          "per instance per minute")


GPU_FAMILIES = ("ml.g", "ml.p", "ml.inf", "ml.trn")


def check_options(args: argparse.Namespace, cfg) -> None:
    """Combinations SageMaker would reject, refused before any call."""
    if args.serverless and args.async_:
        raise ConfigError("--serverless and --async are different endpoint kinds: pick one")
    if args.batch_input and (args.serverless or args.async_):
        raise ConfigError("--batch-input makes a transform job, not an endpoint: drop "
                          "--serverless/--async")
    if args.serverless:
        if "serve_instance_type" in cfg.given and \
                cfg.serve_instance_type.startswith(GPU_FAMILIES):
            raise ConfigError(f"serverless endpoints run on CPU only: drop the GPU instance "
                              f"type {cfg.serve_instance_type}")
        if args.serverless_memory not in range(1024, 6145, 1024):
            raise ConfigError(f"--serverless-memory {args.serverless_memory}: one of 1024, "
                              "2048, 3072, 4096, 5120, 6144")
        if not 1 <= args.serverless_max_concurrency <= 200:
            raise ConfigError("--serverless-max-concurrency must be 1-200")
        if args.autoscale or args.instance_count != 1:
            raise ConfigError("serverless endpoints scale by themselves: drop --autoscale "
                              "and --instance-count")
    if args.async_ and not args.async_output:
        raise ConfigError("--async needs --async-output s3://BUCKET/PREFIX/ (where the "
                          "answers go)")
    if args.async_output and not args.async_:
        raise ConfigError("--async-output only applies to --async")
    for uri, flag_ in ((args.async_output, "--async-output"), (args.batch_input, "--batch-input"),
                       (args.batch_output, "--batch-output")):
        if uri and not uri.startswith("s3://"):
            raise ConfigError(f"{flag_} {uri}: expected an s3:// URI")
    if not 60 <= args.startup_timeout <= 3600:
        raise ConfigError("--startup-timeout must be 60-3600 seconds")
    if args.multi_model:
        if args.serverless or args.async_ or args.batch_input:
            raise ConfigError("--multi-model makes a real-time endpoint: drop "
                              "--serverless/--async/--batch-input")
        if cfg.serve_instance_type.startswith(GPU_FAMILIES) and not args.local:
            raise ConfigError(f"multi-model endpoints with a custom container run on CPU "
                              f"instances only: {cfg.serve_instance_type} is a GPU type")
    if args.model_prefix and not (args.model_prefix.startswith("s3://") and not args.local):
        raise ConfigError(f"--model-prefix {args.model_prefix}: expected an s3:// URI "
                          "(a multi-model endpoint on SageMaker)")
    added = added_models(args)
    if added and (args.serverless or args.async_ or args.batch_input):
        raise ConfigError("--add-model adds to a multi-model endpoint: drop "
                          "--serverless/--async/--batch-input")


def added_models(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """--add-model NAME[=MODEL], checked: (name, model.tar.gz or None for the default)."""
    from dogbreed_scripts.local_endpoint import MODEL_NAME, model_name

    added: dict[str, str | None] = {}
    for spec in args.add_model:
        name, _, source = spec.partition("=")
        name = model_name(name.strip())
        if not MODEL_NAME.match(name):
            raise ConfigError(f"--add-model {spec}: NAME must be 1-200 letters, digits, "
                              "'.', '_' or '-', starting with a letter or digit")
        if name in added:
            raise ConfigError(f"--add-model {name} is given twice")
        added[name] = source.strip() or None
    return list(added.items())


# --- local mode ---------------------------------------------------------------------

def local_tarball(ctx: Context, source: str | None) -> Path:
    tarball = Path((source or model_data(ctx)).removeprefix("file://")).resolve()
    if not tarball.is_file():
        raise ConfigError(f"model {tarball} does not exist")
    return tarball


def serve_local(ctx: Context) -> int:
    """Start a local endpoint and keep it up until SIGINT/SIGTERM (settings.run turns
    SIGTERM into KeyboardInterrupt)."""
    args, cfg = ctx.args, ctx.settings
    from dogbreed_scripts import local_endpoint

    workdir = Path(cfg.workdir).resolve()
    added = [(name, local_tarball(ctx, source)) for name, source in added_models(args)]
    tarball = None if args.multi_model else local_tarball(ctx, None)

    name = args.endpoint_name or time.strftime("dogbreed-local-%Y%m%d-%H%M%S", time.gmtime())
    kind = "multi-model endpoint" if args.multi_model else "endpoint"
    print(f"==> local {kind} {name} with {cfg.local_serve_image}", flush=True)
    root = workdir / ".local-containers"
    if tarball is None:
        endpoint = local_endpoint.start_multi_model(cfg.local_serve_image, root, name,
                                                    timeout=args.startup_timeout)
        recorded = LocalEndpoint(name=name, port=endpoint.port, pid=os.getpid(),
                                 model=str(endpoint.models), multi_model=True)
        where = f"{endpoint.url}/models/NAME/invoke"
    else:
        endpoint = local_endpoint.start(cfg.local_serve_image, tarball, root, name,
                                        timeout=args.startup_timeout)
        recorded = LocalEndpoint(name=name, port=endpoint.port, pid=os.getpid(),
                                 model=str(tarball))
        where = f"{endpoint.url}/invocations"
    try:
        for model, path in added:
            load_local(endpoint.url, endpoint.models, model, path)
        ctx.save(local_endpoint=recorded)
        print(f"serving at {where} (endpoint {name}); Ctrl-C or "
              "scripts/cleanup.py --local stops it", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        print("==> deleting the local endpoint", flush=True)
        endpoint.stop()
        recorded = ctx.reload().local_endpoint
        if recorded is not None and recorded.pid == os.getpid():
            ctx.save(local_endpoint=None)
        print("local endpoint deleted", flush=True)
    return 0


def load_local(url: str, models: Path, name: str, tarball: Path) -> None:
    from dogbreed_scripts import local_endpoint

    answer = local_endpoint.load_model(url, models, name, tarball)
    print(f"    {answer['message']}; invoke it with: scripts/invoke.py IMAGE --local "
          f"--target-model {name}", flush=True)


def add_local(ctx: Context) -> int:
    """--local --add-model without --multi-model: load into the running local
    multi-model endpoint."""
    endpoint = ctx.state.local_endpoint
    if endpoint is None or not endpoint.multi_model:
        raise ConfigError("no local multi-model endpoint: run scripts/deploy.py --local "
                          "--multi-model --detach first")
    added = [(name, local_tarball(ctx, source)) for name, source in added_models(ctx.args)]
    print(f"==> adding {len(added)} model(s) to local endpoint {endpoint.name}", flush=True)
    for name, tarball in added:
        load_local(f"http://127.0.0.1:{endpoint.port}", Path(endpoint.model), name, tarball)
    return 0


def serve_local_detached(argv: list[str], ctx: Context, timeout: float = 600) -> int:
    """Run serve_local in a background process; return once it answers."""
    workdir = ctx.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "local-endpoint.log"
    child_argv = [a for a in argv if a != "--detach"]
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "dogbreed_scripts.deploy", *child_argv],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            endpoint = ctx.reload().local_endpoint
            if endpoint is not None and endpoint.pid == child.pid:
                path = "/models/NAME/invoke" if endpoint.multi_model else "/invocations"
                print(f"local endpoint {endpoint.name} serving at "
                      f"http://127.0.0.1:{endpoint.port}{path} (pid {child.pid}, "
                      f"log {log})\nstop it with: scripts/cleanup.py --local")
                return 0
            if child.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise ConfigError("the local endpoint did not start: " + " | ".join(tail))
            time.sleep(1)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before it answered: it stops, too
        child.terminate()  # its own SIGTERM handling removes the container
        raise
    child.terminate()
    raise ConfigError(f"the local endpoint did not answer within {timeout:.0f} s; see {log}")


# --- AWS ----------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ctx = Context.build(args)
    cfg = ctx.settings
    check_options(args, cfg)
    if args.local:
        if args.batch_input or args.serverless or args.async_:
            raise ConfigError("--batch-input, --serverless and --async run on SageMaker; "
                              "drop --local")
        if args.add_model and not args.multi_model:
            return add_local(ctx)
        return serve_local_detached(argv, ctx) if args.detach else serve_local(ctx)
    if args.add_model and not args.multi_model:
        return add_models(ctx, ctx.args.model_prefix or ctx.state.multi_model_prefix)

    session = ctx.session
    settings.require(cfg, "role")
    scaling = parse_autoscale(args.autoscale) if args.autoscale else None
    image = ctx.image_uri("serve", args.image_uri)
    from dogbreed_scripts import sagemaker_calls

    sagemaker_calls.opt_out_of_telemetry(Path(cfg.workdir) / ".sagemaker")
    settings.require_image_in_registry(session, image)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    tags = {"project": "dogbreed"}
    if args.multi_model:
        return deploy_multi_model(ctx, image, args.endpoint_name or f"dogbreed-{stamp}",
                                  scaling, tags)
    data = model_data(ctx, session.client("sagemaker"))

    if args.batch_input:
        if not args.batch_output:
            ctx.bucket()
        job = f"dogbreed-batch-{stamp}"
        output = args.batch_output or cfg.s3("batch-output", job)
        print(f"==> batch transform {job}: {image} on {args.instance_count} x "
              f"{cfg.serve_instance_type}\n    {args.batch_input} -> {output}", flush=True)
        sagemaker_calls.create_model(session, job, image, data, cfg.role, tags=tags)
        ctx.save(batch_job=job, batch_model=job, batch_output=output)
        sagemaker_calls.start_batch_transform(
            session, job, job, instance_type=cfg.serve_instance_type,
            instance_count=args.instance_count, input_s3=args.batch_input, output_s3=output,
            content_type=args.content_type, wait=not args.detach, poll=args.poll)
        done = "started" if args.detach else "done"
        print(f"batch transform {job} {done}; results: {output}/<image>.out\n"
              f"its model {job} stays until: scripts/cleanup.py --model {job}")
        return 0

    endpoint = args.endpoint_name or f"dogbreed-{stamp}"
    kind = "serverless" if args.serverless else "async" if args.async_ else "real-time"
    where = (f"serverless, {args.serverless_memory} MB, at most "
             f"{args.serverless_max_concurrency} at a time" if args.serverless else
             f"{args.instance_count} x {cfg.serve_instance_type}")
    print(f"==> {kind} endpoint {endpoint}: {image} ({where})\n    model {data}", flush=True)
    ctx.save(endpoint=endpoint, endpoint_kind=kind, async_output=args.async_output)
    sagemaker_calls.create_model(session, endpoint, image, data, cfg.role, tags=tags)
    sagemaker_calls.create_endpoint(
        session, endpoint, endpoint,
        instance_type=None if args.serverless else cfg.serve_instance_type,
        instance_count=args.instance_count,
        serverless=(args.serverless_memory, args.serverless_max_concurrency)
        if args.serverless else None,
        async_output=args.async_output, async_max_concurrent=args.async_max_concurrent,
        startup_timeout=None if args.serverless else args.startup_timeout, tags=tags,
        poll=args.poll)
    if scaling:
        autoscale(session, endpoint, *scaling, args.target_invocations)
    print(f"endpoint {endpoint} is in service; it bills until scripts/cleanup.py")
    return 0


# --- multi-model endpoints -------------------------------------------------------------

def deploy_multi_model(ctx: Context, image: str, endpoint: str,
                       scaling: tuple[int, int] | None, tags: dict[str, str]) -> int:
    """A MultiModel model over an S3 prefix, its endpoint config and endpoint; the
    --add-model archives are copied to the prefix first."""
    from dogbreed_scripts import sagemaker_calls

    args, cfg, session = ctx.args, ctx.settings, ctx.session
    if not args.model_prefix:
        ctx.bucket()
    prefix = (args.model_prefix or cfg.s3("multi-model", endpoint)).rstrip("/") + "/"
    print(f"==> multi-model endpoint {endpoint}: {image} ({args.instance_count} x "
          f"{cfg.serve_instance_type})\n    models under {prefix}", flush=True)
    add_models(ctx, prefix)
    ctx.save(endpoint=endpoint, endpoint_kind="multi-model", multi_model_prefix=prefix,
             async_output=None)
    sagemaker_calls.create_model(session, endpoint, image, prefix, cfg.role, tags=tags,
                                 multi_model=True)
    sagemaker_calls.create_endpoint(
        session, endpoint, endpoint, instance_type=cfg.serve_instance_type,
        instance_count=args.instance_count, startup_timeout=args.startup_timeout, tags=tags,
        poll=args.poll)
    if scaling:
        autoscale(session, endpoint, *scaling, args.target_invocations)
    print(f"endpoint {endpoint} is in service; it bills until scripts/cleanup.py\n"
          "invoke a model with: scripts/invoke.py IMAGE --target-model NAME; add one "
          "with: scripts/deploy.py --add-model NAME=MODEL")
    return 0


def add_models(ctx: Context, prefix: str | None) -> int:
    """Copy each --add-model archive to PREFIX/NAME.tar.gz (a local file is uploaded).
    SageMaker loads it on its first invocation with TargetModel NAME.tar.gz."""
    from dogbreed_scripts.local_endpoint import ARCHIVE_SUFFIX

    if not prefix:
        raise ConfigError("no multi-model endpoint to add to: run scripts/deploy.py "
                          "--multi-model first, or pass --model-prefix s3://...")
    added = added_models(ctx.args)
    s3 = ctx.session.client("s3")
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    for name, source in added:
        source = source or model_data(ctx, ctx.session.client("sagemaker"))
        key = f"{key_prefix.rstrip('/')}/{name}{ARCHIVE_SUFFIX}".lstrip("/")
        if source.startswith("s3://"):
            src_bucket, _, src_key = source.removeprefix("s3://").partition("/")
            s3.copy({"Bucket": src_bucket, "Key": src_key}, bucket, key)
        else:
            path = Path(source.removeprefix("file://"))
            if not path.is_file():
                raise ConfigError(f"--add-model {name}: {path} does not exist")
            s3.upload_file(str(path), bucket, key)
        print(f"    model {name}: {source} -> s3://{bucket}/{key}", flush=True)
    return 0


if __name__ == "__main__":
    settings.run(main)
