"""The JPEG the serving benchmark sends, and photo-like JPEGs for the training benchmarks."""
from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DARKNET_DOG = "usr/share/darknet/data/dog.jpg"  # 768x576 photo, Debian package `darknet`


def photo_like(rng: np.random.Generator, size=(500, 375)) -> Image.Image:
    """Smooth colour fields plus grain: compresses and decodes like a photo, unlike noise."""
    w, h = size
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img, np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def photo_dataset(root: Path, per_split: dict[str, int], size: int = 32,
                  classes: int = 3, seed: int = 0) -> Path:
    """root/<split>/<NNN.Class_N>/<i>.jpg of photo-like JPEGs: the channel layout the
    training image reads, for benchmarks that time the machinery, not the learning."""
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for label in range(classes):
            folder = root / split / f"{label + 1:03d}.Class_{label + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                photo_like(rng, (size, size)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def request_image(path: Path | None, cache: Path) -> tuple[bytes, str]:
    """(JPEG bytes, description). A given file; else Debian's darknet dog.jpg (a real
    photo, fetched once with `apt-get download`); else a generated 500x375 JPEG."""
    if path is not None:
        return path.read_bytes(), str(path)
    cached = cache / "dog.jpg"
    system = Path("/") / DARKNET_DOG
    for candidate in (cached, system):
        if candidate.is_file():
            return candidate.read_bytes(), f"darknet dog.jpg ({candidate})"
    if shutil.which("apt-get") and shutil.which("dpkg"):
        with tempfile.TemporaryDirectory() as tmp:
            got = subprocess.run(["apt-get", "download", "darknet"], cwd=tmp,
                                 capture_output=True, timeout=300)
            debs = list(Path(tmp).glob("darknet_*.deb"))
            if got.returncode == 0 and debs:
                subprocess.run(["dpkg", "-x", str(debs[0]), f"{tmp}/x"], check=True)
                cache.mkdir(parents=True, exist_ok=True)
                shutil.copy(f"{tmp}/x/{DARKNET_DOG}", cached)
                return cached.read_bytes(), "darknet dog.jpg (Debian package darknet)"
    buf = io.BytesIO()
    photo_like(np.random.default_rng(0)).save(buf, "JPEG", quality=90)
    return buf.getvalue(), "generated 500x375 photo-like JPEG (no real photo found)"
