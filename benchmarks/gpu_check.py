"""The training image on a real GPU, checked in one prepared run (about 9 minutes).

Runs the product's own code directly on a machine with PyTorch and a GPU, no Docker,
and writes what it saw to ``--out``: ``gpu_check.json`` and ``gpu_check.md``,
rewritten after every section, and one line per measurement in
``measurements.jsonl`` as it is taken, so a run cut short keeps what it measured.
Sections, most wanted first; each has its own time limit (clipped to what is left
of ``--budget-s``) and runs its risky part in a subprocess with a timeout, so a
section that hangs costs its own row, not the run:

  throughput-bB-MODE  ResNet-50, 224 px, AMP bf16, channels-last, batch B, eager or
                      torch.compile'd as train.py compiles it: images/s of the product's
                      batch sources (dogbreed_train.batches) against synthetic tensors
                      already on the GPU, interleaved round by round:
                        real  the default data path (data-path=auto: gpu on CUDA)
                        cpu / gpu  the other data path, explicitly
                      with train.py's default loader workers, on generated 500x375 JPEGs;
                      and the seconds to the first step (compilation included)
  quality             Fashion-MNIST (--fashion-mnist: the IDX files of Debian's
                      dataset-fashion-mnist), 60,000 training and 10,000 test photos as
                      JPEGs, ResNet-18 from scratch through ``python -m dogbreed_train``;
                      goal: test accuracy >= 0.93
  end_to_end          a short job through ``python -m dogbreed_train``: METRIC and PERF
                      lines, a checkpoint, a resumed run that continues from it, the ONNX
                      export against PyTorch on the same test images (goal: within 1e-3),
                      and AMP against full precision, judged by the spread between seeds
  frozen_loader       a job whose loader workers are frozen (SIGSTOP) after its first
                      checkpoint: it must end by itself within its loader-timeout, with
                      exit code 3, a LoaderStalled failure line and its checkpoint whole

Goals (reported, never asserted) on one H100/H200: synthetic >= 4,700 images/s eager and
>= 5,500 compiled; the default data path >= 0.95x synthetic; Fashion-MNIST >= 0.93.

On a GPU machine (wheels for what it lacks: benchmarks/gpu_wheels.sh; docs/benchmarks.md
has the exact command):
    PYTHONPATH=/tmp/site:contract:container_train python3 benchmarks/gpu_check.py \\
        --out gpu-out --fashion-mnist .cache/fashion-mnist
On CPU, as the test suite runs it (a tiny model, a few steps, the same code minus CUDA):
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from photo import photo_like
from PIL import Image
from training import product_batches, run_steps, step_fn, synthetic_batches

from dogbreed_contract.model_card import ModelCard
from dogbreed_contract.preprocess import Spec, load_eval_array
from dogbreed_train import batches, data, stalls
from dogbreed_train.models import build_model

HERE = Path(__file__).resolve().parent
SYNTHETIC_GOAL_IPS = {"eager": 4700.0, "compiled": 5500.0}
REAL_GOAL_RATIO = 0.95
ONNX_TOLERANCE = 1e-3
QUALITY_GOAL = 0.93
STALLED = 3  # the training program's exit code for a stalled loader (stalls.EXIT_CODE)


# ---------------------------------------------------------------- data on disk

def class_photo(rng: np.random.Generator, label: int, size=(500, 375)) -> Image.Image:
    """A photo-like JPEG source tinted by its class, so a short job can learn something."""
    hue = np.array([np.sin(label * 2.4), np.sin(label * 2.4 + 2.1),
                    np.sin(label * 2.4 + 4.2)], np.float32) * 90
    arr = np.asarray(photo_like(rng, size), np.float32) * 0.6 + 64 + hue
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_one(job) -> None:
    path, label, seed, size = job
    class_photo(np.random.default_rng([seed, label, int(path.stem)]), label, size).save(
        path, quality=90)


def _pool_map(fn, jobs: list) -> None:
    """fn over jobs with one process per CPU (tens of thousands of files take a minute
    on one), or here when there are few."""
    from concurrent.futures import ProcessPoolExecutor

    cpus = len(os.sched_getaffinity(0))
    if len(jobs) >= 256 and cpus > 1:
        with ProcessPoolExecutor(cpus) as pool:
            list(pool.map(fn, jobs, chunksize=64))
    else:
        for job in jobs:
            fn(job)


def write_split(root: Path, count: int, classes: int, seed: int,
                size=(500, 375)) -> data.Split:
    """`count` JPEGs in the class-folder layout (001.class_0/...), quality 90."""
    jobs = []
    for i in range(count):
        label = i % classes
        folder = root / f"{label + 1:03d}.class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:05d}.jpg", label, seed, size))
    _pool_map(_write_one, jobs)
    return data.Split(root.name, [(j[0], j[1]) for j in jobs])


def _write_gray(job) -> None:
    path, pixels = job
    Image.fromarray(pixels, "L").save(path, quality=95)


def write_fashion(src: Path, root: Path, limit: int | None = None) -> dict[str, int]:
    """Fashion-MNIST's train and test sets as grayscale JPEGs in class folders (the
    demo's reader and class names: scripts/dogbreed_scripts/demodata.py)."""
    sys.path.insert(0, str(HERE.parent / "scripts"))
    from dogbreed_scripts.demodata import CLASSES, FILES, read_idx

    counts = {}
    for split, (images, labels) in (("train", FILES["train"]), ("test", FILES["t10k"])):
        x, y = read_idx(src / images, src / labels)
        if limit:  # --quick: the first images only
            n = limit if split == "train" else limit // 3
            x, y = x[:n], y[:n]
        jobs = []
        for label, name in enumerate(CLASSES):
            (root / split / f"{label:02d}.{name}").mkdir(parents=True, exist_ok=True)
        for i, (pixels, label) in enumerate(zip(x, y, strict=True)):
            jobs.append((root / split / f"{label:02d}.{CLASSES[label]}" /
                         f"{i:05d}.jpg", pixels))
        _pool_map(_write_gray, jobs)
        counts[split] = len(jobs)
    return counts


