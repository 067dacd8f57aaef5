"""What one image becomes before it is batched: the training and evaluation presets.

As in torchvision's references/classification (presets.py), the transforms live
here and the data factory (batches.py) applies them. Every preset stops at uint8
pixels, height x width x RGB as Pillow gives them: scaling to [0, 1] and the
normalization run once per batch on the training device (batches.normalize),
so loader workers move 4x fewer bytes than float32 images would take, and a
batch laid out NHWC is already channels-last for the GPU.

Training's random crop is drawn by ``random_crop`` from an image's size alone, so
the GPU data path draws the same crops from a JPEG's header as the CPU path draws
from the decoded image (same seed, same crops), and only the resampling differs.
Evaluation is the contract's own ``resize_crop`` (dogbreed_contract.preprocess),
exactly what the endpoint does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from dogbreed_contract.preprocess import Spec, eval_uint8

# RandomResizedCrop's share of the image area and aspect-ratio range.
SCALE = (0.35, 1.0)
RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Crop:
    """A region of an image, in pixels (it may have fractions: the evaluation crop's
    region in the original image), and whether to mirror it."""

    top: float
    left: float
    height: float
    width: float
    flip: bool = False


def random_crop(width: int, height: int) -> Crop:
    """RandomResizedCrop's region and RandomHorizontalFlip's coin, drawn from torch's
    random generator in the order and way torchvision draws them (``get_params``:
    ten tries at a random area and aspect ratio, then the central crop)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(RATIO))
    region = None
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(SCALE[0], SCALE[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            region = (top, left, h, w)
            break
    if region is None:  # the central crop, at the aspect ratio's nearest bound
        in_ratio = width / height
        if in_ratio < min(RATIO):
            w, h = width, int(round(width / min(RATIO)))
        elif in_ratio > max(RATIO):
            h, w = height, int(round(height * max(RATIO)))
        else:
            w, h = width, height
        region = ((height - h) // 2, (width - w) // 2, h, w)
    flip = bool(torch.rand(1).item() < 0.5)
    return Crop(*region, flip=flip)


def center_crop(width: int, height: int, spec: Spec) -> Crop:
    """The evaluation crop as a region of the original image, for training without
    augmentation on the GPU data path: the geometry of the contract's resize_crop
    (shorter side to resize_size, the longer one truncated to whole pixels, the
    centered image_size square at rounded offsets), mapped back to the original."""
    short, long_ = min(width, height), max(width, height)
    new_long = int(spec.resize_size * long_ / short)
    new_w, new_h = (spec.resize_size, new_long) if width <= height else (new_long,
                                                                          spec.resize_size)
    left = int(round((new_w - spec.image_size) / 2.0))
    top = int(round((new_h - spec.image_size) / 2.0))
    sx, sy = width / new_w, height / new_h
    return Crop(top * sy, left * sx, spec.image_size * sy, spec.image_size * sx)


def _hwc(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


class EvalPreset:
    """Validation and test: the contract's resize and center crop, as uint8 HWC.

    ``min_side`` lets a JPEG decode at reduced scale (load_rgb), as the endpoint does.
    """

    def __init__(self, spec: Spec):
        self.spec = spec
        self.min_side = spec.resize_size

    def __call__(self, img: Image.Image) -> np.ndarray:
        return eval_uint8(img, self.spec)


class TrainPreset:
    """Training: RandomResizedCrop to image_size (antialiased bilinear, as torchvision
    does it on a Pillow image) and a horizontal flip at random, as uint8 HWC; without
    augmentation, the evaluation preset."""

    def __init__(self, spec: Spec, augment: bool):
        self.spec, self.augment = spec, augment
        self.min_side = 0 if augment else spec.resize_size
        self._eval = EvalPreset(spec)

    def __call__(self, img: Image.Image) -> np.ndarray:
        if not self.augment:
            return self._eval(img)
        crop = random_crop(*img.size)
        size = (self.spec.image_size, self.spec.image_size)
        img = img.crop((crop.left, crop.top, crop.left + crop.width, crop.top + crop.height))
        img = img.resize(size, Image.Resampling.BILINEAR)
        if crop.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _hwc(img)
