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
