"""The training image's GPU paths, checked on a real GPU in one prepared run.

Runs the real training program (``python -m dogbreed_train``) and its data loader
directly on a machine with PyTorch and a GPU, no Docker, and writes what it saw to
``--out`` as ``gpu_check.json`` and ``gpu_check.md`` (rewritten after every section,
so a run cut short still leaves what it measured):

  throughput   ResNet-50, AMP (bf16 by default, the program's own choice), channels-last,
               at each batch size: images/s on synthetic tensors already on the GPU (the
               compute limit) against the product's data path (photo-like 500x375 JPEGs
               generated here, decoded and augmented by dogbreed_train.data with the
               program's default worker count), and the candidate fixes side by side:
                 real-workersN   the same loader with one worker per spare CPU
                 pre-resized     JPEGs stored with the shorter side at the resize size
                 uint8           crops stay uint8 in the workers; scaling and
                                 normalization run on the GPU (4x fewer bytes moved)
                 gpu-decode      file bytes only in the workers; nvJPEG decode
                                 (torchvision.io.decode_jpeg on the GPU), crop, flip and
                                 normalization on the GPU
  end_to_end   a short job through the real program: METRIC and PERF lines (GPU
               utilization and memory), a checkpoint, a resumed run that continues from
               it, the ONNX export, and the exported model's softmax against PyTorch's
               on the same test images (goal: within 1e-3)
  amp          final training loss with AMP against full precision on the same seed,
               judged against the spread between two seeds in full precision

Goals (reported, never asserted): synthetic >= 3,000 images/s for ResNet-50 with AMP on
one H100/H200; the real data path >= 0.95x synthetic.

On a GPU machine (wheels for what it lacks: benchmarks/gpu_wheels.sh):
    PYTHONPATH=container_train python3 benchmarks/gpu_check.py --out gpu-out
On CPU, as the test suite runs it (a tiny model, a few steps, the same code minus CUDA):
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from photo import photo_like
from PIL import Image
from training import cycling, run_steps, step_fn, synthetic_batches

from dogbreed_contract.model_card import ModelCard
from dogbreed_contract.preprocess import Spec, load_eval_array
from dogbreed_train import data
from dogbreed_train.models import build_model

SYNTHETIC_GOAL_IPS = 3000.0
REAL_GOAL_RATIO = 0.95
ONNX_TOLERANCE = 1e-3


# ---------------------------------------------------------------- data on disk

def class_photo(rng: np.random.Generator, label: int, classes: int,
                size=(500, 375)) -> Image.Image:
    """A photo-like JPEG source tinted by its class, so a short job can learn something."""
    hue = np.array([np.sin(label * 2.4), np.sin(label * 2.4 + 2.1),
                    np.sin(label * 2.4 + 4.2)], np.float32) * 90
    arr = np.asarray(photo_like(rng, size), np.float32) * 0.6 + 64 + hue
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_one(job) -> None:
    path, label, classes, seed, size, shorter = job
    img = class_photo(np.random.default_rng([seed, label, int(path.stem)]), label, classes, size)
    if shorter:
        scale = shorter / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.BILINEAR)
    img.save(path, quality=90)


def write_split(root: Path, count: int, classes: int, seed: int,
                size=(500, 375), shorter: int | None = None) -> data.Split:
    """`count` JPEGs in the class-folder layout (001.class_0/...), quality 90, written
    by one process per CPU (thousands of photos take a minute on one)."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = []
    for i in range(count):
        label = i % classes
        folder = root / f"{label + 1:03d}.class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:05d}.jpg", label, classes, seed, size, shorter))
    cpus = len(os.sched_getaffinity(0))
    if count >= 256 and cpus > 1:
        with ProcessPoolExecutor(cpus) as pool:
            list(pool.map(_write_one, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_one(job)
    return data.Split(root.name, [(j[0], j[1]) for j in jobs])


# ---------------------------------------------------------------- candidate data paths

class Uint8Crop:
    """The product's augmentation, stopping at uint8 (normalized later, on the device)."""

    def __init__(self, spec: Spec):
        import torchvision.transforms.v2 as T

        self.t = T.Compose([T.RandomResizedCrop(spec.image_size, scale=(0.35, 1.0),
                                                antialias=True),
                            T.RandomHorizontalFlip(), T.PILToTensor()])

    def __call__(self, img):
        return self.t(img)


def normalize_on(device, spec: Spec, batches):
    """uint8 NCHW batches -> normalized float on `device`."""
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255
    for x, y, *_ in batches:
        x = x.to(device, non_blocking=True).float()
        yield (x - mean) / std, y


class FileBytes(torch.utils.data.Dataset):
    """Raw JPEG bytes and labels: decoding happens on the GPU (gpu-decode)."""

    def __init__(self, split: data.Split):
        self.samples = split.samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        import torchvision.io as tio

        path, label = self.samples[i]
        return tio.read_file(str(path)), label


def gpu_decode_batches(split: data.Split, spec: Spec, batch: int, workers: int, device):
    """nvJPEG decode of a batch of file bytes, then crop, flip and normalize per image."""
    import torchvision.io as tio
    import torchvision.transforms.v2 as T
    import torchvision.transforms.v2.functional as F

    loader = torch.utils.data.DataLoader(
        FileBytes(split), batch_size=batch, shuffle=True, num_workers=workers,
        collate_fn=lambda b: ([x for x, _ in b], torch.tensor([y for _, y in b])),
        persistent_workers=workers > 0, drop_last=True)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255
    size = [spec.image_size, spec.image_size]
    for files, y in cycling(loader):
        images = tio.decode_jpeg(files, device=device, mode=tio.ImageReadMode.RGB)
        crops = []
        for img in images:
            top, left, h, w = T.RandomResizedCrop.get_params(img, (0.35, 1.0), (3 / 4, 4 / 3))
            crop = F.resized_crop(img, top, left, h, w, size, antialias=True)
            crops.append(crop.flip(-1) if torch.rand(()) < 0.5 else crop)
        x = torch.stack(crops).float()
        yield (x - mean) / std, y


# ---------------------------------------------------------------- sections

def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory
                                / 2**30, 1) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "cuda": torch.version.cuda if cuda else None,
    }


