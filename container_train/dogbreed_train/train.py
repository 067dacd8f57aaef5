"""The training program: read hyperparameters and channels, fine-tune, save artifacts.

Run it as ``python -m dogbreed_train`` (``--help`` lists the hyperparameters).
Inside the image the SageMaker training toolkit starts it (see launch.py), once
per GPU under torchrun when there are several GPUs or hosts.

The loop, top to bottom: resume from the checkpoint if there is one; each epoch
train (AMP and channels-last on GPU), validate, log METRIC and PERF lines,
record statistics and evaluate the rules (recording.py, verdicts.py), save a
checkpoint; then predict the test channel, export the model and write the
report (report.py). Rank 0 alone logs metrics and writes files; metrics are
summed over all ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dogbreed_contract import metrics
from dogbreed_contract.layout import label_name
from dogbreed_contract.preprocess import Spec, load_eval_array

from . import (
    artifacts,
    checkpoints,
    config,
    data,
    debugger,
    distributed,
    paths,
    profiling,
    recording,
    report,
)
from .errors import UserError
from .models import build_model
from .stopping import Stopped, StopRequest

log = logging.getLogger("dogbreed_train")

# With several ranks, agree on stopping (SIGTERM) every this many steps.
STOP_SYNC_STEPS = 10


@dataclass
class Runtime:
    device: torch.device
    workers: int
    world: distributed.World
    amp: torch.dtype | None = None  # autocast dtype, None = full precision
    channels_last: bool = False

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_count() -> int:
    return int(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1)


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), else fp16; never on CPU."""
    if device.type != "cuda" or choice == "off":
        return None
    if choice == "fp16" or (choice == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def runtime_for(hps: config.Hyperparameters, world: distributed.World) -> Runtime:
    if torch.cuda.is_available():
        device = torch.device("cuda", world.local_rank)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    per_host = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    auto = max(0, min(cpu_count() // per_host - 1, 8))
    workers = hps.workers if hps.workers >= 0 else auto
    return Runtime(device, workers, world, amp_dtype(hps.amp, device), device.type == "cuda")


def make_optimizer(hps: config.Hyperparameters, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if hps.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=hps.lr, eps=hps.eps, weight_decay=hps.weight_decay)
    if hps.optimizer == "adam":
        return torch.optim.Adam(params, lr=hps.lr, eps=hps.eps, weight_decay=hps.weight_decay)
    return torch.optim.SGD(params, lr=hps.lr, momentum=hps.momentum,
                           weight_decay=hps.weight_decay, nesterov=hps.momentum > 0)


def make_scheduler(hps: config.Hyperparameters, optimizer):
    if hps.lr_scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hps.epochs)
    if hps.lr_scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, hps.epochs // 3),
                                               gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class Sums:
    """Running totals of one pass; kept on the device so the GPU is never waited on."""

    def __init__(self, device, loss=0.0, correct=0, seen=0):
        self.loss = torch.tensor(float(loss), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=device)
        self.seen = seen

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss_sum.detach().double()
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)

    def state(self) -> dict:
        return {"loss": self.loss.item(), "correct": int(self.correct.item()), "seen": self.seen}

    def result(self, world: distributed.World, device) -> dict:
        s = self.state()
        loss, correct, seen = distributed.sum_all(world, [s["loss"], s["correct"], s["seen"]],
                                                  device)
        return {"loss": loss / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen)}


