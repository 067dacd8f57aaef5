"""The training program: read hyperparameters and channels, fine-tune, save artifacts.

Run it as ``python -m dogbreed_train`` (``--help`` lists the hyperparameters).
Inside the image the SageMaker training toolkit starts it (see launch.py), once
per GPU under torchrun when there are several GPUs or hosts.

It is laid out as torchvision's reference script (references/classification/
train.py): ``train_one_epoch`` and ``evaluate`` over batch sources (batches.py,
the one data factory; its transforms are presets.py), ``run`` around them. Top to bottom: resume from the checkpoint if there is one (``resume``);
each epoch (``train_epochs``) train (AMP and channels-last on GPU), validate,
log METRIC and PERF lines, save a checkpoint; then predict the test channel,
export the model and write the report (``finish``, report.py). Whatever watches
the loop (recording.py's statistics and rules; an smdebug hook when the job has a
hook config) is one list of observers (observers.py), called at fixed points.
Rank 0 alone logs metrics and writes files; metrics are summed over all ranks. Every wait for a
batch is bounded (``loader-timeout``, stalls.py). The loader timing behind the
PERF line is profiling.TimedBatches; the cluster (hosts, CPUs, GPUs)
is cluster.py's, read once.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from dogbreed_contract import metrics
from dogbreed_contract.layout import label_name
from dogbreed_contract.preprocess import Spec

from . import (
    artifacts,
    batches,
    checkpoints,
    config,
    data,
    debugger,
    distributed,
    observers,
    paths,
    profiling,
    recording,
    report,
    stalls,
)
from .cluster import Cluster
from .errors import UserError
from .models import build_model
from .stopping import Stopped, StopRequest

log = logging.getLogger("dogbreed_train")

# With several ranks, agree on stopping (SIGTERM) every this many steps.
STOP_SYNC_STEPS = 10


@dataclass(frozen=True)
class Placement:
    """Where this process's tensors go and in what form: its device, the autocast
    precision and the memory format."""

    device: torch.device
    amp: torch.dtype | None = None  # autocast dtype, None = full precision
    channels_last: bool = False

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it (no loss scaling needed), else fp16; never on CPU."""
    if device.type != "cuda" or choice == "off":
        return None
    if choice == "fp16" or (choice == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def placement_for(hps: config.Hyperparameters, world: distributed.World) -> Placement:
    """AMP and channels-last on GPU (with cuDNN autotuning and TF32), neither on CPU."""
    device = world.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return Placement(device, amp_dtype(hps.amp, device), device.type == "cuda")


def loader_workers(hps: config.Hyperparameters, cluster: Cluster,
                   world: distributed.World) -> int:
    """The `workers` hyperparameter, or by default the host's CPUs shared out among
    its processes, one left for the training loop, at most 8."""
    if hps.workers >= 0:
        return hps.workers
    return max(0, min(cluster.cpus // world.local_size - 1, 8))


def make_feed(hps: config.Hyperparameters, placement: Placement, workers: int) -> batches.Feed:
    """How this process's batches reach its device: the data path (``auto``: gpu on
    CUDA), the workers, and the bound on every wait for a batch."""
    return batches.Feed(placement.device, batches.resolve_path(hps.data_path, placement.device),
                        workers, hps.loader_timeout, placement.channels_last,
                        stalls.Watchdog(hps.loader_timeout, grace=min(10.0,
                                                                      hps.loader_timeout / 5)))


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


class RunningSums:
    """Loss, correct answers and images seen over one pass; kept on the device so
    the GPU is never waited on. Training, validation and the test predictions use it."""

    def __init__(self, device: torch.device, loss=0.0, correct=0, seen=0):
        self.device = device
        self.loss = torch.tensor(float(loss), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=device)
        self.seen = seen

    def add(self, loss_sum: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """A batch: its summed loss, and scores (logits or probabilities) per class."""
        self.loss += loss_sum.detach().double()
        self.correct += (scores.argmax(1) == targets).sum()
        self.seen += len(targets)

    def state(self) -> dict:
        """The sums as numbers, for a checkpoint taken in the middle of an epoch."""
        return {"loss": self.loss.item(), "correct": int(self.correct.item()), "seen": self.seen}

    def result(self, world: distributed.World | None = None) -> dict:
        """Mean loss, accuracy and the image count: over every rank of `world`, or of
        this process alone."""
        s = self.state()
        totals = [s["loss"], s["correct"], s["seen"]]
        if world is not None:
            totals = distributed.sum_all(world, totals, self.device)
        loss, correct, seen = totals
        return {"loss": loss / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen)}


@dataclass
class Trainer:
    """Everything one training run holds, so the loop functions stay short."""

    hps: config.Hyperparameters
    world: distributed.World
    placement: Placement
    model: nn.Module           # the bare model: checkpoints, evaluation, hooks and export
    training_model: nn.Module  # what the training step runs: DDP- and compile-wrapped if asked
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    observers: observers.Observers  # what watches the loop: the Recorder, a hook
    stop_request: StopRequest
    bad_images: data.BadImages
    feed: batches.Feed
    steps_per_epoch: int = 0

    def save_checkpoint(self, next_epoch: int, next_step: int, partial_sums: dict,
                        history: list, labels: list[str]) -> None:
        # Every rank calls this: the shards change every epoch, so each rank may have
        # met bad images the others have not, and the checkpoint keeps them all.
        self.bad_images.seen = distributed.union_all(self.world, self.bad_images.seen)
        if not self.world.main:
            return
        target = checkpoints.save({
            "format": 1, "next_epoch": next_epoch, "next_step": next_step,
            "partial": partial_sums, "history": history, "labels": labels,
            "bad_images": sorted(self.bad_images.seen),
            "hyperparameters": config.to_dict(self.hps), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": checkpoints.rng_state()})
        where = f"epoch {next_epoch}" + (f", step {next_step}" if next_step else "")
        log.info("checkpoint saved to %s (resumes at %s)", target, where)

    def should_stop(self, step: int) -> bool:
        """A SIGTERM came: on this rank alone, or (with several ranks, every
        STOP_SYNC_STEPS steps) on any of them, so that all stop at the same step."""
        if not self.world.distributed:
            return self.stop_request.requested
        if step % STOP_SYNC_STEPS:
            return False
        return distributed.any_rank(self.world, self.stop_request.requested, self.world.device)


def first_batches(source, count: int):
    """The source's first `count` batches. The one after them is fetched and dropped:
    with workers=0 its augmentation draws from the global RNG, so a seed's results
    (with max-steps-per-epoch) depend on it."""
    for i, batch in enumerate(source):
        if i >= count:
            return
        yield batch


def train_one_epoch(trainer: Trainer, source: batches.BatchSource, epoch: int,
                    start_step: int, sums: RunningSums, profiler) -> tuple[dict, int]:
    """Train one epoch from `start_step`; returns its throughput figures and the step
    it got to."""
    hps, placement = trainer.hps, trainer.placement
    trainer.training_model.train()
    trainer.observers.start_train()
    source.set_epoch(epoch, start_step * hps.batch_size)
    feed = first_batches(source, hps.max_steps_per_epoch - start_step) \
        if hps.max_steps_per_epoch else source
    timed = profiling.TimedBatches(feed)
    first_global_step = (epoch - 1) * trainer.steps_per_epoch
    step = start_step
    for images, targets, bad, _ in timed:
        trainer.bad_images.add(bad)
        if len(targets):
            trainer.optimizer.zero_grad(set_to_none=True)
            with placement.autocast():
                logits = trainer.training_model(images)
                loss = trainer.criterion(logits, targets)
            trainer.scaler.scale(loss).backward()
            trainer.observers.after_backward(first_global_step + step, epoch, loss,
                                             trainer.scaler)
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
            sums.add(loss * len(targets), logits, targets)
        step += 1
        if profiler is not None:
            profiler.step()
        if trainer.should_stop(step):
            break
    trainer.observers.end_train()
    return {**timed.stats(placement.device), **feed_figures(source)}, step


def feed_figures(source: batches.BatchSource) -> dict:
    """What the PERF line and the report say of the data path that ran."""
    return {"data_path": source.feed.path, "workers": source.workers,
            "shm_mib": round(stalls.shm_bytes() / 2**20)}


@torch.no_grad()
def evaluate(trainer: Trainer, source: batches.BatchSource, n_classes: int
             ) -> tuple[dict, dict]:
    """Validation on this rank's shard, summed over ranks, and per-class counts
    (for ClassImbalance). Runs the bare model: shards differ in length, and
    DDP's collectives must not see uneven calls."""
    placement = trainer.placement
    trainer.model.eval()
    trainer.observers.start_eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = RunningSums(placement.device)
    class_total = torch.zeros(n_classes, dtype=torch.int64, device=placement.device)
    class_correct = torch.zeros_like(class_total)
    for images, targets, bad, _ in source:
        trainer.bad_images.add(bad)
        if len(targets) == 0:
            continue
        with placement.autocast():
            logits = trainer.model(images)
        sums.add(criterion(logits.float(), targets), logits, targets)
        class_total += torch.bincount(targets, minlength=n_classes)
        class_correct += torch.bincount(targets[logits.argmax(1) == targets],
                                        minlength=n_classes)
        trainer.observers.eval_batch(logits, targets)
    counts = distributed.sum_all(trainer.world, class_total.tolist() + class_correct.tolist(),
                                 placement.device)
    per_class = {"total": [int(c) for c in counts[:n_classes]],
                 "correct": [int(c) for c in counts[n_classes:]]}
    return sums.result(trainer.world), per_class


@torch.no_grad()
def predict_split(trainer: Trainer, split: data.Split, spec: Spec, root,
                  labels) -> tuple[dict, list]:
    """Test metrics and per-image predictions of the evaluation path in one pass (rank 0).

    The predictions are for error analysis and for checking that the endpoint
    answers the same (tests/test_serve_container.py).
    """
    placement = trainer.placement
    trainer.model.eval()
    sums, rows = RunningSums(placement.device), []
    source = batches.make_batches(split, spec, trainer.hps.test_batch_size, trainer.feed,
                                  training=False)
    for images, targets, bad, indices in source:
        trainer.bad_images.add(bad)
        if len(targets) == 0:
            continue
        with placement.autocast():
            logits = trainer.model(images)
        log_probs = torch.log_softmax(logits.float(), 1)
        probs = log_probs.exp()
        sums.add(-log_probs.gather(1, targets[:, None]).sum(), probs, targets)
        for i, p in zip(indices, probs.cpu(), strict=True):
            path, label = split.samples[i]
            best = int(p.argmax())
            rows.append({"image": str(path.relative_to(root)), "label": labels[label],
                         "predicted": labels[best], "probability": float(p[best])})
    return sums.result(), rows


def build_trainer(hps: config.Hyperparameters, world: distributed.World,
                  placement: Placement, n_classes: int, workers: int = 0) -> Trainer:
    model = build_model(hps.model, n_classes, hps.hidden_units, hps.dropout, hps.pretrained,
                        hps.freeze_backbone, paths.channel_dir("weights")).to(placement.device)
    if placement.channels_last:
        model = model.to(memory_format=torch.channels_last)
    training_model = model
    if world.distributed:
        ids = [placement.device.index] if placement.device.type == "cuda" else None
        training_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if hps.compile:
        if not (shutil.which("g++") and shutil.which("gcc")):
            raise UserError("compile=true needs a C compiler (gcc and g++) for the kernels "
                            "torch.compile generates, and this image has none; set "
                            "compile=false, or build the image from docker/train.Dockerfile, "
                            "which installs them.")
        # dynamic=False: one graph for the full batches; the epoch's shorter last batch
        # gets a graph of its own once, instead of turning every batch dynamic.
        training_model = torch.compile(training_model, dynamic=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=hps.label_smoothing)
    optimizer = make_optimizer(hps, model.parameters())
    bare_model = functools.partial(build_model, hps.model, n_classes, hps.hidden_units,
                                   hps.dropout, pretrained=False, freeze_backbone=False,
                                   weights_dir=None)
    return Trainer(
        hps=hps, world=world, placement=placement, model=model, training_model=training_model,
        criterion=criterion, optimizer=optimizer, scheduler=make_scheduler(hps, optimizer),
        scaler=torch.amp.GradScaler(placement.device.type,
                                    enabled=placement.amp == torch.float16),
        observers=observers.Observers(debugger.observers(model, criterion, bare_model,
                                                         enabled=world.main)),
        stop_request=StopRequest(), bad_images=data.BadImages(hps.bad_images),
        feed=make_feed(hps, placement, workers))


@dataclass
class Progress:
    """Where the epoch loop starts: epoch 1, or where a checkpoint left off (the
    epochs done, and the steps and running sums of an epoch cut short)."""

    history: list = field(default_factory=list)
    first_epoch: int = 1
    start_step: int = 0
    partial_sums: dict = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict) -> Progress:
        step = state["next_step"]
        return cls(state["history"], state["next_epoch"], step,
                   state["partial"] if step else {})


def resume(trainer: Trainer, labels: list[str]) -> Progress:
    """Restore the checkpoint (rank 0 reads it, every rank gets it)."""
    world = trainer.world
    state = checkpoints.load(config.to_dict(trainer.hps), labels) if world.main else None
    state = distributed.broadcast(world, state, world.device)
    if state is None:
        return Progress()
    checkpoints.restore(state, config.to_dict(trainer.hps), trainer.model, trainer.optimizer,
                        trainer.scheduler, trainer.scaler, announce=world.main)
    trainer.bad_images.seen.update(state.get("bad_images", []))
    where = f"epoch {state['next_epoch']}"
    if state["next_step"]:
        where += f", step {state['next_step']}"
    log.info("resuming from checkpoint %s at %s", checkpoints.path(), where)
    return Progress.from_checkpoint(state)


class Loaders(NamedTuple):
    """This rank's batch sources; the training one's sampler sets each epoch's order
    and start (BatchSource.set_epoch)."""

    train: batches.BatchSource
    valid: batches.BatchSource


def make_loaders(hps: config.Hyperparameters, world: distributed.World, feed: batches.Feed,
                 spec: Spec, train_split: data.Split, valid_split: data.Split) -> Loaders:
    """Training batches shuffled per epoch and sharded (padded) across ranks;
    validation sharded in order, unpadded."""
    train_sampler = distributed.EpochSampler(len(train_split.samples), world, hps.seed,
                                             shuffle=True, pad=True)
    train = batches.make_batches(train_split, spec, hps.batch_size, feed, training=True,
                                 augment=hps.augment, seed=hps.seed, sampler=train_sampler)
    valid_sampler = distributed.EpochSampler(len(valid_split.samples), world, hps.seed,
                                             shuffle=False, pad=False)
    valid = batches.make_batches(valid_split, spec, hps.test_batch_size, feed, training=False,
                                 seed=hps.seed, sampler=valid_sampler)
    return Loaders(train, valid)


def run(hps: config.Hyperparameters, cluster: Cluster) -> dict | None:
    """Train, evaluate and save; returns the metrics record (on rank 0)."""
    world = distributed.init()
    try:
        return _run(hps, cluster, world)
    except RuntimeError as exc:
        # A loader worker's death, which DataLoader raises wherever the loop is (SIGCHLD).
        batches.fail_if_stalled(exc, "batch", hps.loader_timeout)
        raise
    finally:
        distributed.shutdown(world)


def _run(hps: config.Hyperparameters, cluster: Cluster,
         world: distributed.World) -> dict | None:
    if not world.main:
        logging.getLogger().setLevel(logging.WARNING)
    seed_everything(hps.seed + world.rank)
    placement = placement_for(hps, world)
    workers = loader_workers(hps, cluster, world)
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
             len(test_split.samples) if test_split else "no", placement.device, world.size,
             workers, str(placement.amp).replace("torch.", "") if placement.amp else "off")

    spec = Spec.for_size(hps.image_size)
    trainer = build_trainer(hps, world, placement, len(labels), workers)
    log.info("training batches: %s", trainer.feed.describe())
    progress = resume(trainer, labels)
    class_counts = [0] * len(labels)
    for _, label in train_split.samples:
        class_counts[label] += 1
    trainer.observers.append(recording.Recorder(
        trainer.model, main=world.main, enabled=hps.record, interval=hps.debug_interval,
        nan_loss=hps.nan_loss, device=placement.device, amp=placement.amp, lr=hps.lr,
        tensorboard_dir=paths.tensorboard_dir(), out_dir=out_dir,
        class_counts=dict(zip(labels, class_counts, strict=True)),
        hyperparameters=config.to_dict(hps)))

    loaders = make_loaders(hps, world, trainer.feed, spec, train_split, valid_split)
    trainer.steps_per_epoch = len(loaders.train)
    if hps.max_steps_per_epoch:
        trainer.steps_per_epoch = min(trainer.steps_per_epoch, hps.max_steps_per_epoch)
    try:
        history = train_epochs(trainer, loaders, progress, labels)
    except recording.NonFiniteLoss:
        trainer.observers.close()  # the verdicts and statistics up to the bad step
        if world.main:
            report.write_safely(out_dir)
        raise
    trainer.stop_request.training_done(trainer.should_stop(0))  # a SIGTERM now stops at once
    trainer.observers.end_training()
    # A bad image met by two ranks (in different epochs' shards) counts once.
    trainer.bad_images.seen = distributed.union_all(world, trainer.bad_images.seen)
    distributed.barrier(world)
    if not world.main:
        trainer.observers.close()
        return None
    return finish(trainer, spec, labels, folders, history,
                  (train_split, valid_split, test_split), out_dir, model_dir)


def train_epochs(trainer: Trainer, loaders: Loaders, progress: Progress,
                 labels: list[str]) -> list[dict]:
    """The epoch loop: train, validate, log, record, checkpoint; returns the history."""
    hps, world, device = trainer.hps, trainer.world, trainer.placement.device
    history = progress.history
    start_step, partial_sums = progress.start_step, progress.partial_sums
    gpu = profiling.GpuSampler(device)
    window = profiling.parse_window(hps.profile_steps)
    with profiling.trace(window, paths.tensorboard_dir(), world.rank, device) as profiler:
        for epoch in range(progress.first_epoch, hps.epochs + 1):
            lr = trainer.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            train_sums = RunningSums(device, **partial_sums)
            gpu.epoch = epoch
            with gpu:
                perf, steps = train_one_epoch(trainer, loaders.train, epoch, start_step,
                                              train_sums, profiler)
            if trainer.should_stop(0):
                trainer.save_checkpoint(epoch, steps, train_sums.state(), history, labels)
                trainer.observers.end_training()
                raise Stopped(f"SIGTERM at epoch {epoch}, step {steps}; checkpoint saved in "
                              f"{paths.checkpoint_dir()}. Run the job again to resume.")
            train_metrics = train_sums.result(world)
            trainer.scheduler.step()
            valid_metrics, per_class = evaluate(trainer, loaders.valid, len(labels))
            seconds = time.perf_counter() - started
            log.info(metrics.epoch_line(epoch, hps.epochs, train_metrics, valid_metrics, lr,
                                        seconds))
            gpu_use = gpu.summary()
            log.info(profiling.perf_line(epoch, hps.epochs, {**perf, **gpu_use}))
            row = {"epoch": epoch, "train_loss": train_metrics["loss"],
                   "train_acc": train_metrics["acc"], "valid_loss": valid_metrics["loss"],
                   "valid_acc": valid_metrics["acc"], "lr": lr,
                   "train_images": train_metrics["images"],
                   "valid_images": valid_metrics["images"], "seconds": round(seconds, 3),
                   "images_per_s": round(perf["images_per_s"] * world.size, 1),
                   "data_wait": round(perf["data_wait"], 3), "bound": perf["bound"],
                   "data_path": perf["data_path"], "workers": perf["workers"],
                   "shm_mib": perf["shm_mib"]}
            row.update({k: round(v, 3) for k, v in gpu_use.items()})
            history.append(row)
            trainer.observers.end_epoch(row, per_class, gpu.series)
            trainer.save_checkpoint(epoch + 1, 0, {}, history, labels)
            start_step, partial_sums = 0, {}
    return history


def finish(trainer: Trainer, spec: Spec, labels, folders, history, splits, out_dir,
           model_dir) -> dict:
    """Test predictions, rule verdicts and the exported model (rank 0)."""
    hps = trainer.hps
    train_split, valid_split, test_split = splits
    test, predictions, evaluated = None, [], None
    if test_split is not None:
        test, predictions = predict_split(trainer, test_split, spec,
                                          paths.channel_dir("test"), labels)
        log.info(metrics.test_line(test))
        artifacts.save_json(out_dir / "test_predictions.json", predictions)
        evaluated = ("test", paths.channel_dir("test"))
    elif hps.record:  # the report's confusion matrix comes from validation instead
        root = valid_split.samples[0][0].parents[1] if valid_split.samples else None
        _, predictions = predict_split(trainer, valid_split, spec, root, labels) if root else (
            None, [])
        artifacts.save_json(out_dir / "valid_predictions.json", predictions)
        evaluated = ("valid", root)
    trainer.observers.report(out_dir)

    dropped = len(trainer.bad_images.seen)  # training's, from every rank, and the test set's
    skipped = {s.name: len(s.skipped) for s in splits if s}
    if dropped or any(skipped.values()):
        log.warning("images skipped as unreadable: %d at scan time %s, %d while decoding",
                    sum(skipped.values()), skipped, dropped)
    last = history[-1] if history else {"valid_loss": math.nan, "valid_acc": math.nan}
    summary = {"valid_loss": last["valid_loss"], "valid_acc": last["valid_acc"],
               "epochs": hps.epochs}
    if test:
        summary.update(test_loss=test["loss"], test_acc=test["acc"])

    exported = trainer.observers.before_export(trainer.model)
    artifacts.save_model(exported, model_dir, labels=labels, class_folders=folders, spec=spec,
                         architecture=hps.model, hyperparameters=config.to_dict(hps),
                         summary=summary)
    record = {"history": history, "test": test, "summary": summary, "labels": labels,
              "processes": trainer.world.size,
              "images": {"train": len(train_split.samples), "valid": len(valid_split.samples),
                         "test": len(test_split.samples) if test_split else 0},
              "skipped_images": {"scan": skipped, "decode": dropped}}
    artifacts.save_metrics(out_dir, record)
    if hps.record:
        trainer.observers.close(test)
        report.thumbnails_safely(out_dir, predictions, evaluated)
        report.write_safely(out_dir)
    # Worded unlike the METRIC lines so the metric regexes never count it twice.
    log.info("finished: validation accuracy %.4f%s", last["valid_acc"],
             f", test accuracy {test['acc']:.4f}" if test else "")
    return record

