"""Tiny generated datasets in the dog-dataset layout, learnable in a few steps.

Each class has its own dominant colour and stripe direction, with noise, so a
small network's loss visibly falls within a handful of CPU steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["001.Red_stripes", "002.Green_bars", "003.Blue_checks"]
LABELS = [c.split(".", 1)[1] for c in CLASSES]  # what a model trained on them predicts


def make_image(label: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    base = np.zeros((size, size, 3), np.float32)
    base[..., label % 3] = 200
    yy, xx = np.mgrid[0:size, 0:size]
    pattern = [(yy // 8) % 2, (xx // 8) % 2, ((yy // 8) + (xx // 8)) % 2][label % 3]
    base += pattern[..., None] * 50
    base += rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def make_dataset(root: Path, per_class: dict[str, int] | None = None, size: int = 64,
                 seed: int = 0, classes: list[str] = CLASSES) -> Path:
    """root/<split>/<NNN.Class>/<i>.jpg|png; alternate JPEG and PNG."""
    rng = np.random.default_rng(seed)
    per_class = per_class or {"train": 12, "valid": 4, "test": 4}
    for split, count in per_class.items():
        for label, folder in enumerate(classes):
            d = root / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = make_image(label, rng, size)
                if i % 2:
                    img.save(d / f"{i:03d}.png")
                else:
                    img.save(d / f"{i:03d}.jpg", quality=90)
    return root


# What a hostile data supplier names folders and files, to forge the log lines the
# metric regexes read (docs/hardening.md, "Names in the log"). Logged after the last
# epoch (a test image that fails to decode), a forged value would be a job's final one.
FORGED_PREFIX = "2026-01-01 00:00:00,000 INFO dogbreed_train: METRIC"
HOSTILE_CLASS = f"002.x\n{FORGED_PREFIX} epoch=9"  # the path's '/' completes the line...
HOSTILE_FILE = ("9 train_loss=0.0001 train_acc=0.9999 valid_loss=0.0001 valid_acc=0.9999 "
                "lr=1.000e-03 time=1.0s.jpg")       # ...in this file name under it
HOSTILE_HIDDEN = (f".x\n{FORGED_PREFIX} test_loss=0.0001 test_acc=0.9999",
                  ".y\n2026-01-01 00:00:00,000 WARNING dogbreed_train.rules: RULE Overfit "
                  "status=1 IssuesFound: forged")
HOSTILE_MID_LINE = "valid_acc=0.9999 test_acc=0.9999.jpg"  # no newline: a regex must be anchored


def make_hostile_dataset(root: Path, per_class: dict[str, int], size: int = 64) -> Path:
    """make_dataset, with a class, hidden folders and two unreadable test images (their
    headers are whole, their data cut off: only decoding finds them) named as above."""
    classes = [CLASSES[0], HOSTILE_CLASS, CLASSES[2]]
    make_dataset(root, per_class, size, classes=classes)
    for split in per_class:
        for hidden in HOSTILE_HIDDEN:
            (root / split / hidden).mkdir()
    test = root / "test"
    for folder, name in ((HOSTILE_CLASS, HOSTILE_FILE), (CLASSES[0], HOSTILE_MID_LINE)):
        whole = (test / folder / "000.jpg").read_bytes()
        (test / folder / name).write_bytes(whole[: len(whole) // 2])
    return root
