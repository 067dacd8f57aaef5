"""Channels in class-subfolder layout, as in the dog dataset, and their unreadable images.

``train/001.Affenpinscher/x.jpg`` is an image of class ``Affenpinscher``. The class
list comes from the train channel (sorted by folder name); valid and test may hold
a subset of those classes but no others. Hidden folders and files and ``__MACOSX``
(what a zip made on a Mac leaves) are not classes or images; a train class without
images, or two folders that give the same label, would make a wrong model and are
refused. Only JPEG and PNG files are read, as the endpoint takes only those; other
files are counted and reported. Their batches come from batches.py.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dogbreed_contract import LayoutError, layout
from dogbreed_contract.layout import class_folders, files_in, is_class_folder
from dogbreed_contract.media import SUFFIXES_SHOWN, is_image_file
from dogbreed_contract.preprocess import open_image

from . import paths
from .errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One channel's images: paths with class indices, and what was left out."""

    name: str
    samples: list[tuple[Path, int]]
    skipped: list[str] = field(default_factory=list)


def scan(name: str, root: Path, classes: list[str], bad_images: str) -> Split:
    """Every image under root/<class>/; headers are checked now, pixels when loaded."""
    index = {folder: i for i, folder in enumerate(classes)}
    split = Split(name, [])
    ignored = sorted(p.name for p in root.iterdir() if p.is_dir() and not is_class_folder(p))
    if ignored:
        log.info("%s: folder(s) %s are not classes: ignored", name, ", ".join(ignored))
    other_formats: Counter[str] = Counter()
    other_example = ""
    folders = class_folders(root)
    unknown = layout.unknown_classes(folders, classes)
    if unknown:
        raise UserError(
            f"channel '{name}' has class folder '{unknown[0]}' that the train channel does "
            f"not have; every class in {name} must also be in train.")
    for folder in folders:
        for path in files_in(root / folder):
            if not is_image_file(path):
                other_formats[path.suffix.lower() or "(no suffix)"] += 1
                other_example = other_example or str(path.relative_to(root))
                continue
            try:
                with open_image(path):
                    pass
            except ValueError as exc:
                if bad_images == "fail":
                    raise UserError(
                        f"unreadable image {name}/{path.relative_to(root)}: {exc}. Remove it, "
                        "or set bad-images=skip to train without it.") from None
                split.skipped.append(f"{path.relative_to(root)}: {exc}")
                continue
            split.samples.append((path, index[folder]))
    not_read = ""
    if other_formats:
        counts = ", ".join(f"{n} {suffix}" for suffix, n in sorted(other_formats.items()))
        not_read = (f"{sum(other_formats.values())} file(s) not read, as they are not "
                    f"{SUFFIXES_SHOWN} ({counts}; e.g. {other_example})")
    if not split.samples:
        raise UserError(
            f"channel '{name}' at {root} has no readable {SUFFIXES_SHOWN} images in its class "
            f"folders{'; ' + not_read if not_read else ''}. Expected layout: "
            "<channel>/<NNN.ClassName>/<image>.jpg")
    if not_read:
        log.warning("%s: %s. Convert them to JPEG or PNG to train on them; the endpoint "
                    "takes only those two formats.", name, not_read)
    if split.skipped:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s", name, len(split.skipped),
                    split.skipped[0])
    return split


def discover(valid_fraction: float, seed: int, bad_images: str
             ) -> tuple[list[str], Split, Split, Split | None]:
    """Find the channels: (class folders, train, valid, test or None)."""
    train_root = paths.channel_dir("train")
    if not train_root.is_dir():
        raise UserError(
            f"the required 'train' channel is missing (looked in {train_root}). Give the "
            "job a 'train' input whose folders are classes: train/001.Affenpinscher/*.jpg")
    classes = class_folders(train_root)
    try:
        layout.check_train_classes(classes, where=f"the 'train' channel at {train_root}")
    except LayoutError as exc:
        raise UserError(str(exc)) from None
    train = scan("train", train_root, classes, bad_images)
    check_every_class_has_images(train, classes)

    valid_root = paths.channel_dir("valid")
    if valid_root.is_dir() and any(valid_root.iterdir()):
        valid = scan("valid", valid_root, classes, bad_images)
    else:
        train, valid = split_off(train, valid_fraction, seed)
        log.info("no valid channel: holding out %d of %d train images (valid-fraction=%s)",
                 len(valid.samples), len(valid.samples) + len(train.samples), valid_fraction)

    test_root = paths.channel_dir("test")
    test = None
    if test_root.is_dir() and any(test_root.iterdir()):
        test = scan("test", test_root, classes, bad_images)
    return classes, train, valid, test


def check_every_class_has_images(train: Split, classes: list[str]) -> None:
    """A class without a single training image can never be learned, only mispredicted."""
    present = {label for _, label in train.samples}
    empty = [folder for i, folder in enumerate(classes) if i not in present]
    if empty:
        raise UserError(
            f"the 'train' channel's class folder(s) {', '.join(empty)} have no readable "
            f"{SUFFIXES_SHOWN} images, and a class without images can never be learned. Add "
            "images to them, or remove them.")


def split_off(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded, per-class split, so every class keeps images on both sides when it can."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for sample in train.samples:
        by_class.setdefault(sample[1], []).append(sample)
    for label in sorted(by_class):
        items = by_class[label]
        order = rng.permutation(len(items))
        n_held = int(round(len(items) * fraction)) if len(items) > 1 else 0
        n_held = min(max(n_held, 1 if len(items) > 1 else 0), len(items) - 1)
        held += [items[i] for i in order[:n_held]]
        keep += [items[i] for i in order[n_held:]]
    if not held:
        raise UserError("the train channel is too small to hold out a validation split; "
                        "add images or give a 'valid' channel.")
    return Split("train", keep, train.skipped), Split("valid", held)


@dataclass(frozen=True)
class BadImage:
    """An image that passed the scan but failed to decode (e.g. truncated data)."""

    name: str    # channel/class/file, as the user's folders name it
    reason: str


class BadImages:
    """Decode failures seen while training: fail at once (bad-images=fail), or count
    each image once however many epochs meet it (skip). Raised here, in the main
    process, because an error raised in a loader worker reaches the user wrapped
    in a traceback."""

    def __init__(self, mode: str, seen=()):
        self.mode, self.seen = mode, set(seen)

    def add(self, bad: list[BadImage]) -> None:
        for b in bad:
            if self.mode == "fail":
                raise UserError(f"unreadable image {b.name}: {b.reason}. Remove it, or set "
                                "bad-images=skip to train without it.")
            if b.name not in self.seen:
                log.warning("skipping unreadable image %s: %s", b.name, b.reason)
            self.seen.add(b.name)


def sample_name(split: Split, path: Path) -> str:
    return f"{split.name}/{path.parent.name}/{path.name}"