# ---------------------------------------------------------------- throughput (a subprocess)

def environment(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": _version("torchvision"), "cpus": len(os.sched_getaffinity(0)),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory
                                / 2**30, 1) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "cuda": torch.version.cuda if cuda else None,
        "shm_gib": round(stalls.shm_bytes() / 2**30, 1),
        "gcc": bool(_which("gcc") and _which("g++")),
    }


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def default_workers(cpus: int) -> int:
    """train.py's default for one process: min(cpus - 1, 8)."""
    return max(0, min(cpus - 1, 8))


def measure(spec: dict) -> int:
    """One throughput section, in its own process: every measurement is one JSON line
    appended to spec['lines'] the moment it is taken."""
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"

    def emit(**row) -> None:
        with open(spec["lines"], "a") as fh:
            fh.write(json.dumps({"section": spec["section"], **row}) + "\n")

    image_size, batch, classes = spec["image_size"], spec["batch"], spec["classes"]
    img_spec = Spec.for_size(image_size)
    workers = default_workers(len(os.sched_getaffinity(0)))
    amp = spec["amp"] if cuda else "off"  # as the program: never autocast on CPU
    torch.manual_seed(0)
    model = build_model(spec["model"], classes, pretrained=False).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = step_fn(model, optimizer, device, amp=amp != "off",
                   dtype=torch.bfloat16 if amp == "bf16" else torch.float16,
                   channels_last=True, compile=spec["compile"])
    synthetic = synthetic_batches(batch, image_size, classes, device)
    started = time.perf_counter()
    x, y = next(synthetic)
    step(x, y)
    if cuda:
        torch.cuda.synchronize()
    emit(kind="first_step", seconds=round(time.perf_counter() - started, 2))

    jpegs = data.Split("train", [(Path(p), label) for p, label in spec["samples"]])
    default = batches.resolve_path("auto", device)
    other = "cpu" if default == "gpu" else "gpu"
    makers = {"synthetic": lambda: synthetic,
              "real": lambda: product_batches(jpegs, img_spec, batch, device, default, workers,
                                              spec["loader_timeout"], channels_last=True),
              other: lambda: product_batches(jpegs, img_spec, batch, device, other, workers,
                                             spec["loader_timeout"], channels_last=True)}
    emit(kind="setup", data_path_default=default, workers=workers,
         shm_mib=round(stalls.shm_bytes() / 2**20))
    sources, failed = {}, set()
    for r in range(spec["rounds"]):
        for name, make in makers.items():
            if name in failed:
                continue
            try:
                if name not in sources:
                    sources[name] = make()
                rate = run_steps(step, sources[name], spec["steps"], spec["warmup"], device)
            except Exception as exc:  # noqa: BLE001 - one failing path must not end the run
                failed.add(name)
                emit(kind="error", path=name, error=f"{type(exc).__name__}: {exc}"[:400])
                continue
            emit(kind="rate", path=name, round=r + 1, images_per_s=round(rate, 1))
    if cuda:
        emit(kind="memory", gpu_mem_gib=round(torch.cuda.max_memory_allocated(device) / 2**30,
                                              2))
    return 0