def default_workers(cpus: int) -> int:
    """train.py's default for one process: min(cpus - 1, 8)."""
    return max(0, min(cpus - 1, 8))


def throughput(args, device, jpegs: data.Split, small: data.Split) -> dict:
    """Images/s of each data path at each batch size, interleaved round by round."""
    spec = Spec.for_size(args.image_size)
    cpus = len(os.sched_getaffinity(0))
    workers, more = default_workers(cpus), max(1, cpus - 1)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    amp = args.amp if cuda else "off"  # as the program: never autocast on CPU (slow there)
    out = {"model": args.model, "image_size": args.image_size, "amp": amp,
           "channels_last": True, "workers_default": workers, "workers_more": more,
           "jpegs": len(jpegs.samples), "jpeg_size": "x".join(map(str, Image.open(
               jpegs.samples[0][0]).size)), "by_batch": {}}
    for batch in args.batch_sizes:
        torch.manual_seed(0)
        model = build_model(args.model, args.classes, pretrained=False).to(device).train()
        model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = step_fn(model, optimizer, device, amp=amp != "off", dtype=dtype,
                       channels_last=True)

        def product(split, w):
            tf = data.train_transform(spec, augment=True)
            return cycling(data.loader(split, tf, batch, shuffle=True, workers=w, seed=0,
                                       pin_memory=cuda))

        def uint8(split, w):
            ld = data.loader(split, Uint8Crop(spec), batch, shuffle=True, workers=w, seed=0,
                             pin_memory=cuda)
            return normalize_on(device, spec, cycling(ld))

        paths = {"synthetic": synthetic_batches(batch, args.image_size, args.classes, device),
                 "real": product(jpegs, workers)}
        if more != workers:
            paths[f"real-workers{more}"] = product(jpegs, more)
        paths["pre-resized"] = product(small, workers)
        paths[f"uint8-workers{more}"] = uint8(jpegs, more)
        if cuda:
            paths[f"gpu-decode-workers{min(more, 4)}"] = gpu_decode_batches(
                jpegs, spec, batch, min(more, 4), device)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        errors: dict[str, str] = {}
        for _ in range(args.rounds):
            for name, batches in paths.items():
                if name in errors:
                    continue
                try:
                    rates[name].append(run_steps(step, batches, args.steps, args.warmup,
                                                 device))
                except Exception as exc:  # noqa: BLE001 - one failing path must not end the run
                    errors[name] = f"{type(exc).__name__}: {exc}"[:300]
        med = {n: statistics.median(r) for n, r in rates.items() if r}
        syn = med.get("synthetic")
        out["by_batch"][str(batch)] = {
            "images_per_s": {n: round(v, 1) for n, v in med.items()},
            "images_per_s_all": {n: [round(v, 1) for v in r] for n, r in rates.items()},
            "ratio_vs_synthetic": {n: round(v / syn, 3) for n, v in med.items()
                                   if syn and n != "synthetic"},
            "gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if cuda else None,
            "errors": errors,
        }
        del model, optimizer, step, paths
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return out


