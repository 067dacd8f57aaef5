"""The demo's embedded dataset: Fashion-MNIST photos in the dog dataset's folder layout.

Fashion-MNIST (Zalando, MIT licence) is 70,000 real 28x28 grayscale photos of
clothing in 10 classes. Debian ships it (package dataset-fashion-mnist), so the
demo needs no download; elsewhere it is fetched once from the dataset's own mirror.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle_boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def source_dir(cache: Path) -> Path:
    """Where the IDX files are: Debian's package, else a one-time download to cache."""
    names = [n for pair in FILES.values() for n in pair]
    if all((DEBIAN_DIR / n).exists() for n in names):
        return DEBIAN_DIR
    if shutil.which("apt-get") and Path("/etc/debian_version").exists() and _is_root():
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
                       check=False, stdout=subprocess.DEVNULL)
        if all((DEBIAN_DIR / n).exists() for n in names):
            return DEBIAN_DIR
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (cache / name).exists():
            print(f"downloading {MIRROR}{name}")
            # a constant http URL (bandit B310)
            urllib.request.urlretrieve(MIRROR + name, cache / f".{name}.part")  # nosec B310
            (cache / f".{name}.part").rename(cache / name)
    return cache


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def read_idx(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(images) as fh:
        x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8)
    return x, y


def prepare(out: Path, per_class: dict[str, int], cache: Path, seed: int = 0,
            progress=None) -> Path:
    """out/{train,valid,test}/NN.Class/*.png; train/valid from the training set,
    test from Fashion-MNIST's own test set. Returns out."""
    src = source_dir(cache)
    train_x, train_y = read_idx(*(src / n for n in FILES["train"]))
    test_x, test_y = read_idx(*(src / n for n in FILES["t10k"]))
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    jobs = []
    for label in range(len(CLASSES)):
        pool = rng.permutation(np.flatnonzero(train_y == label))
        n_train, n_valid = per_class["train"], per_class["valid"]
        jobs += [("train", label, train_x[i]) for i in pool[:n_train]]
        jobs += [("valid", label, train_x[i]) for i in pool[n_train:n_train + n_valid]]
        test_pool = rng.permutation(np.flatnonzero(test_y == label))
        jobs += [("test", label, test_x[i]) for i in test_pool[:per_class["test"]]]
    iterator = progress(jobs, desc="writing images", unit="img") if progress else jobs
    for n, (split, label, pixels) in enumerate(iterator):
        folder = out / split / f"{label + 1:02d}.{CLASSES[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{n:05d}.png")
    return out


def label_of(path: Path) -> str:
    """The class name of a prepared image: '.../03.Pullover/x.png' -> 'Pullover'."""
    return path.parent.name.split(".", 1)[1]