def throughput(args, section: str, batch: int, compiled: bool, jpegs: data.Split,
               work: Path, limit: float) -> dict:
    """One (batch, eager/compiled) throughput section in a subprocess bounded by `limit`."""
    lines = args.out / "measurements.jsonl"
    spec = {"section": section, "device": args.device, "model": args.model,
            "image_size": args.image_size, "batch": batch, "classes": args.classes,
            "amp": args.amp, "compile": compiled, "steps": args.steps, "warmup": args.warmup,
            "rounds": args.rounds, "loader_timeout": args.loader_timeout,
            "samples": [(str(p), label) for p, label in jpegs.samples],
            "lines": str(lines)}
    spec_file = work / f"{section}.json"
    spec_file.write_text(json.dumps(spec))
    base = work / f"{section}-base"  # where a stalled loader writes its failure line
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure",
                               str(spec_file)], env=env, capture_output=True, text=True,
                              timeout=limit)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr).splitlines()[-15:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = "timeout", (_text(exc.stdout) + _text(exc.stderr)).splitlines()[-15:]
    rows = [json.loads(ln) for ln in lines.read_text().splitlines()
            if ln.strip()] if lines.exists() else []
    rows = [r for r in rows if r["section"] == section]
    rates: dict[str, list[float]] = {}
    out = {"batch": batch, "mode": "compiled" if compiled else "eager", "rc": rc,
           "seconds": round(time.perf_counter() - started, 1), "errors": {}}
    for row in rows:
        if row["kind"] == "rate":
            rates.setdefault(row["path"], []).append(row["images_per_s"])
        elif row["kind"] == "error":
            out["errors"][row["path"]] = row["error"]
        elif row["kind"] == "first_step":
            out["first_step_s"] = row["seconds"]
        elif row["kind"] == "setup":
            out.update(data_path_default=row["data_path_default"], workers=row["workers"],
                       shm_mib=row["shm_mib"])
        elif row["kind"] == "memory":
            out["gpu_mem_gib"] = row["gpu_mem_gib"]
    failure = base / "output" / "failure"
    if failure.exists():
        out["failure"] = failure.read_text().splitlines()[0]
    if rc != 0:
        out["tail"] = tail
    med = {name: statistics.median(v) for name, v in rates.items()}
    syn = med.get("synthetic")
    out["images_per_s"] = {n: round(v, 1) for n, v in med.items()}
    out["images_per_s_all"] = rates
    out["ratio_vs_synthetic"] = {n: round(v / syn, 3) for n, v in med.items()
                                 if syn and n != "synthetic"}
    return out


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


# ---------------------------------------------------------------- jobs of the real program

def run_job(base: Path, hyperparameters: dict, timeout: float) -> dict:
    """One run of the real training program on the /opt/ml tree under `base`."""
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hyperparameters.items()}))
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "dogbreed_train"], env=env, text=True,
                              capture_output=True, timeout=max(1.0, timeout))
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = "timeout", _text(exc.stdout) + _text(exc.stderr)
    lines = text.splitlines()
    metrics_file = base / "output" / "data" / "metrics.json"
    return {
        "rc": rc, "seconds": round(time.perf_counter() - started, 1),
        "metric_lines": [ln.split("METRIC ", 1)[1] for ln in lines if "METRIC epoch=" in ln],
        "test_line": next((ln.split("METRIC ", 1)[1] for ln in lines
                           if "METRIC test_" in ln), None),
        "perf_lines": [ln.split("PERF ", 1)[1] for ln in lines if "PERF " in ln],
        "data_path_line": next((ln.split("training batches: ", 1)[1] for ln in lines
                                if "training batches: " in ln), None),
        "resumed": any("resuming from checkpoint" in ln for ln in lines),
        "tail": lines[-25:] if rc != 0 else [],
        "metrics": json.loads(metrics_file.read_text())
        if rc == 0 and metrics_file.exists() else None,
    }


