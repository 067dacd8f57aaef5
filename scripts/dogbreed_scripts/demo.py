#!/usr/bin/env python3
"""The local demo: prepare data, train, deploy, classify real photos, summarize.

Everything runs on this machine with the project's two images and no AWS account:
training through SDK v3's ModelTrainer in local-container mode, serving in a
local container (Docker SDK) that gets the photos as raw bytes over HTTP. The data is Fashion-MNIST
(real photos of clothing that Debian ships), so nothing is downloaded on Debian.

    make demo                     # or: .venv/bin/python scripts/demo.py --help
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dogbreed_contract.model_card import FILE as MODEL_CARD_FILE
from dogbreed_contract.model_card import ModelCard
from dogbreed_scripts import demodata, job_report, local_endpoint, sagemaker_calls

ROOT = Path(__file__).resolve().parents[2]  # the repository (an editable install)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train, serve and query the classifier locally on Fashion-MNIST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "demo-output",
                   help="folder for the data, the model and the summary")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--valid-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=30)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--invoke", type=int, default=20,
                   help="test photos sent to the endpoint as raw bytes")
    p.add_argument("--train-image", default="dogbreed-train:latest")
    p.add_argument("--serve-image", default="dogbreed-serve:latest")
    p.add_argument("--quiet", action="store_true",
                   help="write the training log to OUT/training.log instead of the terminal")
    return p.parse_args(argv)


def step(n: int, text: str) -> None:
    print(f"\n==> [{n}/5] {text}", flush=True)


def as_jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    start = time.monotonic()
    sagemaker_calls.opt_out_of_telemetry(out / ".sagemaker")

    step(1, "preparing Fashion-MNIST in the dog dataset's layout")
    data = demodata.prepare(out / "data", {"train": args.train_per_class,
                                           "valid": args.valid_per_class,
                                           "test": args.test_per_class},
                            cache=out / ".download", progress=tqdm)
    counts = {s: sum(1 for _ in (data / s).rglob("*.png")) for s in ("train", "valid", "test")}
    print(f"    {counts['train']} train / {counts['valid']} valid / {counts['test']} test "
          f"images in {len(demodata.CLASSES)} classes under {data}")

    step(2, f"training {args.train_image} through SDK v3's ModelTrainer (local containers)")
    hyperparameters = {"model": "resnet18", "pretrained": False, "epochs": args.epochs,
                       "batch-size": 32, "test-batch-size": 128,
                       "image-size": args.image_size, "lr": 0.002, "workers": 1}
    job = out / "jobs" / time.strftime("dogbreed-train-%Y%m%d-%H%M%S", time.gmtime())
    try:
        tarball = sagemaker_calls.train_locally(
            args.train_image, {s: data / s for s in counts}, hyperparameters, job,
            log=out / "training.log" if args.quiet else None)
    finally:
        sagemaker_calls.remove_leftovers(job)
    with tarfile.open(tarball) as tar:
        card = ModelCard.parse(tar.extractfile(MODEL_CARD_FILE).read(), where=str(tarball))
    metrics = card.metrics
    print(f"    model: {tarball}")
    print(f"    validation accuracy {metrics['valid_acc']:.3f}, "
          f"test accuracy {metrics['test_acc']:.3f}")
    job_report.show(job_report.output_archive(tarball), out / "job-output")

    step(3, f"deploying {args.serve_image} to a local endpoint")
    endpoint = local_endpoint.start(args.serve_image, tarball, out / ".containers",
                                    f"dogbreed-demo-{time.strftime('%H%M%S')}")
    try:
        step(4, f"classifying {args.invoke} test photos sent as raw image bytes")
        photos = sorted((data / "test").rglob("*.png"))
        photos = photos[:: max(1, len(photos) // args.invoke)][: args.invoke]
        rows, correct = [], 0
        for i, path in enumerate(tqdm(photos, desc="invoking", unit="img")):
            body, ctype = path.read_bytes(), "image/png"
            if i % 2:
                body, ctype = as_jpeg(body), "image/jpeg"
            answer = endpoint.invoke(body, ctype)
            answer.raise_for_status()
            top = answer.json()["predictions"]
            truth = demodata.label_of(path)
            correct += top[0]["label"] == truth
            rows.append({"image": str(path.relative_to(data)), "content_type": ctype,
                         "truth": truth, "predicted": top[0]["label"],
                         "probability": round(top[0]["probability"], 4)})
        width = max(len(r["truth"]) for r in rows)
        print(f"\n    {'photo':<24} {'type':<10} {'truth':<{width}}  prediction")
        for r in rows:
            mark = "ok" if r["truth"] == r["predicted"] else "  "
            print(f"    {Path(r['image']).name:<24} {r['content_type']:<10} "
                  f"{r['truth']:<{width}}  {r['predicted']} ({r['probability']:.2f}) {mark}")
    finally:
        step(5, "deleting the local endpoint and local mode's leftover containers")
        endpoint.stop()
        local_endpoint.remove_all(out / ".containers")

    summary = {"model_data": str(tarball), "valid_acc": metrics["valid_acc"],
               "test_acc": metrics["test_acc"], "endpoint_acc": correct / len(rows),
               "invocations": rows, "seconds": round(time.monotonic() - start, 1),
               "images": counts, "hyperparameters": hyperparameters}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"""
Done in {summary['seconds']:.0f} s.
  model        {tarball}
  accuracy     test {metrics['test_acc']:.3f} (training job), endpoint {summary['endpoint_acc']:.3f} on {len(rows)} photos
  summary      {out / 'summary.json'}
Next: README.md, "Going to AWS", runs the same two images on SageMaker.""")
    return 0


if __name__ == "__main__":
    from dogbreed_scripts import settings

    settings.run(main, own_errors=True)  # SIGTERM cleans up as Ctrl-C does