@dataclass
class Job:
    """Everything one training run holds, so the loop functions stay short."""

    hps: config.Hyperparameters
    rt: Runtime
    core: nn.Module      # the bare model: checkpoints, hooks and export use this
    model: nn.Module     # what runs: maybe DDP- and torch.compile-wrapped
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    debug: debugger.Debugger
    stop: StopRequest
    bad: data.BadImages
    recorder: recording.Recorder | None = None
    steps_per_epoch: int = 0

    def checkpoint(self, next_epoch: int, next_step: int, partial: dict, history: list,
                   labels: list[str]) -> None:
        # Every rank calls this: the shards change every epoch, so each rank may have
        # met bad images the others have not, and the checkpoint keeps them all.
        self.bad.seen = distributed.union_all(self.rt.world, self.bad.seen)
        if not self.rt.world.main:
            return
        target = checkpoints.save({
            "format": 1, "next_epoch": next_epoch, "next_step": next_step,
            "partial": partial, "history": history, "labels": labels,
            "bad_images": sorted(self.bad.seen),
            "hyperparameters": config.to_dict(self.hps), "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": checkpoints.rng_state()})
        where = f"epoch {next_epoch}" + (f", step {next_step}" if next_step else "")
        log.info("checkpoint saved to %s (resumes at %s)", target, where)

    def stop_now(self, step: int) -> bool:
        world = self.rt.world
        if not world.distributed:
            return self.stop.requested
        if step % STOP_SYNC_STEPS:
            return False
        return distributed.any_rank(world, self.stop.requested, self.rt.device)


def train_one_epoch(job: Job, loader, sampler, epoch: int, start_step: int, sums: Sums,
                    prof) -> tuple[dict, int]:
    """Train one epoch from `start_step`; returns performance stats and the steps done."""
    job.model.train()
    job.debug.train()
    sampler.set_epoch(epoch, start_step * job.hps.batch_size)
    rt, step = job.rt, start_step
    first_global = (epoch - 1) * job.steps_per_epoch
    timer = profiling.StepTimer()
    for x, y, bad in loader:
        if job.hps.max_steps_per_epoch and step >= job.hps.max_steps_per_epoch:
            break
        timer.fetched()
        job.bad.add(bad)
        if len(y):
            x, y = rt.to_device(x, y)
            job.optimizer.zero_grad(set_to_none=True)
            with rt.autocast():
                logits = job.model(x)
                loss = job.criterion(logits, y)
            job.scaler.scale(loss).backward()
            if job.recorder is not None:
                job.recorder.after_backward(first_global + step, epoch, loss, job.scaler)
            job.scaler.step(job.optimizer)
            job.scaler.update()
            sums.add(loss * len(y), logits, y)
        step += 1
        timer.computed(len(y))
        if prof is not None:
            prof.step()
        if job.stop_now(step):
            break
    if job.recorder is not None:
        job.recorder.flush()
    return timer.stop(rt.device), step


@torch.no_grad()
def evaluate(job: Job, loader, n_classes: int) -> tuple[dict, dict]:
    """Validation on this rank's shard, summed over ranks, and per-class counts
    (for ClassImbalance). Runs the bare model: shards differ in length, and
    DDP's collectives must not see uneven calls."""
    job.core.eval()
    job.debug.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = Sums(job.rt.device)
    total = torch.zeros(n_classes, dtype=torch.int64, device=job.rt.device)
    correct = torch.zeros_like(total)
    for x, y, bad in loader:
        job.bad.add(bad)
        if len(y) == 0:
            continue
        x, y = job.rt.to_device(x, y)
        with job.rt.autocast():
            logits = job.core(x)
        sums.add(criterion(logits.float(), y), logits, y)
        total += torch.bincount(y, minlength=n_classes)
        correct += torch.bincount(y[logits.argmax(1) == y], minlength=n_classes)
        if job.debug.active:  # the hook records the training criterion's output as EVAL loss
            job.criterion(logits.float(), y)
    counts = distributed.sum_all(job.rt.world, total.tolist() + correct.tolist(),
                                 job.rt.device)
    per_class = {"total": [int(c) for c in counts[:n_classes]],
                 "correct": [int(c) for c in counts[n_classes:]]}
    return sums.result(job.rt.world, job.rt.device), per_class