def job_base(work: Path, name: str, data_root: Path) -> Path:
    base = work / name
    (base / "input").mkdir(parents=True, exist_ok=True)
    link = base / "input" / "data"
    if not link.exists():
        link.symlink_to(data_root)
    return base


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
        logits = session.run([card.output_name], {card.input_name: x})[0]
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


def job_hyperparameters(args, **overrides) -> dict:
    hps = {"model": args.job_model, "pretrained": "false", "epochs": 2,
           "batch-size": args.job_batch_size, "test-batch-size": args.job_batch_size,
           "image-size": args.image_size, "lr": 1e-3, "seed": 0,
           "loader-timeout": args.loader_timeout}
    if args.quick:  # no loader processes to start: the CPU test's time is the jobs'
        hps["workers"] = 0
    return {**hps, **overrides}


def end_to_end(args, device, work: Path, data_root: Path, test: data.Split,
               deadline: float) -> dict:
    """Train, resume, export and compare; then AMP against full precision."""
    def job(name: str, **overrides) -> tuple[Path, dict]:
        base = job_base(work, name, data_root)
        return base, run_job(base, job_hyperparameters(args, **overrides),
                             deadline - time.perf_counter())

    out: dict = {"classes": args.job_classes, "train_images": args.job_classes *
                 args.job_per_class, "image_size": args.image_size}
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
            "data_path": run["data_path_line"],
            "test": (run.get("metrics") or {}).get("test"), "tail": run["tail"]}


def program_workers(pid: int) -> list[int]:
    """A training program's loader workers: its children running its own command line."""
    own = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() == own:
                found.append(int(child))
        except OSError:
            continue
    return found


def frozen_loader(args, work: Path, data_root: Path, deadline: float) -> dict:
    """A job's loader workers frozen after its first checkpoint: it must end itself."""
    timeout = args.frozen_timeout
    base = job_base(work, "job-frozen", data_root)
    (base / "input" / "config").mkdir(parents=True, exist_ok=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(
        {k: str(v) for k, v in job_hyperparameters(
            args, epochs=50, workers=2, **{"loader-timeout": timeout}).items()}))
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed_train"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    out: dict = {"loader_timeout": timeout}
    workers: list[int] = []
    try:
        while True:  # until the first checkpoint is saved
            try:
                if "checkpoint saved to" in lines.get(timeout=1):
                    break
            except queue.Empty:
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise
        workers = program_workers(proc.pid)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        frozen = time.perf_counter()
        out["frozen_workers"] = len(workers)
        rc = proc.wait(timeout=max(1.0, min(timeout + 120, deadline - time.perf_counter())))
        out.update(rc=rc, ended_s=round(time.perf_counter() - frozen, 1))
    except (queue.Empty, subprocess.TimeoutExpired):
        out["rc"] = "timeout"
    finally:
        for pid in workers + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()
    failure = base / "output" / "failure"
    out["failure"] = failure.read_text().splitlines()[0] if failure.exists() else None
    try:
        state = torch.load(base / "checkpoints" / "checkpoint.pt", map_location="cpu",
                           weights_only=True)
        out["checkpoint_next_epoch"] = state["next_epoch"]
    except Exception as exc:  # noqa: BLE001 - a broken checkpoint is the finding
        out["checkpoint_error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["met"] = bool(out.get("rc") == STALLED and out.get("ended_s", 1e9) <= timeout + 60
                      and (out["failure"] or "").startswith("LoaderStalled:")
                      and out.get("checkpoint_next_epoch", 0) >= 2)
    return out


