"""The layout of a data channel: one folder per class, JPEG/PNG images inside.

    train/001.Affenpinscher/Affenpinscher_00001.jpg
    train/002.Afghan_hound/...
    valid/..., test/... (optional; their classes must be train's)

Training's scan of its channels (dogbreed_train/data.py) and the upload script's
check before anything is uploaded (scripts/data.py) apply these same rules, so a
folder the script accepts is one the job accepts.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import LayoutError
from .media import is_image_file

CHANNELS = ("train", "valid", "test")
# Folders that are never classes, besides hidden ones (.git, .ipynb_checkpoints ...).
NOT_CLASSES = frozenset({"__MACOSX"})
# The class number in front of a folder name: '001.', '1_', '12-'.
_NUMBER_PREFIX = re.compile(r"^\d+[._-]")
EXAMPLE = "train/001.Affenpinscher/*.jpg"


def label_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher'; a folder without a number keeps its name."""
    return _NUMBER_PREFIX.sub("", folder, count=1) or folder


def is_class_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and path.name not in NOT_CLASSES


def class_folders(root: Path) -> list[str]:
    """The class folders directly under a channel, sorted: their order is the label order."""
    return sorted(p.name for p in root.iterdir() if is_class_folder(p))


def files_in(folder: Path) -> list[Path]:
    """Every file under a class folder but hidden ones (.DS_Store, ._x.jpg, .git/...)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def image_files(folder: Path) -> list[Path]:
    """The files under a class folder that training reads (by suffix)."""
    return [p for p in files_in(folder) if is_image_file(p)]


def loose_files(root: Path) -> list[str]:
    """Files directly in a channel, outside any class folder (never read)."""
    return sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def check_train_classes(classes: list[str], where: str = "the 'train' channel") -> None:
    """At least two class folders, and no two that give the same label."""
    if not classes:
        raise LayoutError(
            f"{where} has no class folders. Put each class's images in its own folder: "
            f"{EXAMPLE}")
    if len(classes) < 2:
        raise LayoutError(f"{where} has only one class ({classes[0]}); "
                          "a classifier needs at least two class folders.")
    by_label: dict[str, list[str]] = {}
    for folder in classes:
        by_label.setdefault(label_name(folder), []).append(folder)
    same = [folders for folders in by_label.values() if len(folders) > 1]
    if same:
        groups = "; ".join(" and ".join(folders) for folders in same)
        raise LayoutError(
            f"the 'train' channel's class folders {groups} give the same label "
            f"('{label_name(same[0][0])}'), so their predictions could not be told apart. "
            "Merge each group into one folder, or rename them.")


def unknown_classes(classes: list[str], train_classes: list[str]) -> list[str]:
    """Classes of valid or test that train lacks (a model could never predict them)."""
    known = set(train_classes)
    return sorted(c for c in classes if c not in known)


def images_by_class(root: Path, classes: list[str]) -> dict[str, list[Path]]:
    """Each class folder's images (image_files), walked once."""
    return {c: image_files(root / c) for c in classes}


def empty_classes(images: dict[str, list[Path]]) -> list[str]:
    """Class folders without a single image training would read."""
    return [c for c, files in images.items() if not files]

