#!/usr/bin/env python3
"""deploy: the serving image with a trained model, as an endpoint or a batch transform.

    scripts/deploy.py                                   # the model train.py made
    scripts/deploy.py --training-job JOB --instance-count 2 --autoscale 1:4
    scripts/deploy.py --batch-input s3://BUCKET/photos/ # batch transform, no endpoint
    scripts/deploy.py --local --detach                  # local endpoint, no AWS account

A real-time endpoint is a model, an endpoint config and an endpoint, all with the
endpoint's name (cleanup.py deletes them). --autoscale MIN:MAX adds a target-tracking
policy on invocations per instance. A batch transform job sends each image under
--batch-input to the model as one request and writes NAME.out (JSON) per image to
--batch-output. In local mode the endpoint runs in this process until Ctrl-C, or
in the background with --detach until `cleanup.py --local`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import settings  # noqa: E402
from settings import ConfigError  # noqa: E402


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
                   help="SageMaker local mode with the local image, no AWS account")
    settings.add_arguments(p, ["region", "profile", "role", "bucket", "prefix", "registry",
                               "serve_repository", "tag", "local_serve_image",
                               "serve_instance_type", "workdir"])
    return p.parse_args(argv)


def model_data(args: argparse.Namespace, cfg, sm_client=None) -> str:
    if args.model_data:
        return args.model_data
    if args.training_job and sm_client is not None:
        job = sm_client.describe_training_job(TrainingJobName=args.training_job)
        return job["ModelArtifacts"]["S3ModelArtifacts"]
    key = "local_model" if args.local else "model_data"
    found = settings.load_state(cfg).get(key)
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


# --- local mode ---------------------------------------------------------------------

def serve_local(args: argparse.Namespace, cfg) -> int:
    """Deploy to a local endpoint and keep it up until SIGINT/SIGTERM."""
    import sagemaker_calls

    logging.getLogger("sagemaker.local.utils").setLevel(logging.ERROR)
    workdir = Path(cfg.workdir).resolve()
    tarball = Path(model_data(args, cfg).removeprefix("file://")).resolve()
    if not tarball.is_file():
        raise ConfigError(f"model {tarball} does not exist")
    sagemaker_calls.opt_out_of_telemetry(workdir / ".sagemaker")
    root = workdir / ".local-containers"
    sess = sagemaker_calls.session(root)
    port = sess.config["local"]["serving_port"]

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"==> local endpoint with {cfg.local_serve_image} on port {port}", flush=True)
    predictor = sagemaker_calls.deploy(cfg.local_serve_image, str(tarball), sess)
    try:
        settings.save_state(cfg, local_endpoint={
            "name": predictor.endpoint_name, "port": port, "pid": os.getpid(),
            "model": str(tarball)})
        print(f"serving at http://127.0.0.1:{port}/invocations (endpoint "
              f"{predictor.endpoint_name}); Ctrl-C or scripts/cleanup.py --local stops it",
              flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        print("==> deleting the local endpoint", flush=True)
        predictor.delete_endpoint()
        sagemaker_calls.remove_local_containers(root)
        state = settings.load_state(cfg)
        if state.get("local_endpoint", {}).get("pid") == os.getpid():
            settings.save_state(cfg, local_endpoint=None)
        print("local endpoint deleted", flush=True)
    return 0


def serve_local_detached(argv: list[str], cfg, timeout: float = 600) -> int:
    """Run serve_local in a background process; return once it answers."""
    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "local-endpoint.log"
    child_argv = [a for a in argv if a != "--detach"]
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *child_argv],
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoint = settings.load_state(cfg).get("local_endpoint") or {}
        if endpoint.get("pid") == child.pid:
            print(f"local endpoint {endpoint['name']} serving at "
                  f"http://127.0.0.1:{endpoint['port']}/invocations (pid {child.pid}, "
                  f"log {log})\nstop it with: scripts/cleanup.py --local")
            return 0
        if child.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise ConfigError("the local endpoint did not start: " + " | ".join(tail))
        time.sleep(1)
    child.terminate()
    raise ConfigError(f"the local endpoint did not answer within {timeout:.0f} s; see {log}")


# --- AWS ----------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cfg = settings.resolve(args)
    if args.local:
        if args.batch_input:
            raise ConfigError("--batch-input runs on SageMaker; drop --local")
        return serve_local_detached(argv, cfg) if args.detach else serve_local(args, cfg)

    session = settings.boto_session(cfg)
    settings.require(cfg, "role")
    import sagemaker_calls

    sagemaker_calls.opt_out_of_telemetry(Path(cfg.workdir) / ".sagemaker")
    sm = sagemaker_calls.aws_session(session)
    data = model_data(args, cfg, session.client("sagemaker"))
    image = args.image_uri or settings.image_uri(cfg, session, "serve")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())

    if args.batch_input:
        if not cfg.bucket and not args.batch_output:
            cfg["bucket"] = sagemaker_calls.default_bucket(sm)
        job = f"dogbreed-batch-{stamp}"
        output = args.batch_output or cfg.s3("batch-output", job)
        print(f"==> batch transform {job}: {image} on {args.instance_count} x "
              f"{cfg.serve_instance_type}\n    {args.batch_input} -> {output}", flush=True)
        sagemaker_calls.batch_transform(
            sm, image, data, cfg.role, job, cfg.serve_instance_type, args.instance_count,
            args.batch_input, output, content_type=args.content_type, wait=not args.detach)
        settings.save_state(cfg, batch_job=job, batch_model=job, batch_output=output)
        done = "started" if args.detach else "done"
        print(f"batch transform {job} {done}; results: {output}/<image>.out\n"
              f"its model {job} stays until: scripts/cleanup.py --model {job}")
        return 0

    scaling = parse_autoscale(args.autoscale) if args.autoscale else None
    endpoint = args.endpoint_name or f"dogbreed-{stamp}"
    print(f"==> endpoint {endpoint}: {image} on {args.instance_count} x "
          f"{cfg.serve_instance_type}\n    model {data}", flush=True)
    settings.save_state(cfg, endpoint=endpoint)
    sagemaker_calls.deploy_endpoint(sm, image, data, cfg.role, endpoint,
                                    cfg.serve_instance_type, args.instance_count,
                                    poll=args.poll)
    if scaling:
        autoscale(session, endpoint, *scaling, args.target_invocations)
    print(f"endpoint {endpoint} is in service; it bills by the hour until "
          "scripts/cleanup.py")
    return 0


if __name__ == "__main__":
    settings.run(main)