def quality(args, work: Path, deadline: float) -> dict:
    """Fashion-MNIST from scratch through the real program, against its test set."""
    if args.fashion_mnist is None:
        return {"skipped": "no --fashion-mnist folder (Debian's dataset-fashion-mnist: "
                           "/usr/share/datasets/fashion-mnist)"}
    root = work / "fashion"
    started = time.perf_counter()
    counts = write_fashion(args.fashion_mnist, root / "data",
                           limit=240 if args.quick else None)
    out = {"images": counts, "write_s": round(time.perf_counter() - started, 1)}
    hps = {"model": "resnet18", "pretrained": "false", "image-size": args.fashion_size,
           "epochs": args.fashion_epochs, "batch-size": args.fashion_batch,
           "test-batch-size": 1024, "optimizer": "adamw", "lr": args.fashion_lr,
           "weight-decay": 0.05, "label-smoothing": 0.1, "lr-scheduler": "cosine",
           "valid-fraction": 0.02, "seed": 0, "loader-timeout": args.loader_timeout}
    if args.quick:
        hps.update(epochs=1, workers=0, **{"batch-size": 32, "test-batch-size": 64})
    out["hyperparameters"] = hps
    base = job_base(work, "job-fashion", root / "data")
    run = run_job(base, hps, deadline - time.perf_counter())
    out.update(summarize(run))
    acc = (run.get("metrics") or {}).get("test", {}) or {}
    out["test_acc"] = acc.get("acc")
    out["met"] = bool(acc.get("acc") is not None and acc["acc"] >= QUALITY_GOAL)
    return out


# ---------------------------------------------------------------- report

