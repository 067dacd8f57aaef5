"""How an image file becomes model input: the single definition for both images.

Training uses ``load_rgb`` for its augmented images and, for validation and test,
``eval_uint8`` (the pixels of ``load_eval_array``, normalized on its device with
``normalize``'s arithmetic); the serving image's decoding follows the same steps with
these same functions, so an endpoint sees exactly what evaluation saw. Only Pillow and
NumPy: no torch. Unreadable images raise ``ImageTooLarge`` or ``UnreadableImage``
(both ValueErrors).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageTooLarge, UnreadableImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Refuse images with more pixels than this before decoding them (decompression bombs).
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Spec:
    """What the model expects; part of the model card (model_card.py)."""

    image_size: int = 224
    resize_size: int = 256  # shorter side before the center crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_size(cls, image_size: int) -> "Spec":
        return cls(image_size=image_size, resize_size=round(image_size / 0.875))

    @classmethod
    def from_dict(cls, data: dict) -> "Spec":
        return cls(image_size=int(data["image_size"]), resize_size=int(data["resize_size"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]))

    def to_dict(self) -> dict:
        return asdict(self)


def open_image(source: bytes | str | Path) -> Image.Image:
    """Open without decoding; refuses oversized images (ImageTooLarge, UnreadableImage)."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, ValueError, struct.error ...
        raise UnreadableImage(f"not a readable image: {exc}") from None
    if img.width * img.height > MAX_PIXELS:
        raise ImageTooLarge(f"image too large: {img.width}x{img.height} pixels "
                         f"(limit {MAX_PIXELS:,})")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and bring any mode (L, P, RGBA, CMYK, 16-bit) to 8-bit RGB.

    Works in place where it can: an upright RGB photo comes back as the same object,
    without the two full-size copies that exif_transpose and convert would make.
    """
    ImageOps.exif_transpose(img, in_place=True)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        img = Image.fromarray(np.clip(arr * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_rgb(source: bytes | str | Path, min_side: int = 0) -> Image.Image:
    """Decode a JPEG/PNG (bytes or path) to RGB. Raises ValueError if it cannot.

    With ``min_side``, a JPEG is decoded straight to 1/2, 1/4 or 1/8 of its size
    (libjpeg's DCT scaling) as long as both sides stay at least ``min_side`` pixels.
    The evaluation transform passes its resize size, which it would shrink the image
    to anyway: a 768x576 photo then costs half the decoding time
    (docs/benchmarks.md). Training's random crops decode at full size.
    """
    img = open_image(source)
    try:
        if min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img.load()
        return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same to callers
        raise UnreadableImage(f"image data is corrupt or truncated: {exc}") from None


def resize_crop(img: Image.Image, spec: Spec) -> Image.Image:
    """Shorter side to ``resize_size`` (bilinear, antialiased), then a centered square crop."""
    w, h = img.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_long = int(spec.resize_size * long_ / short)
    size = (spec.resize_size, new_long) if w <= h else (new_long, spec.resize_size)
    img = img.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - spec.image_size) / 2.0))
    top = int(round((size[1] - spec.image_size) / 2.0))
    return img.crop((left, top, left + spec.image_size, top + spec.image_size))


def normalize(img: Image.Image, spec: Spec) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32, scaled to [0, 1] and standardized."""
    arr = np.asarray(img, dtype=np.float32) * (1.0 / 255.0)
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def eval_array(img: Image.Image, spec: Spec) -> np.ndarray:
    """The evaluation transform: an RGB image to a normalized CHW float32 array."""
    return normalize(resize_crop(img, spec), spec)


def eval_uint8(img: Image.Image, spec: Spec) -> np.ndarray:
    """The evaluation transform up to its pixels: the resized and cropped RGB image as
    HWC uint8, for a caller that normalizes elsewhere (training, on its device) with
    ``normalize``'s arithmetic: float32, times 1/255, minus mean, divided by std."""
    return np.asarray(resize_crop(img, spec), dtype=np.uint8)


def load_eval_array(source: bytes | str | Path, spec: Spec) -> np.ndarray:
    """An image file to model input, exactly as evaluation and the endpoint see it."""
    return eval_array(load_rgb(source, min_side=spec.resize_size), spec)
