"""Training-loop throughput: the product's batch sources against pre-decoded tensors.

    # CPU, inside the training image (what `benchmarks/run.py` does):
    docker run --rm -v $PWD/benchmarks:/bench:ro dogbreed-train:latest \
        python /bench/training.py --device cpu --model resnet18 --image-size 112
    # The data paths alone, without a model (--step none), side by side:
    docker run --rm --shm-size 1g -v $PWD/benchmarks:/bench:ro dogbreed-train:latest \
        python /bench/training.py --device cpu --step none --image-size 224 --batch-size 64
    # A GPU machine with plain PyTorch (no Docker), ResNet-50 with AMP:
    PYTHONPATH=contract:container_train python benchmarks/training.py --device cuda --amp \
        --model resnet50 --image-size 224 --batch-size 128 --steps 60

Variants, interleaved round by round so a noisy neighbour hits them alike:
  synthetic     batches of random tensors already on the device: the compute limit
  real          JPEG files through the product's batch source (dogbreed_train.batches,
                data-path=auto: cpu here, gpu on CUDA) with the training image's
                default worker count
  cpu, gpu      the other data path explicitly, where it is not the default (on a CPU
                machine the gpu path only when --variants names it)
  real-workersN the same with N DataLoader workers (--more-workers)
  real-workers0 decoding in the training process itself (no DataLoader workers)
  float-workers the yardstick for the cpu path: decode, augment, scale and normalize to
                float32 all in the workers, float32 batches (4x the bytes of uint8),
                pinned by DataLoader: the conventional DataLoader design
  real-threadsN default workers, with the training process's torch threads lowered to
                N = cpus - workers, so the workers do not preempt its OpenMP threads
                (CPU only; shown when it differs from the default)
  pre-resized   the same JPEGs stored with the shorter side at the model's resize size
                (what a data-preparation step would write), default workers

The training step is train.py's: zero_grad, forward, cross-entropy, backward, step
(SGD with momentum), with torch.autocast + GradScaler when --amp is given; with
--step none, nothing (the data path alone: its batches on the device, normalized).
Every loader has a timeout (--loader-timeout). JPEGs are generated (500x375, smooth
photo-like content, quality 90); none are downloaded. Prints JSON (last line) and
writes it to --json if given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# photo.py sits beside this file (in the image: /bench), on sys.path as the script's folder.
from photo import photo_like
from PIL import Image
from torch import nn

from dogbreed_contract.preprocess import Spec, load_rgb
from dogbreed_train import batches, data, stalls
from dogbreed_train.models import build_model


def make_jpegs(root: Path, count: int, classes: int, size=(500, 375), seed: int = 0,
               shorter: int | None = None) -> data.Split:
    """Photo-like JPEGs (smooth colour fields plus grain), class-folder layout."""
    rng = np.random.default_rng(seed)
    samples = []
    w, h = size
    for i in range(count):
        label = i % classes
        folder = root / f"{label + 1:03d}.class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        img = photo_like(rng, size)
        if shorter:
            scale = shorter / min(w, h)
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        samples.append((path, label))
    return data.Split("train", samples)


def step_fn(model, optimizer, device, amp: bool, dtype: torch.dtype = torch.bfloat16,
            channels_last: bool = False, compile: bool = False):
    """train.py's step; a GradScaler only for fp16 (bf16 needs no loss scaling);
    `compile`: the model through torch.compile as train.py compiles it."""
    criterion = nn.CrossEntropyLoss()
    forward = torch.compile(model, dynamic=False) if compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16
                                  and device.type == "cuda")
    amp_dtype = torch.bfloat16 if device.type == "cpu" else dtype

    def step(x, y):
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = criterion(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def copy_step(device):
    """--step none: the data path alone, its batches on the device and nothing more."""
    def step(x, y):
        return x.to(device, non_blocking=True)

    return step


def product_batches(split: data.Split, spec: Spec, batch: int, device: torch.device,
                    path: str, workers: int, timeout: float = 120.0,
                    channels_last: bool = False):
    """The training image's own batch source for `split`, cycled over epochs."""
    feed = batches.Feed(device, path=path, workers=workers, timeout=timeout,
                        channels_last=channels_last)
    return cycling(batches.make_batches(split, spec, batch, feed, training=True,
                                        shuffle=True))


class FloatImages(torch.utils.data.Dataset):
    """float-workers: the whole transform in the worker, float32 out."""

    def __init__(self, split: data.Split, spec: Spec):
        import torchvision.transforms.v2 as T

        from dogbreed_train.presets import SCALE

        self.split = split
        self.transform = T.Compose([
            T.RandomResizedCrop(spec.image_size, scale=SCALE, antialias=True),
            T.RandomHorizontalFlip(), T.ToImage(), T.ToDtype(torch.float32, scale=True),
            T.Normalize(spec.mean, spec.std)])

    def __len__(self):
        return len(self.split.samples)

    def __getitem__(self, i):
        path, label = self.split.samples[i]
        return self.transform(load_rgb(path)), label


def float_worker_batches(split: data.Split, spec: Spec, batch: int, workers: int,
                         pin: bool, timeout: float = 120.0):
    loader = torch.utils.data.DataLoader(
        FloatImages(split, spec), batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=pin, persistent_workers=workers > 0, timeout=timeout if workers else 0,
        generator=torch.Generator().manual_seed(0))
    return cycling(loader)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all its threads, and its live child
    processes (the loader workers): what a data path costs, whatever else the machine
    runs at the same time."""
    import multiprocessing

    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure_steps(step, batches, steps: int, warmup: int, device) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) over `steps` steps after `warmup`
    untimed ones."""
    it = iter(batches)
    for _ in range(warmup):
        x, y = next(it)[:2]
        step(x, y)
    sync(device)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    seen = 0
    for _ in range(steps):
        x, y = next(it)[:2]
        step(x, y)
        seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - t0), 1000 * (cpu_seconds() - cpu0) / seen