def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU check, {result['date']}", "",
             f"{env['gpu'] or 'CPU'}, {env['cpus']} CPUs, torch {env['torch']}, "
             f"torchvision {env['torchvision']}, Python {env['python']}, /dev/shm "
             f"{env['shm_gib']} GiB, gcc {'yes' if env['gcc'] else 'no'}" +
             (" (quick: a tiny model, not a measurement)" if result["quick"] else ""), ""]
    tp = result.get("throughput") or {}
    if tp:
        first = next(iter(tp.values()))
        lines += [f"## Training throughput: {result['model']} at {result['image_size']} px, "
                  f"AMP {result['amp']}, channels-last", "",
                  f"Default data path {first.get('data_path_default')}, "
                  f"{first.get('workers')} loader workers, {result['jpegs']} JPEGs "
                  "(500x375, quality 90), cycled.", "",
                  "| batch | mode | data path | images/s | x synthetic | goal |",
                  "|---|---|---|---|---|---|"]
        for row in tp.values():
            mode = row["mode"]
            for name, ips in row["images_per_s"].items():
                if name == "synthetic":
                    want = SYNTHETIC_GOAL_IPS[mode]
                    ratio, goal = "1.00", f"{'met' if ips >= want else 'not met'} " \
                                          f"(>= {want:.0f})"
                else:
                    r = row["ratio_vs_synthetic"].get(name)
                    ratio = f"{r:.2f}" if r is not None else "-"
                    goal = (("met" if r and r >= REAL_GOAL_RATIO else "not met") +
                            f" (>= {REAL_GOAL_RATIO})") if name == "real" else ""
                lines.append(f"| {row['batch']} | {mode} | {name} | {ips:.1f} | {ratio} | "
                             f"{goal} |")
            for name, err in row["errors"].items():
                lines.append(f"| {row['batch']} | {mode} | {name} | failed: {err} | | |")
            if row["rc"] != 0:
                lines.append(f"| {row['batch']} | {mode} | (section) | exit {row['rc']}: "
                             f"{row.get('failure') or ' / '.join(row.get('tail', [])[-2:])} "
                             "| | |")
        starts = ", ".join(f"b{r['batch']} {r['mode']} {r['first_step_s']} s"
                           for r in tp.values() if "first_step_s" in r)
        lines += ["", f"First step (compilation included): {starts}.", ""]
    q = result.get("quality")
    if q:
        lines += ["## Fashion-MNIST, ResNet-18 from scratch, `python -m dogbreed_train`", ""]
        if "skipped" in q:
            lines.append(f"- skipped: {q['skipped']}")
        else:
            lines.append(f"- {q['images']} images; exit {q.get('rc')}, {q.get('seconds')} s; "
                         f"test accuracy {q.get('test_acc')}: "
                         f"{'met' if q.get('met') else 'not met'} (>= {QUALITY_GOAL})")
            lines.append(f"- {q.get('data_path')}")
            for ln in q.get("metric_lines", [])[-3:] + q.get("perf_lines", [])[-2:]:
                lines.append(f"  - `{ln}`")
        lines.append("")
    e2e = result.get("end_to_end")
    if e2e:
        lines += ["## End to end through `python -m dogbreed_train`", ""]
        first = e2e.get("first", {})
        lines.append(f"- first job: exit {first.get('rc')}, {first.get('seconds')} s; PERF "
                     f"reports GPU utilization: {first.get('gpu_util_reported')}, GPU memory: "
                     f"{first.get('gpu_mem_reported')}; {first.get('data_path')}")
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
    fz = result.get("frozen_loader")
    if fz:
        lines += ["## A job whose loader workers freeze", "",
                  f"- {fz.get('frozen_workers')} workers frozen after the first checkpoint; "
                  f"exit {fz.get('rc')} after {fz.get('ended_s')} s (loader-timeout "
                  f"{fz['loader_timeout']} s); checkpoint resumes at epoch "
                  f"{fz.get('checkpoint_next_epoch')}: {'met' if fz['met'] else 'not met'}",
                  f"- failure: `{fz.get('failure')}`", ""]
    if result.get("skipped"):
        lines += [f"Skipped (time budget): {', '.join(result['skipped'])}", ""]
    return "\n".join(lines)


def write(out: Path, result: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(result))