@torch.no_grad()
def predict_split(job: Job, split: data.Split, spec: Spec, root, labels) -> tuple[dict, list]:
    """Test metrics and per-image predictions of the evaluation path in one pass (rank 0).

    The predictions are for error analysis and for checking that the endpoint
    answers the same (tests/test_serve_container.py).
    """
    job.core.eval()
    rows, loss, correct = [], 0.0, 0
    size = job.hps.test_batch_size
    for start in range(0, len(split.samples), size):
        chunk, tensors = [], []
        for path, label in split.samples[start:start + size]:
            try:
                tensors.append(torch.from_numpy(load_eval_array(path, spec)))
                chunk.append((path, label))
            except ValueError as exc:
                job.bad.add([data.BadImage(data.sample_name(split, path), str(exc))])
        if not tensors:
            continue
        x, y = job.rt.to_device(torch.stack(tensors), torch.tensor([c[1] for c in chunk]))
        with job.rt.autocast():
            logits = job.core(x)
        logp = torch.log_softmax(logits.float(), 1)
        loss += float(-logp.gather(1, y[:, None]).sum())
        probs = logp.exp().cpu()
        for (path, label), p in zip(chunk, probs, strict=True):
            best = int(p.argmax())
            correct += best == label
            rows.append({"image": str(path.relative_to(root)), "label": labels[label],
                         "predicted": labels[best], "probability": float(p[best])})
    seen = len(rows)
    return {"loss": loss / max(seen, 1), "acc": correct / max(seen, 1), "images": seen}, rows


def build_job(hps: config.Hyperparameters, rt: Runtime, n_classes: int) -> Job:
    core = build_model(hps.model, n_classes, hps.hidden_units, hps.dropout, hps.pretrained,
                       hps.freeze_backbone, paths.channel_dir("weights")).to(rt.device)
    if rt.channels_last:
        core = core.to(memory_format=torch.channels_last)
    model = core
    if rt.world.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(core, device_ids=ids)
    if hps.compile:
        if not (shutil.which("cc") or shutil.which("gcc")):
            raise UserError("compile=true needs a C compiler (gcc) for the kernels "
                            "torch.compile generates, and this image has none; set "
                            "compile=false, or build the image with gcc in its runtime stage.")
        model = torch.compile(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=hps.label_smoothing)
    optimizer = make_optimizer(hps, core.parameters())
    return Job(hps, rt, core, model, criterion, optimizer, make_scheduler(hps, optimizer),
               torch.amp.GradScaler(rt.device.type, enabled=rt.amp == torch.float16),
               debugger.create(core, criterion, enabled=rt.world.main), StopRequest(),
               data.BadImages(hps.bad_images))


def resume(job: Job, labels: list[str]) -> dict | None:
    """Restore the checkpoint (rank 0 reads it, every rank gets it)."""
    world = job.rt.world
    state = checkpoints.load(config.to_dict(job.hps), labels) if world.main else None
    state = distributed.broadcast(world, state, job.rt.device)
    if state is None:
        return None
    job.core.load_state_dict(state["model"])
    job.optimizer.load_state_dict(state["optimizer"])
    job.scheduler.load_state_dict(state["scheduler"])
    job.scaler.load_state_dict(state["scaler"])
    checkpoints.set_rng_state(state["rng"])
    job.bad.seen.update(state.get("bad_images", []))
    where = f"epoch {state['next_epoch']}"
    if state["next_step"]:
        where += f", step {state['next_step']}"
    log.info("resuming from checkpoint %s at %s", checkpoints.path(), where)
    return state


def run(hps: config.Hyperparameters) -> dict | None:
    """Train, evaluate and save; returns the metrics record (on rank 0)."""
    world = distributed.init()
    try:
        return _run(hps, world)
    finally:
        distributed.shutdown(world)