def run_steps(step, batches, steps: int, warmup: int, device) -> float:
    """Images per second over `steps` steps after `warmup` untimed ones."""
    return measure_steps(step, batches, steps, warmup, device)[0]


def synthetic_batches(batch: int, size: int, classes: int, device):
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    while True:
        yield x, y


def cycling(loader_):
    while True:
        yield from loader_


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", action="store_true",
                    help="autocast: bf16 (the training program's default where the GPU has it)")
    ap.add_argument("--amp-dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median taken)")
    ap.add_argument("--workers", type=int, default=-1,
                    help="DataLoader workers for 'real' (-1: train.py's default, min(cpus-1, 8))")
    ap.add_argument("--more-workers", type=int, default=0,
                    help="also measure the real path with this many workers (0: skip)")
    ap.add_argument("--no-pre-resized", action="store_true")
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--max-images", type=int, default=2048,
                    help="JPEGs generated (cycled if the run needs more)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--step", default="train", choices=["train", "none"],
                    help="none: time the data paths alone, without a model")
    ap.add_argument("--loader-timeout", type=float, default=120.0,
                    help="seconds any one wait for a batch may last")
    ap.add_argument("--variants", help="comma-separated: measure only these")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = args.workers if args.workers >= 0 else max(0, min((cpus or 1) - 1, 8))
    spec = Spec.for_size(args.image_size)
    if args.step == "train":
        model = build_model(args.model, args.classes, pretrained=False).to(device).train()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = step_fn(model, optimizer, device, args.amp,
                       torch.bfloat16 if args.amp_dtype == "bf16" else torch.float16,
                       args.channels_last)
    else:
        step = copy_step(device)

    per_round = (args.steps + args.warmup) * args.batch_size
    n_images = min(args.max_images, per_round * args.rounds)
    tmp = tempfile.TemporaryDirectory(prefix="dogbreed-trainbench-")
    t0 = time.perf_counter()
    full = make_jpegs(Path(tmp.name) / "full", n_images, args.classes)
    jpeg_kb = statistics.fmean(p.stat().st_size for p, _ in full.samples) / 1024
    variants = {"synthetic": lambda: synthetic_batches(args.batch_size, args.image_size,
                                                       args.classes, device)}
    pin = device.type == "cuda"
    default_path = batches.resolve_path("auto", device)

    def real(split, w, path=default_path):
        return lambda: product_batches(split, spec, args.batch_size, device, path, w,
                                       args.loader_timeout, args.channels_last)

    variants["real"] = real(full, workers)
    other = "cpu" if default_path == "gpu" else "gpu"
    if device.type == "cuda" or other in (args.variants or "").split(","):
        variants[other] = real(full, workers, other)  # on CPU, only when asked for
    variants["float-workers"] = lambda: float_worker_batches(
        full, spec, args.batch_size, workers, pin, args.loader_timeout)
    if workers:
        variants["real-workers0"] = real(full, 0)
    if args.more_workers and args.more_workers != workers:
        variants[f"real-workers{args.more_workers}"] = real(full, args.more_workers)
    if not args.no_pre_resized:
        small = make_jpegs(Path(tmp.name) / "small", n_images, args.classes,
                           shorter=spec.resize_size)
        variants["pre-resized"] = real(small, workers)
    gen_s = time.perf_counter() - t0

    full_threads = torch.get_num_threads()
    threads = {name: full_threads for name in variants}
    fewer = max(1, (cpus or 1) - workers)
    if device.type == "cpu" and workers and fewer < full_threads:
        variants[f"real-threads{fewer}"] = real(full, workers)
        threads[f"real-threads{fewer}"] = fewer
    if args.variants:
        wanted = set(args.variants.split(","))
        variants = {n: v for n, v in variants.items() if n in wanted}
        threads = {n: t for n, t in threads.items() if n in wanted}
    iters = {name: make() for name, make in variants.items()}  # loaders persist across rounds
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu_per_image: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, it in iters.items():
            torch.set_num_threads(threads[name])
            rate, cpu_ms = measure_steps(step, it, args.steps, args.warmup, device)
            rates[name].append(rate)
            cpu_per_image[name].append(cpu_ms)
    torch.set_num_threads(full_threads)
    med = {name: statistics.median(r) for name, r in rates.items()}
    result = {
        "device": args.device, "amp": args.amp, "model": args.model, "step": args.step,
        "data_path_default": default_path, "shm_mib": round(stalls.shm_bytes() / 2**20),
        "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": args.rounds, "workers_default": workers, "cpus": cpus,
        "torch_threads": threads, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "jpeg": {"size": "500x375", "mean_kb": round(jpeg_kb, 1), "count": n_images},
        "setup_s": round(gen_s, 1),
        "images_per_s": med, "images_per_s_all": rates,
        "cpu_ms_per_image": {n: statistics.median(v) for n, v in cpu_per_image.items()},
        "cpu_ms_per_image_all": cpu_per_image,
        "ratio_vs_synthetic": {n: med[n] / med["synthetic"] for n in med
                               if n != "synthetic" and "synthetic" in med},
    }
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text)
    print(text)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
