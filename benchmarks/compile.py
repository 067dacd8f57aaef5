"""compile=true against eager, as train.py runs a model on this machine's device.

    docker run --rm --network none -v $PWD/benchmarks:/bench:ro dogbreed-train:latest \\
        python /bench/compile.py                      # CPU: fp32, contiguous
    PYTHONPATH=contract:container_train python3 benchmarks/compile.py --device cuda \\
        --model resnet50 --image-size 224 --batch-size 256   # GPU: bf16, channels-last

The same training step (zero_grad, forward, cross-entropy, backward, SGD with momentum)
on the same random batch, the model eager and through ``torch.compile(dynamic=False)``
as train.py compiles it; rounds interleaved so a noisy neighbour hits both alike.
Prints JSON: the first step's seconds (compilation included) and, per round, images/s
and the process's CPU milliseconds per image.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from dogbreed_train.models import build_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    if cuda:  # what train.py does on a GPU: channels-last and bf16 autocast
        x = x.contiguous(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def make(compiled: bool):
        model = build_model(args.model, 10, pretrained=False).to(device).train()
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model, dynamic=False) if compiled else model

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = criterion(forward(x), y)
            loss.backward()
            optimizer.step()

        started = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - started
        step()
        return step, first

    steps, first = {}, {}
    for name in ("eager", "compiled"):
        steps[name], first[name] = make(name == "compiled")
    rounds = {name: {"images_per_s": [], "cpu_ms_per_image": []} for name in steps}
    images = args.steps * args.batch_size
    for _ in range(args.rounds):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rounds[name]["images_per_s"].append(round(images / wall, 1))
            rounds[name]["cpu_ms_per_image"].append(round(1000 * cpu / images, 2))
    ratio = statistics.median(c / e for c, e in zip(rounds["compiled"]["images_per_s"],
                                                    rounds["eager"]["images_per_s"], strict=True))
    print(json.dumps({
        "device": args.device, "model": args.model, "image_size": args.image_size,
        "batch_size": args.batch_size, "torch": torch.__version__,
        "first_step_s": {n: round(v, 1) for n, v in first.items()}, "rounds": rounds,
        "median_images_per_s": {n: statistics.median(r["images_per_s"])
                                for n, r in rounds.items()},
        "median_cpu_ms_per_image": {n: statistics.median(r["cpu_ms_per_image"])
                                    for n, r in rounds.items()},
        "compiled_over_eager": round(ratio, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