def _run(hps: config.Hyperparameters, world: distributed.World) -> dict | None:
    if not world.main:
        logging.getLogger().setLevel(logging.WARNING)
    seed_everything(hps.seed + world.rank)
    rt = runtime_for(hps, world)
    model_dir, out_dir = paths.model_dir(), paths.output_data_dir()
    if world.main:
        artifacts.check_writable(model_dir, out_dir)
    log.info("hyperparameters: %s", json.dumps(config.to_dict(hps), sort_keys=True))

    folders, train_split, valid_split, test_split = data.discover(
        hps.valid_fraction, hps.seed, hps.bad_images)
    labels = [label_name(f) for f in folders]
    log.info("data: %d classes, %d train / %d valid / %s test images; device %s, %d "
             "process(es), %d loader workers each, amp %s", len(labels),
             len(train_split.samples), len(valid_split.samples),
             len(test_split.samples) if test_split else "no", rt.device, world.size,
             rt.workers, str(rt.amp).replace("torch.", "") if rt.amp else "off")

    spec = Spec.for_size(hps.image_size)
    job = build_job(hps, rt, len(labels))
    state = resume(job, labels)
    counts = [0] * len(labels)
    for _, label in train_split.samples:
        counts[label] += 1
    job.recorder = recording.Recorder(
        job.core, main=world.main, enabled=hps.record, interval=hps.debug_interval,
        nan_loss=hps.nan_loss, device=rt.device, amp=rt.amp, lr=hps.lr,
        tensorboard_dir=paths.tensorboard_dir(), out_dir=out_dir,
        class_counts=dict(zip(labels, counts, strict=True)),
        hyperparameters=config.to_dict(hps))

    common = dict(workers=rt.workers, seed=hps.seed,
                  pin_memory=rt.device.type == "cuda")
    train_sampler = distributed.EpochSampler(len(train_split.samples), world, hps.seed,
                                             shuffle=True, pad=True)
    train_loader = data.loader(train_split, data.train_transform(spec, hps.augment),
                               hps.batch_size, shuffle=False, sampler=train_sampler,
                               training=True, **common)
    valid_loader = data.loader(valid_split, data.EvalTransform(spec), hps.test_batch_size,
                               shuffle=False, sampler=distributed.EpochSampler(
                                   len(valid_split.samples), world, hps.seed, False, False),
                               **common)

    history = state["history"] if state else []
    first_epoch = state["next_epoch"] if state else 1
    start_step = state["next_step"] if state else 0
    partial = state["partial"] if state and start_step else {}
    window = profiling.parse_window(hps.profile_steps)
    gpu = profiling.GpuSampler(rt.device)
    job.steps_per_epoch = len(train_loader)
    if hps.max_steps_per_epoch:
        job.steps_per_epoch = min(job.steps_per_epoch, hps.max_steps_per_epoch)
    try:
        history = _epochs(job, hps, (train_loader, train_sampler, valid_loader), gpu, window,
                          (history, first_epoch, start_step, partial), labels)
    except recording.NonFiniteLoss:
        job.recorder.close()  # the verdicts and statistics up to the bad step
        if world.main:
            report.write_safely(out_dir)
        raise
    job.stop.training_done(job.stop_now(0))  # from here on a SIGTERM stops at once
    job.debug.close()
    # A bad image met by two ranks (in different epochs' shards) counts once.
    job.bad.seen = distributed.union_all(world, job.bad.seen)
    distributed.barrier(world)
    if not world.main:
        job.recorder.close()
        return None
    return finish(job, spec, labels, folders, history,
                  (train_split, valid_split, test_split), out_dir, model_dir)


def _epochs(job: Job, hps: config.Hyperparameters, loaders, gpu, window, start, labels):
    """The epoch loop: train, validate, log, record, checkpoint; returns the history."""
    rt, world = job.rt, job.rt.world
    train_loader, train_sampler, valid_loader = loaders
    history, first_epoch, start_step, partial = start
    trace_dir = paths.tensorboard_dir()
    with profiling.trace(window, trace_dir, world.rank) as prof:
        for epoch in range(first_epoch, hps.epochs + 1):
            lr = job.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            sums = Sums(rt.device, **partial)
            gpu.epoch = epoch
            with gpu:
                perf, steps = train_one_epoch(job, train_loader, train_sampler, epoch,
                                              start_step, sums, prof)
            if job.stop_now(0):
                job.checkpoint(epoch, steps, sums.state(), history, labels)
                job.debug.close()
                raise Stopped(f"SIGTERM at epoch {epoch}, step {steps}; checkpoint saved in "
                              f"{paths.checkpoint_dir()}. Run the job again to resume.")
            tr = sums.result(world, rt.device)
            job.scheduler.step()
            va, per_class = evaluate(job, valid_loader, len(labels))
            seconds = time.perf_counter() - started
            log.info(metrics.epoch_line(epoch, hps.epochs, tr, va, lr, seconds))
            use = gpu.summary()
            log.info(profiling.perf_line(epoch, hps.epochs, {**perf, **use}))
            row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                   "valid_loss": va["loss"], "valid_acc": va["acc"], "lr": lr,
                   "train_images": tr["images"], "valid_images": va["images"],
                   "seconds": round(seconds, 3),
                   "images_per_s": round(perf["images_per_s"] * world.size, 1),
                   "data_wait": round(perf["data_wait"], 3)}
            row.update({k: round(v, 3) for k, v in use.items()})
            history.append(row)
            job.recorder.end_epoch(row, per_class, gpu.series)
            job.checkpoint(epoch + 1, 0, {}, history, labels)
            start_step, partial = 0, {}
    return history


