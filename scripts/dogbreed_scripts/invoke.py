#!/usr/bin/env python3
"""invoke: send images to the endpoint as raw bytes and print the top-k labels.

    scripts/invoke.py dog.jpg                       # the endpoint deploy.py made
    scripts/invoke.py photos/ --top-k 3 --via both  # a folder, boto3 and the SDK
    scripts/invoke.py dog.jpg --endpoint NAME --async   # an asynchronous endpoint
    scripts/invoke.py dog.jpg --local               # the local endpoint (HTTP)
    scripts/invoke.py dog.jpg --target-model shelter-a  # one model of a multi-model endpoint

Each image goes as one request with its own Content-Type (image/jpeg or image/png,
from the file's bytes), and top_k as the X-Amzn-SageMaker-Custom-Attributes header.
--via boto3 uses the sagemaker-runtime client's invoke_endpoint, --via sdk SDK v3's
Endpoint.invoke. An asynchronous endpoint (deploy.py --async) gets each image
uploaded to S3, then invoke_endpoint_async, then the answer read from S3 once it
is there. The local endpoint is reached over HTTP, as SageMaker reaches it.

A multi-model endpoint (deploy.py --multi-model) answers with the model named by
--target-model NAME: InvokeEndpoint's TargetModel NAME.tar.gz, the archive
deploy.py --add-model put under the endpoint's prefix (locally, POST
/models/NAME/invoke).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dogbreed_contract import media
from dogbreed_scripts import settings
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--endpoint", help="endpoint name (default: the last deploy.py)")
    p.add_argument("--top-k", type=int, default=3, help="labels per image (default: 3)")
    p.add_argument("--via", choices=["boto3", "sdk", "both"],
                   help="client to send with (default: boto3; sdk with --local)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the answers here")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="an asynchronous endpoint (default: when deploy.py made one)")
    p.add_argument("--async-input", metavar="S3URI",
                   help="with --async: where the images are uploaded (default: "
                        "s3://BUCKET/PREFIX/async-input)")
    p.add_argument("--wait", type=float, default=900, metavar="SECONDS",
                   help="with --async: how long to wait for each answer (default: %(default)s)")
    p.add_argument("--target-model", metavar="NAME",
                   help="the model of a multi-model endpoint to ask (deploy.py --add-model "
                        "NAME)")
    p.add_argument("--local", action="store_true", help="the local endpoint of deploy.py --local")
    p.add_argument("--port", type=int, help="with --local: the endpoint's port "
                                            "(default: from the state file)")
    settings.add_arguments(p, ["region", "profile", "bucket", "prefix", "workdir"])
    return p.parse_args(argv)


def content_type(path: Path, body: bytes) -> str | None:
    """From the bytes (the server sniffs them too), else from the file name."""
    return media.content_type_for(path, body)


def images(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if media.is_image_file(p))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    if not found:
        raise ConfigError("no .jpg/.jpeg/.png images found in " + ", ".join(map(str, paths)))
    return found


def via_boto3(runtime, endpoint: str, target_model: str | None = None):
    extra = {"TargetModel": target_model} if target_model else {}

    def send(body: bytes, ctype: str, top_k: int) -> dict:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType=ctype, Accept="application/json",
            CustomAttributes=f"top_k={top_k}", Body=body, **extra)
        return json.loads(response["Body"].read())
    return send


def via_sdk(session, endpoint: str, target_model: str | None = None):
    from dogbreed_scripts import sagemaker_calls

    def send(body: bytes, ctype: str, top_k: int) -> dict:
        return json.loads(sagemaker_calls.invoke_bytes(session, endpoint, body, ctype, top_k,
                                                       target_model))
    return send


def via_async(session, endpoint: str, input_prefix: str, wait: float):
    """Upload, invoke_endpoint_async, then poll S3 for the answer (or its failure)."""
    from dogbreed_scripts import sagemaker_calls

    s3 = session.client("s3")
    count = [0]

    def send(body: bytes, ctype: str, top_k: int) -> dict:
        count[0] += 1
        bucket, _, prefix = input_prefix.removeprefix("s3://").partition("/")
        key = f"{prefix.strip('/')}/{time.strftime('%Y%m%d-%H%M%S')}-{count[0]}".lstrip("/")
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=ctype)
        output = sagemaker_calls.invoke_async(session, endpoint, f"s3://{bucket}/{key}",
                                              ctype, top_k)
        out_bucket, _, out_key = output.removeprefix("s3://").partition("/")
        deadline = time.monotonic() + wait
        while True:
            try:
                return json.loads(s3.get_object(Bucket=out_bucket, Key=out_key)["Body"].read())
            except s3.exceptions.NoSuchKey:
                if time.monotonic() > deadline:
                    raise ConfigError(f"no answer at {output} after {wait:.0f} s") from None
                time.sleep(2)
    return send


def via_http(url: str, target_model: str | None = None):
    from dogbreed_scripts import local_endpoint

    def send(body: bytes, ctype: str, top_k: int) -> dict:
        answer = local_endpoint.invoke(url, body, ctype, top_k, target_model=target_model)
        if answer.status_code != 200:
            raise ConfigError(f"HTTP {answer.status_code}: {answer.text[:300]}")
        return answer.json()
    return send


def target_model(args: argparse.Namespace, multi_model: bool) -> str | None:
    """TargetModel (NAME.tar.gz) for a multi-model endpoint; None for any other."""
    from dogbreed_scripts.local_endpoint import ARCHIVE_SUFFIX, MODEL_NAME, model_name

    if not args.target_model:
        if multi_model:
            raise ConfigError("a multi-model endpoint answers with one of its models: pass "
                              "--target-model NAME (a name deploy.py --add-model gave)")
        return None
    if args.async_:
        raise ConfigError("--target-model asks a multi-model endpoint, which is a "
                          "real-time one: drop --async")
    name = model_name(args.target_model)
    if not MODEL_NAME.match(name):
        raise ConfigError(f"--target-model {args.target_model}: not a model name "
                          "deploy.py --add-model accepts")
    return name + ARCHIVE_SUFFIX


def show(path: Path, ctype: str, client: str, answer: dict) -> None:
    print(f"{path} ({ctype}, {client})")
    for rank, p in enumerate(answer.get("predictions", []), 1):
        print(f"  {rank}. {p['label']:<32} {p['probability']:.3f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Context.build(args)
    cfg, state = ctx.settings, ctx.state
    files = images(args.paths)
    senders = {}
    if args.local:
        if args.via is not None or args.async_:
            raise ConfigError("--local sends over HTTP only: drop --via / --async")
        local = state.local_endpoint
        port = args.port or (local.port if local else None)
        if not port:
            raise ConfigError("no local endpoint: run scripts/deploy.py --local --detach "
                              "first, or pass --port")
        endpoint = args.endpoint or (local.name if local else "local")
        target = target_model(args, bool(local and local.multi_model and not args.port))
        senders["http"] = via_http(f"http://127.0.0.1:{int(port)}", target)
    else:
        endpoint = args.endpoint or state.endpoint
        if not endpoint:
            raise ConfigError("no endpoint: pass --endpoint NAME or run scripts/deploy.py first")
        is_async = args.async_ or (not args.endpoint and state.endpoint_kind == "async")
        if is_async and args.via:
            raise ConfigError("--async sends through S3: drop --via")
        target = target_model(args, not args.endpoint and state.endpoint_kind == "multi-model")
        session = ctx.session
        if is_async:
            if not args.async_input:
                ctx.bucket()
            prefix = args.async_input or cfg.s3("async-input")
            if not prefix.startswith("s3://"):
                raise ConfigError(f"--async-input {prefix}: expected an s3:// URI")
            senders["async"] = via_async(session, endpoint, prefix, args.wait)
        args.via = args.via or "boto3"
        if not is_async and args.via in ("boto3", "both"):
            senders["boto3"] = via_boto3(session.client("sagemaker-runtime"), endpoint, target)
        if not is_async and args.via in ("sdk", "both"):
            from dogbreed_scripts import sagemaker_calls

            sagemaker_calls.opt_out_of_telemetry(Path(cfg.workdir) / ".sagemaker")
            senders["sdk"] = via_sdk(session, endpoint, target)

    results, failed = [], 0
    for path in files:
        body = path.read_bytes()
        ctype = content_type(path, body)
        if ctype is None:
            print(f"{path}: not a JPEG or PNG, skipped", file=sys.stderr)
            failed += 1
            continue
        for client, send in senders.items():
            try:
                answer = send(body, ctype, args.top_k)
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the rest
                message = settings.describe_error(exc) or f"{type(exc).__name__}: {exc}"
                print(f"{path} ({ctype}, {client}): error: {message}", file=sys.stderr)
                failed += 1
                continue
            show(path, ctype, client, answer)
            results.append({"image": str(path), "content_type": ctype, "client": client,
                            "bytes": len(body), "predictions": answer.get("predictions")})
    if args.json:
        args.json.write_text(json.dumps({"endpoint": endpoint, "target_model": target,
                                         "results": results}, indent=2))
    if failed:
        print(f"{failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    settings.run(main)
