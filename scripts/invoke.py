#!/usr/bin/env python3
"""invoke: send images to the endpoint as raw bytes and print the top-k labels.

    scripts/invoke.py dog.jpg                       # the endpoint deploy.py made
    scripts/invoke.py photos/ --top-k 3 --via both  # a folder, boto3 and the SDK
    scripts/invoke.py dog.jpg --local               # the local endpoint (SDK)

Each image goes as one request with its own Content-Type (image/jpeg or image/png,
from the file's bytes), and top_k as the X-Amzn-SageMaker-Custom-Attributes header.
--via boto3 uses the sagemaker-runtime client's invoke_endpoint, --via sdk the SageMaker
SDK's Predictor; a local endpoint is reached through the SDK's local mode.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import settings  # noqa: E402
from settings import ConfigError  # noqa: E402

SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--endpoint", help="endpoint name (default: the last deploy.py)")
    p.add_argument("--top-k", type=int, default=3, help="labels per image (default: 3)")
    p.add_argument("--via", choices=["boto3", "sdk", "both"],
                   help="client to send with (default: boto3; sdk with --local)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the answers here")
    p.add_argument("--local", action="store_true", help="the local endpoint of deploy.py --local")
    p.add_argument("--port", type=int, help="with --local: the endpoint's port "
                                            "(default: from the state file)")
    settings.add_arguments(p, ["region", "profile", "workdir"])
    return p.parse_args(argv)


def content_type(path: Path, body: bytes) -> str | None:
    """From the bytes (the server sniffs them too), else from the file name."""
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return SUFFIXES.get(path.suffix.lower())


def images(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    if not found:
        raise ConfigError("no .jpg/.jpeg/.png images found in " + ", ".join(map(str, paths)))
    return found


def via_boto3(runtime, endpoint: str):
    def send(body: bytes, ctype: str, top_k: int) -> dict:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType=ctype, Accept="application/json",
            CustomAttributes=f"top_k={top_k}", Body=body)
        return json.loads(response["Body"].read())
    return send


def via_sdk(predictor):
    import sagemaker_calls

    def send(body: bytes, ctype: str, top_k: int) -> dict:
        return sagemaker_calls.predict_bytes(predictor, body, ctype, top_k)
    return send


def show(path: Path, ctype: str, client: str, answer: dict) -> None:
    print(f"{path} ({ctype}, {client})")
    for rank, p in enumerate(answer.get("predictions", []), 1):
        print(f"  {rank}. {p['label']:<32} {p['probability']:.3f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = settings.resolve(args)
    files = images(args.paths)
    state = settings.load_state(cfg)
    senders = {}
    import sagemaker_calls

    if args.local:
        if args.via not in (None, "sdk"):
            raise ConfigError("--local sends through the SDK only: drop --via")
        local = state.get("local_endpoint") or {}
        port = args.port or local.get("port")
        if not port:
            raise ConfigError("no local endpoint: run scripts/deploy.py --local --detach "
                              "first, or pass --port")
        endpoint = args.endpoint or local.get("name", "local")
        sess = sagemaker_calls.local_endpoint_session(int(port))
        senders["sdk"] = via_sdk(sagemaker_calls.predictor(sess, endpoint))
    else:
        args.via = args.via or "boto3"
        endpoint = args.endpoint or state.get("endpoint")
        if not endpoint:
            raise ConfigError("no endpoint: pass --endpoint NAME or run scripts/deploy.py first")
        session = settings.boto_session(cfg)
        if args.via in ("boto3", "both"):
            senders["boto3"] = via_boto3(session.client("sagemaker-runtime"), endpoint)
        if args.via in ("sdk", "both"):
            sagemaker_calls.opt_out_of_telemetry(Path(cfg.workdir) / ".sagemaker")
            senders["sdk"] = via_sdk(sagemaker_calls.predictor(
                sagemaker_calls.aws_session(session), endpoint))

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
        args.json.write_text(json.dumps({"endpoint": endpoint, "results": results}, indent=2))
    if failed:
        print(f"{failed} request(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    settings.run(main)