def finish(job: Job, spec: Spec, labels, folders, history, splits, out_dir,
           model_dir) -> dict:
    """Test predictions, rule verdicts and the exported model (rank 0)."""
    hps = job.hps
    train_split, valid_split, test_split = splits
    test, predictions, evaluated = None, [], None
    if test_split is not None:
        test, predictions = predict_split(job, test_split, spec, paths.channel_dir("test"),
                                          labels)
        log.info(metrics.test_line(test))
        artifacts.save_json(out_dir / "test_predictions.json", predictions)
        evaluated = ("test", paths.channel_dir("test"))
    elif hps.record:  # the report's confusion matrix comes from validation instead
        root = valid_split.samples[0][0].parents[1] if valid_split.samples else None
        _, predictions = predict_split(job, valid_split, spec, root, labels) if root else (
            None, [])
        artifacts.save_json(out_dir / "valid_predictions.json", predictions)
        evaluated = ("valid", root)
    if job.debug.active:
        report_rules(job.debug.tensor_dir, out_dir)

    dropped = len(job.bad.seen)  # training's, from every rank, and the test set's
    skipped = {s.name: len(s.skipped) for s in splits if s}
    if dropped or any(skipped.values()):
        log.warning("images skipped as unreadable: %d at scan time %s, %d while decoding",
                    sum(skipped.values()), skipped, dropped)
    last = history[-1] if history else {"valid_loss": math.nan, "valid_acc": math.nan}
    summary = {"valid_loss": last["valid_loss"], "valid_acc": last["valid_acc"],
               "epochs": hps.epochs}
    if test:
        summary.update(test_loss=test["loss"], test_acc=test["acc"])

    exported = job.core
    if job.debug.active:  # smdebug's module hooks would run (and fail) inside torch.export
        exported = build_model(hps.model, len(labels), hps.hidden_units, hps.dropout,
                               pretrained=False, freeze_backbone=False, weights_dir=None)
        exported.load_state_dict(job.core.state_dict())
    artifacts.save_model(exported, model_dir, labels=labels, class_folders=folders, spec=spec,
                         architecture=hps.model, hyperparameters=config.to_dict(hps),
                         summary=summary)
    record = {"history": history, "test": test, "summary": summary, "labels": labels,
              "processes": job.rt.world.size,
              "images": {"train": len(train_split.samples), "valid": len(valid_split.samples),
                         "test": len(test_split.samples) if test_split else 0},
              "skipped_images": {"scan": skipped, "decode": dropped}}
    artifacts.save_metrics(out_dir, record)
    if hps.record:
        job.recorder.close(test)
        report.thumbnails_safely(out_dir, predictions, evaluated)
        report.write_safely(out_dir)
    # Worded unlike the METRIC lines so the metric regexes never count it twice.
    log.info("finished: validation accuracy %.4f%s", last["valid_acc"],
             f", test accuracy {test['acc']:.4f}" if test else "")
    return record


def report_rules(tensor_dir: str, out_dir) -> None:
    """What SageMaker's built-in Debugger rules would say, evaluated here."""
    from . import rules

    try:
        verdicts = rules.evaluate(tensor_dir)
    except Exception as exc:  # noqa: BLE001 - a report must never fail the job
        log.warning("Debugger rules not evaluated: %s: %s", type(exc).__name__, exc)
        return
    rules.write(verdicts, out_dir / "debugger_rules.json")
    log.info(rules.format_report(verdicts))