def sections(args) -> list[tuple[str, float]]:
    """(name, time limit in seconds), most wanted first."""
    tp = [(f"throughput-b{b}-{m}", args.compiled_limit if m == "compiled" else args.eager_limit)
          for b in args.batch_sizes for m in ("eager", "compiled")]
    first, rest = tp[:1], tp[1:]
    return first + [("quality", args.quality_limit), ("end_to_end", args.job_limit),
                    ("frozen_loader", args.frozen_timeout + 150)] + rest


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for the JSON, JSON lines and Markdown")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # a throughput subprocess
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny model, tiny images and a few steps: the code paths, no figures")
    ap.add_argument("--model", help="backbone (default resnet50; quick: resnet18)")
    ap.add_argument("--image-size", type=int, help="default 224; quick: 32")
    ap.add_argument("--batch-sizes", help="comma-separated, most wanted first (default "
                                          "256,128; quick: 4)")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"],
                    help="autocast dtype of the throughput sections (the jobs use amp=auto)")
    ap.add_argument("--steps", type=int, help="timed steps per measurement (default 25)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 5)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds, median taken (default 2; "
                                               "quick: 1)")
    ap.add_argument("--jpegs", type=int, help="JPEGs generated for throughput (default 3072)")
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--loader-timeout", type=float, default=120.0,
                    help="loader-timeout of every batch source and job (seconds)")
    ap.add_argument("--fashion-mnist", type=Path,
                    help="folder with Fashion-MNIST's four .gz IDX files (quality section)")
    ap.add_argument("--fashion-epochs", type=int, default=12)
    ap.add_argument("--fashion-size", type=int, default=112,
                    help="image-size of that job: 112 px leaves ResNet-18's stem a 28x28 map, "
                         "the photos' own size")
    ap.add_argument("--fashion-batch", type=int, default=256)
    ap.add_argument("--fashion-lr", type=float, default=2e-3)
    ap.add_argument("--frozen-timeout", type=float, help="loader-timeout of the frozen job "
                                                         "(default 20; quick: 5)")
    ap.add_argument("--skip", default="", help="comma-separated sections or prefixes, e.g. "
                                               "throughput-b128,quality")
    ap.add_argument("--budget-s", type=float, default=530,
                    help="the whole run's bound: no section starts, or runs, past it")
    ap.add_argument("--eager-limit", type=float, default=150, help="seconds per eager section")
    ap.add_argument("--compiled-limit", type=float, default=240,
                    help="seconds per compiled section")
    ap.add_argument("--quality-limit", type=float, default=240)
    ap.add_argument("--job-limit", type=float, default=240,
                    help="seconds for the end_to_end section's jobs together")
    args = ap.parse_args(argv)
    q = args.quick
    args.model = args.model or ("resnet18" if q else "resnet50")
    args.image_size = args.image_size or (32 if q else 224)
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("4" if q else "256,128")).split(",")]
    args.steps = args.steps or (2 if q else 25)
    args.rounds = args.rounds or (1 if q else 2)
    args.warmup = args.warmup or (1 if q else 5)
    args.jpegs = args.jpegs or (24 if q else 3072)
    args.frozen_timeout = args.frozen_timeout or (5.0 if q else 20.0)
    args.job_model = "resnet18"
    args.job_classes = 3 if q else 10
    args.job_per_class = 6 if q else 64
    args.job_batch_size = 8 if q else 128
    if args.measure is None and args.out is None:
        ap.error("--out is required")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure is not None:
        return measure(json.loads(args.measure.read_text()))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurements.jsonl").unlink(missing_ok=True)
    started = time.perf_counter()
    end = started + args.budget_s
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
              "environment": environment(device), "model": args.model,
              "image_size": args.image_size, "amp": args.amp if device.type == "cuda"
              else "off", "jpegs": args.jpegs, "skipped": [], "seconds": {}}
    skip = [s for s in args.skip.split(",") if s]
    write(args.out, result)
    size = (500, 375) if not args.quick else (96, 72)
    with tempfile.TemporaryDirectory(prefix="dogbreed-gpucheck-") as tmp:
        work = Path(tmp)
        jpegs = write_split(work / "jpegs" / "train", args.jpegs, args.classes, 0, size)
        job_data = work / "jobdata"
        classes, per_class = args.job_classes, args.job_per_class
        write_split(job_data / "train", classes * per_class, classes, seed=1, size=size)
        write_split(job_data / "valid", classes * max(2, per_class // 4), classes, 2, size)
        test = write_split(job_data / "test", classes * max(2, per_class // 4), classes, 3,
                           size)
        result["seconds"]["setup"] = round(time.perf_counter() - started, 1)
        for name, limit in sections(args):
            if any(name.startswith(s) for s in skip):
                continue
            left = end - time.perf_counter()
            if left < 30:
                result["skipped"].append(name)
                continue
            limit = min(limit, left)
            t0 = time.perf_counter()
            deadline = t0 + limit
            try:
                if name.startswith("throughput-"):
                    _, b, mode = name.split("-")
                    result.setdefault("throughput", {})[name] = throughput(
                        args, name, int(b[1:]), mode == "compiled", jpegs, work, limit)
                elif name == "quality":
                    result["quality"] = quality(args, work, deadline)
                elif name == "end_to_end":
                    result["end_to_end"] = end_to_end(args, device, work, job_data, test,
                                                      deadline)
                else:
                    result["frozen_loader"] = frozen_loader(args, work, job_data, deadline)
            except Exception as exc:  # noqa: BLE001 - one section's failure is its own row
                result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
            result["seconds"][name] = round(time.perf_counter() - t0, 1)
            write(args.out, result)
            print(f"gpu_check: {name} done in {result['seconds'][name]} s", flush=True)
    write(args.out, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
