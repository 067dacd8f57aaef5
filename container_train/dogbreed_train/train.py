"""The training program: read hyperparameters and channels, fine-tune, save artifacts.

Run it as ``python -m dogbreed_train`` (``--help`` lists the hyperparameters).
Inside the image the SageMaker training toolkit starts it (see launch.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import artifacts, config, data, metrics, paths
from .models import build_model
from .preprocess import Spec, load_rgb

log = logging.getLogger("dogbreed_train")


@dataclass
class Runtime:
    device: torch.device
    workers: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_count() -> int:
    return int(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1)


def runtime_for(hps: config.Hyperparameters) -> Runtime:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = hps.workers if hps.workers >= 0 else max(0, min(cpu_count() - 1, 8))
    return Runtime(device, workers)


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


def train_one_epoch(model, loader, criterion, optimizer, rt: Runtime, max_steps: int) -> dict:
    model.train()
    total_loss, correct, seen, dropped = 0.0, 0, 0, 0
    for step, (x, y, n_bad) in enumerate(loader):
        if max_steps and step >= max_steps:
            break
        dropped += n_bad
        if len(y) == 0:
            continue
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1),
            "images": seen, "dropped": dropped}


@torch.no_grad()
def evaluate(model, loader, rt: Runtime) -> dict:
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen, dropped = 0.0, 0, 0, 0
    for x, y, n_bad in loader:
        dropped += n_bad
        if len(y) == 0:
            continue
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        logits = model(x)
        total_loss += criterion(logits, y).item()
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1),
            "images": seen, "dropped": dropped}


@torch.no_grad()
def predict_split(model, split: data.Split, spec: Spec, rt: Runtime, root, labels,
                  batch_size: int) -> list[dict]:
    """Per-image predictions of the evaluation path, for error analysis and for checking
    that the endpoint answers the same (tests/test_serve_container.py)."""
    model.eval()
    transform = data.EvalTransform(spec)
    rows = []
    for start in range(0, len(split.samples), batch_size):
        chunk, tensors = [], []
        for path, label in split.samples[start:start + batch_size]:
            try:
                tensors.append(transform(load_rgb(path)))
                chunk.append((path, label))
            except ValueError:
                continue
        if not tensors:
            continue
        probs = torch.softmax(model(torch.stack(tensors).to(rt.device)).float(), 1).cpu()
        for (path, label), p in zip(chunk, probs):
            best = int(p.argmax())
            rows.append({"image": str(path.relative_to(root)), "label": labels[label],
                         "predicted": labels[best], "probability": float(p[best])})
    return rows


def run(hps: config.Hyperparameters) -> dict:
    """Train, evaluate and save; returns the metrics record."""
    seed_everything(hps.seed)
    rt = runtime_for(hps)
    model_dir, out_dir = paths.model_dir(), paths.output_data_dir()
    artifacts.check_writable(model_dir, out_dir)
    log.info("hyperparameters: %s", json.dumps(config.to_dict(hps), sort_keys=True))

    folders, train_split, valid_split, test_split = data.discover(
        hps.valid_fraction, hps.seed, hps.bad_images)
    labels = [data.label_name(f) for f in folders]
    log.info("data: %d classes, %d train / %d valid / %s test images; device %s, %d workers",
             len(labels), len(train_split.samples), len(valid_split.samples),
             len(test_split.samples) if test_split else "no", rt.device, rt.workers)

    spec = Spec.for_size(hps.image_size)
    weights_dir = paths.channel_dir("weights")
    model = build_model(hps.model, len(labels), hps.hidden_units, hps.dropout,
                        hps.pretrained, hps.freeze_backbone, weights_dir).to(rt.device)

    common = dict(workers=rt.workers, bad_images=hps.bad_images, seed=hps.seed,
                  pin_memory=rt.device.type == "cuda")
    train_loader = data.loader(train_split, data.train_transform(spec, hps.augment),
                               hps.batch_size, shuffle=True, **common)
    eval_tf = data.EvalTransform(spec)
    valid_loader = data.loader(valid_split, eval_tf, hps.test_batch_size, shuffle=False,
                               **common)

    criterion = nn.CrossEntropyLoss(label_smoothing=hps.label_smoothing)
    optimizer = make_optimizer(hps, model.parameters())
    scheduler = make_scheduler(hps, optimizer)

    history = []
    dropped = 0
    for epoch in range(1, hps.epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(model, train_loader, criterion, optimizer, rt,
                             hps.max_steps_per_epoch)
        scheduler.step()
        va = evaluate(model, valid_loader, rt)
        dropped += tr["dropped"] + va["dropped"]
        seconds = time.perf_counter() - start
        log.info(metrics.epoch_line(epoch, hps.epochs, tr, va, lr, seconds))
        history.append({"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                        "valid_loss": va["loss"], "valid_acc": va["acc"], "lr": lr,
                        "seconds": round(seconds, 3)})

    test = None
    if test_split is not None:
        test_loader = data.loader(test_split, eval_tf, hps.test_batch_size, shuffle=False,
                                  **common)
        test = evaluate(model, test_loader, rt)
        dropped += test["dropped"]
        log.info(metrics.test_line(test))
        predictions = predict_split(model, test_split, spec, rt, paths.channel_dir("test"),
                                    labels, hps.test_batch_size)
        artifacts.save_json(out_dir / "test_predictions.json", predictions)

    skipped = {s.name: len(s.skipped) for s in (train_split, valid_split, test_split) if s}
    if dropped or any(skipped.values()):
        log.warning("images skipped as unreadable: %d at scan time %s, %d while decoding",
                    sum(skipped.values()), skipped, dropped)
    last = history[-1]
    summary = {"valid_loss": last["valid_loss"], "valid_acc": last["valid_acc"],
               "epochs": hps.epochs}
    if test:
        summary.update(test_loss=test["loss"], test_acc=test["acc"])

    artifacts.save_model(model, model_dir, labels=labels, class_folders=folders, spec=spec,
                         architecture=hps.model, hyperparameters=config.to_dict(hps),
                         summary=summary)
    record = {"history": history, "test": test, "summary": summary, "labels": labels,
              "images": {"train": len(train_split.samples), "valid": len(valid_split.samples),
                         "test": len(test_split.samples) if test_split else 0},
              "skipped_images": {"scan": skipped, "decode": dropped}}
    artifacts.save_metrics(out_dir, record)
    # Worded unlike the METRIC lines so the metric regexes never count it twice.
    log.info("finished: validation accuracy %.4f%s", last["valid_acc"],
             f", test accuracy {test['acc']:.4f}" if test else "")
    return record
