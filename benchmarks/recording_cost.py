"""What the recording every job does costs: training step time with it on and off.

    # CPU, inside the training image:
    docker run --rm -v $PWD/benchmarks:/bench:ro dogbreed-train:latest python /bench/recording.py
    # A GPU machine with plain PyTorch (no Docker):
    PYTHONPATH=container_train python benchmarks/recording_cost.py --model resnet50 \
        --image-size 224 --batch-size 64 --steps 100

Both variants run train.py's own train_one_epoch on the same batches, made
once and already on the device (no data path, so the difference is the
recording alone: the worst case for the ratio). "off" is the loop with no
observers; "on" has a job's default Recorder among them (observers.py) (recording.py: step losses read
back, per-layer norms at each epoch's first step, every debug-interval steps
and in the first 10 steps, ReLU variances and percentiles in those 10 steps,
weight and gradient histograms once per epoch, TensorBoard scalars, and at
each epoch's end the rules and statistics.json). One round is one epoch of
--steps steps for each variant, interleaved; the first round (warm-up, and the
first-10-steps statistics) is reported apart. Prints a table and JSON (last line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from dogbreed_train import config, distributed, recording, train


class _Batches:
    """The batches, made once, read as train_one_epoch reads a batches.BatchSource."""

    def __init__(self, batches: list):
        self.batches, self.workers = batches, 0
        self.feed = SimpleNamespace(path="in memory")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_job(args, record: bool, work: Path):
    hps = config.parse({"model": args.model, "pretrained": "false",
                        "image-size": str(args.image_size), "batch-size": str(args.batch_size),
                        "lr": "0.001", "workers": "0", "amp": "auto" if args.amp else "off",
                        "debug-interval": str(args.debug_interval)})
    train.seed_everything(0)
    world = distributed.init()
    placement = train.placement_for(hps, world)
    trainer = train.build_trainer(hps, world, placement, args.classes)
    trainer.steps_per_epoch = args.steps
    if record:
        trainer.observers.append(recording.Recorder(
            trainer.model, main=True, enabled=True, interval=hps.debug_interval,
            nan_loss="stop", device=placement.device, amp=placement.amp, lr=hps.lr,
            tensorboard_dir=work / "tensorboard", out_dir=work / "data",
            class_counts={str(i): 10 for i in range(args.classes)},
            hyperparameters=config.to_dict(hps)))
    return trainer


def batches(args, device):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.steps):
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
        y = torch.randint(0, args.classes, (args.batch_size,), generator=g)
        out.append((x.to(device), y.to(device), [], None))
    return _Batches(out)


def one_epoch(trainer, data, epoch: int) -> float:
    device = trainer.placement.device
    sums = train.RunningSums(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train.train_one_epoch(trainer, data, epoch, 0, sums, None)
    if trainer.observers:
        row = {"epoch": epoch, "train_loss": sums.state()["loss"] / len(data),
               "train_acc": 0.5, "valid_loss": 1.0, "valid_acc": 0.5, "lr": 1e-3,
               "images_per_s": 100.0, "data_wait": 0.0, "seconds": 1.0}
        trainer.observers.end_epoch(row, None, {})
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50, help="steps per epoch (round)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--debug-interval", type=int, default=100)
    ap.add_argument("--amp", action="store_true", help="autocast on GPU (bf16 or fp16)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        jobs = {"off": make_job(args, False, Path(tmp)), "on": make_job(args, True, Path(tmp))}
        data = batches(args, jobs["off"].placement.device)
        times: dict[str, list[float]] = {"off": [], "on": []}
        for epoch in range(1, args.rounds + 1):
            for name in (("off", "on") if epoch % 2 else ("on", "off")):
                times[name].append(one_epoch(jobs[name], data, epoch))
                print(f"round {epoch} {name:>3}: {1000 * times[name][-1]:.2f} ms/step",
                      file=sys.stderr, flush=True)
        jobs["on"].observers.close()
    steady = {k: statistics.median(v[1:]) for k, v in times.items()}
    first = {k: v[0] for k, v in times.items()}
    result = {
        "benchmark": "recording", "device": str(jobs["off"].placement.device), "model": args.model,
        "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": args.rounds, "debug_interval": args.debug_interval, "amp": args.amp,
        "ms_per_step": {k: round(1000 * v, 3) for k, v in steady.items()},
        "first_round_ms_per_step": {k: round(1000 * v, 3) for k, v in first.items()},
        "overhead": round(steady["on"] / steady["off"] - 1, 4),
        "first_round_overhead": round(first["on"] / first["off"] - 1, 4),
    }
    print(f"\n{'':>20} {'off':>10} {'on':>10} {'overhead':>9}")
    print(f"{'ms/step (steady)':>20} {result['ms_per_step']['off']:>10.2f} "
          f"{result['ms_per_step']['on']:>10.2f} {result['overhead']:>8.1%}")
    print(f"{'ms/step (1st epoch)':>20} {result['first_round_ms_per_step']['off']:>10.2f} "
          f"{result['first_round_ms_per_step']['on']:>10.2f} "
          f"{result['first_round_overhead']:>8.1%}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
