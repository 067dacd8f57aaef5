"""Bare forward pass of the model: batch-1 latency and best batched throughput.

Runs inside a container (nothing here needs the host):

  ort          ONNX Runtime exactly as the server builds it: dogbreed_serve.model.Classifier
               (softmax included) with the server's worker count and threads per worker
               (dogbreed-serve image).
  eager        torchvision model, torch.inference_mode (dogbreed-train image).
  torchscript  torch.jit.trace + freeze + optimize_for_inference.
  export       torch.export.export(...).module().
  compile      torch.compile (inductor; needs a C compiler in the image).

Prints one JSON object per runtime on stdout (lines starting with "RESULT ").

With --stdin (ort only) it answers one command per line instead, so the host can
interleave single forward calls with HTTP requests to the server next to it:
  lat B        one forward of batch B           -> milliseconds
  dec          decode the --image the server's way (dogbreed_serve.decoding.decode)
               -> milliseconds
  tp B S       batch-B forwards for at least S seconds -> images/s (median call time)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dogbreed_contract.model_card import ModelCard


def server_threads() -> tuple[int, int]:
    """(workers, intra-op threads per worker) as serve and its workers pick them."""
    from dogbreed_serve.settings import Settings

    settings = Settings.from_env()
    return settings.workers, settings.threads_per_worker


def time_calls(fn, x, min_iters: int, min_seconds: float) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return times


def measure(fn, make_input, batches: list[int], latency_iters: int, seconds: float) -> dict:
    x1 = make_input(1)
    for _ in range(3):
        fn(x1)
    lat = time_calls(fn, x1, latency_iters, seconds)
    out = {"latency_ms": {"p50": 1000 * statistics.median(lat),
                          "mean": 1000 * statistics.fmean(lat),
                          "min": 1000 * min(lat), "n": len(lat)},
           "throughput": {}}
    for b in batches:
        xb = make_input(b)
        fn(xb)
        t = time_calls(fn, xb, 3, seconds)
        # median time per batch: robust to a noisy neighbour stealing one call
        out["throughput"][str(b)] = b / statistics.median(t)
    best = max(out["throughput"], key=out["throughput"].get)
    out["best_throughput"] = out["throughput"][best]
    out["best_batch"] = int(best)
    return out


def ort_runner(model_dir: Path, threads: int | None):
    from dogbreed_serve.model import Classifier

    workers, server_t = server_threads()
    threads = threads or server_t
    clf = Classifier(model_dir, intra_op_threads=threads)
    size = clf.spec.image_size
    info = {"threads": threads, "server_workers": workers,
            "onnxruntime": __import__("onnxruntime").__version__, "device": clf.device}
    return clf.probabilities, (lambda n: np.random.rand(n, 3, size, size).astype(np.float32)), info


def torch_runner(kind: str, model_dir: Path, threads: int):
    import torch

    from dogbreed_train.models import build_model

    torch.set_num_threads(threads)
    card = ModelCard.load(model_dir)
    size = card.spec.image_size
    model = build_model(card.architecture, len(card.labels), pretrained=False)
    pth = model_dir.parent / "model-torch" / "model.pth"
    if pth.is_file():
        model.load_state_dict(torch.load(pth, map_location="cpu"))
    model.eval()
    example = torch.rand(2, 3, size, size)
    if kind == "torchscript":
        with torch.no_grad():
            model = torch.jit.optimize_for_inference(torch.jit.freeze(
                torch.jit.trace(model, example)))
    elif kind == "export":
        batch = torch.export.Dim("batch", min=1, max=1024)
        model = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    elif kind == "compile":
        model = torch.compile(model, dynamic=True)

    def fn(x):
        with torch.inference_mode():
            return torch.softmax(model(x), 1)

    info = {"threads": threads, "torch": torch.__version__}
    return fn, (lambda n: torch.rand(n, 3, size, size)), info


def serve_stdin(model_dir: Path, threads: int | None, image: Path | None) -> int:
    """The probe loop: answers each command on one line of JSON."""
    from dogbreed_serve.decoding import decode

    fn, make, info = ort_runner(model_dir, threads)
    body = image.read_bytes() if image else None
    spec = ModelCard.load(model_dir).spec
    inputs: dict[int, np.ndarray] = {}
    for _ in range(3):
        fn(make(1))
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "lat":
            b = int(cmd[1])
            x = inputs.setdefault(b, make(b))
            t0 = time.perf_counter()
            fn(x)
            out = {"ms": 1000 * (time.perf_counter() - t0)}
        elif cmd[0] == "dec":
            t0 = time.perf_counter()
            decode(body, "image/jpeg", spec)
            out = {"ms": 1000 * (time.perf_counter() - t0)}
        elif cmd[0] == "tp":
            b, secs = int(cmd[1]), float(cmd[2])
            x = inputs.setdefault(b, make(b))
            times = time_calls(fn, x, 2, secs)
            out = {"ips": b / statistics.median(times), "calls": len(times)}
        else:
            out = {"error": f"unknown command {cmd[0]!r}"}
        print(json.dumps(out), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="folder with model.json")
    ap.add_argument("--runtimes", default="ort", help="comma list: ort,eager,torchscript,export,compile")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads (0: what the server uses; torch needs a value)")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--latency-iters", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum time per measurement")
    ap.add_argument("--stdin", action="store_true", help="probe mode (see above), ort only")
    ap.add_argument("--image", type=Path, help="JPEG for the 'dec' command")
    args = ap.parse_args()
    if args.stdin:
        return serve_stdin(args.model_dir, args.threads or None, args.image)
    batches = [int(b) for b in args.batches.split(",")]
    for kind in args.runtimes.split(","):
        t0 = time.perf_counter()
        try:
            if kind == "ort":
                fn, make, info = ort_runner(args.model_dir, args.threads or None)
            else:
                fn, make, info = torch_runner(kind, args.model_dir, args.threads or 2)
            res = measure(fn, make, batches, args.latency_iters, args.seconds)
            res.update(info)
        except Exception as exc:  # noqa: BLE001 - report, go on with the others
            res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        res.update(runtime=kind, setup_and_run_s=round(time.perf_counter() - t0, 1))
        print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