def run_job(base: Path, hyperparameters: dict, timeout: float) -> dict:
    """One run of the real training program on the /opt/ml tree under `base`."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dogbreed_train"], env=env, text=True,
                          capture_output=True, timeout=timeout)
    lines = (proc.stdout + proc.stderr).splitlines()
    metrics_file = base / "output" / "data" / "metrics.json"
    return {
        "rc": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
        "metric_lines": [ln.split("METRIC ", 1)[1] for ln in lines if "METRIC epoch=" in ln],
        "perf_lines": [ln.split("PERF ", 1)[1] for ln in lines if "PERF " in ln],
        "resumed": any("resuming from checkpoint" in ln for ln in lines),
        "tail": lines[-25:] if proc.returncode else [],
        "metrics": json.loads(metrics_file.read_text()) if metrics_file.exists() else None,
    }


def onnx_agreement(base: Path, device: torch.device, images: list[Path]) -> dict:
    """The exported model against PyTorch with the checkpoint's weights, same inputs."""
    import onnx

    card = ModelCard.load(base / "model")
    spec = card.spec
    state = torch.load(base / "checkpoints" / "checkpoint.pt", map_location="cpu",
                       weights_only=True)
    hps = state["hyperparameters"]
    model = build_model(hps["model"], len(state["labels"]), tuple(hps["hidden-units"]),
                        hps["dropout"], pretrained=False, freeze_backbone=False,
                        weights_dir=None)
    model.load_state_dict(state["model"])
    model.eval().to(device)
    x = np.stack([load_eval_array(p, spec) for p in images]).astype(np.float32)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = torch.softmax(model(torch.from_numpy(x).to(device)).float(), 1).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow_tf32
    path = base / "model" / card.model_file
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run([card.output_name],
                             {card.input_name: x})[0]
        runtime = f"onnxruntime {ort.__version__}"
    except ImportError:  # the training image has no onnxruntime: onnx's own evaluator
        from onnx.reference import ReferenceEvaluator

        logits = ReferenceEvaluator(onnx.load(str(path))).run(None, {"input": x})[0]
        runtime = f"onnx.reference {onnx.__version__}"
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    diff = float(np.abs(probs - ref).max())
    return {"runtime": runtime, "images": len(images), "max_abs_softmax_diff": diff,
            "same_top1": bool((probs.argmax(1) == ref.argmax(1)).all()),
            "met": diff <= ONNX_TOLERANCE}


