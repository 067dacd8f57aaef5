#!/usr/bin/env python3
"""cleanup: delete the endpoint, its endpoint config and its model, in that order.

Real-time, serverless and asynchronous endpoints alike; a batch transform's model
with --model.

    scripts/cleanup.py                           # what the last deploy.py made
    scripts/cleanup.py --endpoint NAME --model dogbreed-batch-20261122-120000
    scripts/cleanup.py --local                   # stop the local endpoint
    scripts/cleanup.py --remove-model shelter-a  # one model of a multi-model endpoint

A multi-model endpoint's model archives stay in S3 when the endpoint goes (its
endpoint can be made again over them); --remove-model NAME deletes one archive
(SageMaker then loads it nowhere new; an instance that holds it serves it until it
unloads it), and with --local unloads the model and removes its folder.

The endpoint goes first (it is what bills, and it holds on to its config), after
its auto-scaling registration; once SageMaker reports it gone, its endpoint config,
then the model(s) the config named. Anything already gone is reported and skipped,
so running it twice is harmless.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from dogbreed_scripts import settings
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("--endpoint", help="endpoint name (default: the last deploy.py)")
    p.add_argument("--model", action="append", default=[],
                   help="also delete this model (e.g. a batch transform's); repeatable")
    p.add_argument("--poll", type=int, default=10, help="seconds between status checks")
    p.add_argument("--local", action="store_true", help="stop the local endpoint")
    p.add_argument("--remove-model", action="append", default=[], metavar="NAME",
                   help="remove this model from the multi-model endpoint (and nothing "
                        "else); repeatable")
    settings.add_arguments(p, ["region", "profile", "workdir"])
    return p.parse_args(argv)


def gone(exc) -> bool:
    """SageMaker answers ValidationException 'Could not find ...' for missing things."""
    err = getattr(exc, "response", {}).get("Error", {})
    return err.get("Code") in ("ValidationException", "ResourceNotFound",
                               "ObjectNotFoundException") and (
        "not find" in err.get("Message", "").lower()
        or "does not exist" in err.get("Message", "").lower()
        or err.get("Code") != "ValidationException")


def attempt(what: str, call, **kwargs) -> bool:
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
    except ClientError as exc:
        if gone(exc):
            print(f"    {what}: already gone")
            return False
        raise
    print(f"    deleted {what}")
    return True


def remove_autoscaling(session, endpoint: str) -> None:
    aas = session.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/AllTraffic"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker",
                                            ResourceIds=[resource])["ScalableTargets"]
    if not targets:
        return
    for policy in aas.describe_scaling_policies(ServiceNamespace="sagemaker",
                                                ResourceId=resource)["ScalingPolicies"]:
        aas.delete_scaling_policy(PolicyName=policy["PolicyName"], ServiceNamespace="sagemaker",
                                  ResourceId=resource, ScalableDimension=dimension)
    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                   ScalableDimension=dimension)
    print(f"    removed auto-scaling of {resource}")


def wait_until_deleted(sm, endpoint: str, poll: int, timeout: float = 1800) -> None:
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"]
        except ClientError as exc:
            if gone(exc):
                return
            raise
        print(f"    endpoint {endpoint}: {status}", flush=True)
        time.sleep(poll)
    raise ConfigError(f"endpoint {endpoint} still exists after {timeout:.0f} s")


def cleanup_aws(ctx: Context) -> int:
    from botocore.exceptions import ClientError

    args = ctx.args
    endpoint = args.endpoint or ctx.state.endpoint
    models = list(args.model)
    if not endpoint and not models:
        raise ConfigError("nothing to delete: pass --endpoint NAME (or --model NAME), "
                          "or run scripts/deploy.py first")
    session = ctx.session
    sm = session.client("sagemaker")
    if endpoint:
        print(f"==> deleting endpoint {endpoint}, its endpoint config and model(s)")
        config = endpoint
        try:
            config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        except ClientError as exc:
            if not gone(exc):
                raise
        try:
            variants = sm.describe_endpoint_config(EndpointConfigName=config)[
                "ProductionVariants"]
            models = [v["ModelName"] for v in variants] + models
        except ClientError as exc:
            if not gone(exc):
                raise
            models = [endpoint] + models if endpoint not in models else models
        remove_autoscaling(session, endpoint)
        if attempt(f"endpoint {endpoint}", sm.delete_endpoint, EndpointName=endpoint):
            wait_until_deleted(sm, endpoint, args.poll)
        attempt(f"endpoint config {config}", sm.delete_endpoint_config,
                EndpointConfigName=config)
    for model in dict.fromkeys(models):
        attempt(f"model {model}", sm.delete_model, ModelName=model)
    if endpoint and endpoint == ctx.state.endpoint:
        if ctx.state.multi_model_prefix:
            print(f"    its models stay in {ctx.state.multi_model_prefix} (remove them with "
                  f"aws s3 rm {ctx.state.multi_model_prefix} --recursive)")
        ctx.save(endpoint=None, endpoint_kind=None, async_output=None, multi_model_prefix=None)
    return 0


def remove_models(ctx: Context) -> int:
    """--remove-model: archives from the multi-model prefix, or (--local) models from
    the local multi-model endpoint."""
    from dogbreed_scripts import local_endpoint

    names = [local_endpoint.model_name(n) for n in ctx.args.remove_model]
    if ctx.args.local:
        local = ctx.state.local_endpoint
        if local is None or not local.multi_model:
            raise ConfigError("no local multi-model endpoint recorded")
        for name in names:
            local_endpoint.unload_model(f"http://127.0.0.1:{local.port}", Path(local.model),
                                        name)
            print(f"    unloaded model {name} from local endpoint {local.name}")
        return 0
    prefix = ctx.state.multi_model_prefix
    if not prefix:
        raise ConfigError("no multi-model endpoint recorded: run scripts/deploy.py "
                          "--multi-model first")
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    s3 = ctx.session.client("s3")
    for name in names:
        key = f"{key_prefix.rstrip('/')}/{name}{local_endpoint.ARCHIVE_SUFFIX}".lstrip("/")
        s3.delete_object(Bucket=bucket, Key=key)
        print(f"    deleted s3://{bucket}/{key}")
    return 0


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to collect it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def cleanup_local(ctx: Context, timeout: float = 180) -> int:
    from dogbreed_scripts import local_endpoint, sagemaker_calls

    endpoint = ctx.state.local_endpoint
    pid = endpoint.pid if endpoint else None
    if pid:
        print(f"==> stopping local endpoint {endpoint.name} (pid {pid})", flush=True)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pid = None
        deadline = time.monotonic() + timeout
        while pid and alive(pid):
            if time.monotonic() > deadline:
                raise ConfigError(f"local endpoint process {pid} did not stop in {timeout} s")
            time.sleep(0.5)
    else:
        print("no local endpoint recorded; removing any local containers left behind")
    workdir = ctx.workdir.resolve()
    root = workdir / ".local-containers"
    removed = local_endpoint.remove_all(root)
    if removed:
        print(f"    removed {removed} local endpoint container(s)")
    sagemaker_calls.remove_local_containers(workdir / "local-jobs")
    ctx.save(local_endpoint=None)
    print("local endpoint stopped")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Context.build(args)
    if args.remove_model:
        return remove_models(ctx)
    return cleanup_local(ctx) if args.local else cleanup_aws(ctx)


if __name__ == "__main__":
    settings.run(main)