def end_to_end(args, device, work: Path) -> dict:
    """Train, resume, export and compare; then AMP against full precision."""
    classes, per_class = args.job_classes, args.job_per_class
    size = (500, 375) if not args.quick else (96, 72)
    data_root = work / "jobdata"
    write_split(data_root / "train", classes * per_class, classes, seed=1, size=size)
    write_split(data_root / "valid", classes * max(2, per_class // 4), classes, seed=2,
                size=size)
    test = write_split(data_root / "test", classes * max(2, per_class // 4), classes, seed=3,
                       size=size)

    def job(name: str, **overrides) -> tuple[Path, dict]:
        base = work / name
        (base / "input").mkdir(parents=True, exist_ok=True)
        data_link = base / "input" / "data"
        if not data_link.exists():
            data_link.symlink_to(data_root)
        hps = {"model": args.model, "pretrained": "false", "epochs": 2,
               "batch-size": args.job_batch_size, "test-batch-size": args.job_batch_size,
               "image-size": args.image_size, "lr": 1e-3, "seed": 0, **overrides}
        if args.quick:  # no loader processes to start: the CPU test's time is the jobs'
            hps["workers"] = 0
        return base, run_job(base, hps, args.job_timeout)

    out: dict = {"classes": classes, "train_images": classes * per_class,
                 "image_size": args.image_size}
    base, first = job("job-amp-seed0", amp="auto")
    out["first"] = summarize(first)
    if first["rc"] != 0:
        return out
    out["checkpoint"] = (base / "checkpoints" / "checkpoint.pt").is_file()
    _, resumed = job("job-amp-seed0", amp="auto", epochs=3)
    out["resume"] = summarize(resumed)
    out["resume"]["continued_at_epoch_3"] = bool(
        resumed["resumed"] and len(resumed["metric_lines"]) == 1
        and resumed["metric_lines"][0].startswith("epoch=3/3"))
    out["onnx"] = onnx_agreement(base, device, [p for p, _ in test.samples[:8]])

    # AMP against full precision: the loss after the same two epochs.
    _, off0 = job("job-fp32-seed0", amp="off")
    _, off1 = job("job-fp32-seed1", amp="off", seed=1)
    losses = {"amp_seed0": final_loss(first), "fp32_seed0": final_loss(off0),
              "fp32_seed1": final_loss(off1)}
    out["amp"] = {"amp_dtype": "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported()
                  else ("fp16" if device.type == "cuda" else "off (CPU: the program never "
                                                              "autocasts on CPU)"),
                  "final_train_loss": losses,
                  "rc": {"fp32_seed0": off0["rc"], "fp32_seed1": off1["rc"]}}
    if None not in losses.values():
        seed_spread = abs(losses["fp32_seed1"] - losses["fp32_seed0"])
        amp_gap = abs(losses["amp_seed0"] - losses["fp32_seed0"])
        # "Within noise": no further from full precision than another seed is, with a
        # floor of 2% of the loss for runs whose seeds happen to land close together.
        allowed = max(seed_spread, 0.02 * losses["fp32_seed0"])
        out["amp"].update(seed_spread=round(seed_spread, 4), amp_gap=round(amp_gap, 4),
                          allowed=round(allowed, 4), met=amp_gap <= allowed)
    return out


def final_loss(run: dict) -> float | None:
    history = (run.get("metrics") or {}).get("history") or []
    return float(history[-1]["train_loss"]) if run["rc"] == 0 and history else None


def summarize(run: dict) -> dict:
    perf = run["perf_lines"]
    return {"rc": run["rc"], "seconds": run["seconds"], "metric_lines": run["metric_lines"],
            "perf_lines": perf, "gpu_util_reported": any("gpu_util=" in p for p in perf),
            "gpu_mem_reported": any("gpu_mem=" in p for p in perf),
            "test": (run.get("metrics") or {}).get("test"), "tail": run["tail"]}


# ---------------------------------------------------------------- report

def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU check, {result['date']}", "",
             f"{env['gpu'] or 'CPU'}, {env['cpus']} CPUs, torch {env['torch']}, "
             f"Python {env['python']}" + (" (quick: a tiny model, not a measurement)"
                                          if result["quick"] else ""), ""]
    tp = result.get("throughput")
    if tp:
        lines += [f"## Training throughput: {tp['model']} at {tp['image_size']} px, AMP "
                  f"{tp['amp']}, channels-last", "",
                  f"Default loader workers {tp['workers_default']}; {tp['jpegs']} JPEGs "
                  f"({tp['jpeg_size']}, quality 90), cycled.", "",
                  "| batch | data path | images/s | x synthetic | goal |", "|---|---|---|---|---|"]
        for batch, row in tp["by_batch"].items():
            for name, ips in row["images_per_s"].items():
                if name == "synthetic":
                    goal = f"{'met' if ips >= SYNTHETIC_GOAL_IPS else 'not met'} " \
                           f"(>= {SYNTHETIC_GOAL_IPS:.0f})"
                    ratio = "1.00"
                else:
                    r = row["ratio_vs_synthetic"].get(name)
                    ratio = f"{r:.2f}" if r is not None else "-"
                    goal = ("met" if r and r >= REAL_GOAL_RATIO else "not met") + \
                        f" (>= {REAL_GOAL_RATIO})"
                lines.append(f"| {batch} | {name} | {ips:.1f} | {ratio} | {goal} |")
            for name, err in row["errors"].items():
                lines.append(f"| {batch} | {name} | failed: {err} | | |")
        lines.append("")
    e2e = result.get("end_to_end")
    if e2e:
        lines += ["## End to end through `python -m dogbreed_train`", ""]
        first = e2e.get("first", {})
        lines.append(f"- first job: exit {first.get('rc')}, {first.get('seconds')} s; PERF "
                     f"reports GPU utilization: {first.get('gpu_util_reported')}, GPU memory: "
                     f"{first.get('gpu_mem_reported')}")
        for ln in first.get("metric_lines", []) + first.get("perf_lines", []):
            lines.append(f"  - `{ln}`")
        if "checkpoint" in e2e:
            lines.append(f"- checkpoint written: {e2e['checkpoint']}")
        if "resume" in e2e:
            lines.append(f"- resumed job continued at epoch 3: "
                         f"{e2e['resume']['continued_at_epoch_3']} (exit {e2e['resume']['rc']})")
        if "onnx" in e2e:
            o = e2e["onnx"]
            lines.append(f"- ONNX ({o['runtime']}) against PyTorch, {o['images']} test images: "
                         f"max softmax difference {o['max_abs_softmax_diff']:.2e}, same top-1 "
                         f"{o['same_top1']}: {'met' if o['met'] else 'not met'} "
                         f"(<= {ONNX_TOLERANCE})")
        if "amp" in e2e:
            a = e2e["amp"]
            lines.append(f"- AMP ({a['amp_dtype']}) against full precision, final training "
                         f"loss: {a['final_train_loss']}" +
                         (f"; gap {a['amp_gap']} against seed spread {a['seed_spread']} "
                          f"(allowed {a['allowed']}): {'met' if a['met'] else 'not met'}"
                          if "met" in a else ""))
        lines.append("")
    if result.get("skipped"):
        lines += [f"Skipped (time budget): {', '.join(result['skipped'])}", ""]
    return "\n".join(lines)


def write(out: Path, result: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(result))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON and Markdown")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny model, tiny images and a few steps: the code paths, no figures")
    ap.add_argument("--model", help="backbone (default resnet50; quick: resnet18)")
    ap.add_argument("--image-size", type=int, help="default 224; quick: 32")
    ap.add_argument("--batch-sizes", help="comma-separated (default 128,256; quick: 4)")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"],
                    help="autocast dtype of the throughput section (the job uses amp=auto)")
    ap.add_argument("--steps", type=int, help="timed steps per measurement (default 30)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 8)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds, median taken (default 2; "
                                               "quick: 1)")
    ap.add_argument("--jpegs", type=int, help="JPEGs generated for throughput (default 3072)")
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--skip", default="", help="comma-separated sections: throughput,end_to_end")
    ap.add_argument("--budget-s", type=float, default=480,
                    help="start no section after this many seconds (default 480)")
    ap.add_argument("--job-timeout", type=float, default=300, help="seconds per training job")
    args = ap.parse_args(argv)
    q = args.quick
    args.model = args.model or ("resnet18" if q else "resnet50")
    args.image_size = args.image_size or (32 if q else 224)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("4" if q else "128,256")).split(",")]
    args.steps = args.steps or (2 if q else 30)
    args.rounds = args.rounds or (1 if q else 2)
    args.warmup = args.warmup or (1 if q else 8)
    args.jpegs = args.jpegs or (24 if q else 3072)
    args.job_classes = 3 if q else 10
    args.job_per_class = 6 if q else 128
    args.job_batch_size = 8 if q else 128
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
              "environment": environment(device), "skipped": []}
    skip = set(filter(None, args.skip.split(",")))
    write(args.out, result)
    with tempfile.TemporaryDirectory(prefix="dogbreed-gpucheck-") as tmp:
        work = Path(tmp)
        for section in ("throughput", "end_to_end"):
            if section in skip:
                continue
            if time.perf_counter() - started > args.budget_s:
                result["skipped"].append(section)
                continue
            t0 = time.perf_counter()
            if section == "throughput":
                size = (500, 375) if not args.quick else (96, 72)
                spec = Spec.for_size(args.image_size)
                jpegs = write_split(work / "full", args.jpegs, args.classes, 0, size)
                small = write_split(work / "small", args.jpegs, args.classes, 0, size,
                                    shorter=spec.resize_size)
                result["throughput"] = throughput(args, device, jpegs, small)
            else:
                result["end_to_end"] = end_to_end(args, device, work)
            result.setdefault("seconds", {})[section] = round(time.perf_counter() - t0, 1)
            write(args.out, result)
            print(f"gpu_check: {section} done in {result['seconds'][section]} s", flush=True)
    write(args.out, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
