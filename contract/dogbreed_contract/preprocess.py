"""How an image file becomes model input: the single definition for both images.

Training uses ``load_rgb`` for its augmented images and, for validation and test,
``eval_uint8`` (the pixels of ``load_eval_array``, normalized on its device with
``normalize``'s arithmetic); the serving image's decoding runs these same functions on
each request body, so an endpoint sees exactly what evaluation saw. Only Pillow and
NumPy: no torch. Unreadable images raise ``ImageTooLarge`` or ``UnreadableImage``
(both ValueErrors).

Serving bounds each request's work, and so opens the body itself (``open_image``
with the formats it accepts, through a file object of its own), drafts it, checks its
limits, then hands the open image to ``load_rgb``. The ``check`` callback that
``load_rgb`` and ``to_rgb`` take is called between their steps (and between the
strips of a 16-bit conversion): serving's deadline raises ``DecodeStopped`` from it,
which passes through untouched, never as an ImageError.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import DecodeStopped, ImageTooLarge, UnreadableImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Refuse images with more pixels than this before decoding them (decompression bombs).
MAX_PIXELS = 40_000_000
TOO_LARGE = f"image too large: the limit is {MAX_PIXELS:,} pixels"
# Modes with more than 8 bits per pixel, brought to 8-bit 'L' by to_8bit.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# Rows of a wide image converted at once (to_8bit): about a megapixel, 8 MB of float64.
STRIP_PIXELS = 1 << 20


def no_check() -> None:
    """The default ``check``: nothing stops a decode."""


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


def open_image(source: bytes | str | Path | BinaryIO,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open without decoding; refuses oversized images (ImageTooLarge, UnreadableImage).

    ``formats`` limits the formats Pillow tries (serving: the one the body's magic
    bytes name). A file object is read as it is: serving's reads check its deadline.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        img = Image.open(fp, formats=formats)
    except DecodeStopped:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge(TOO_LARGE) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, ValueError, struct.error ...
        raise UnreadableImage(f"not a readable image: {exc}") from None
    if img.width * img.height > MAX_PIXELS:
        raise ImageTooLarge(f"image too large: {img.width}x{img.height} pixels, the limit "
                            f"is {MAX_PIXELS:,} pixels")
    return img


def draft(img: Image.Image, min_side: int) -> None:
    """Let a JPEG decode straight to 1/2, 1/4 or 1/8 of its size (libjpeg's DCT
    scaling) as long as both sides stay at least ``min_side`` pixels; 0 or a PNG: as
    it is. The evaluation transform passes its resize size, which it would shrink the
    image to anyway: a 768x576 photo then costs half the decoding time
    (docs/benchmarks.md). Training's random crops decode at full size.
    """
    if min_side and img.format == "JPEG":
        img.draft("RGB", (min_side, min_side))


def to_8bit(img: Image.Image, check: Callable[[], None] = no_check) -> Image.Image:
    """A 16- or 32-bit greyscale image (WIDE_MODES) to 8-bit 'L'.

    Integers scale by 255/65535 when any value is above 255 (else they are already
    0-255), floats by 255; both clip to 0-255 in float64 (NaN becomes 0). Strip by
    strip, calling ``check`` before each: a 40-megapixel image needs a few MiB of
    float64 instead of three full-size copies (about 1 GB). The new image carries no
    metadata, so EXIF orientation must be applied before (to_rgb does).
    """
    arr = np.asarray(img)
    floats = img.mode == "F"
    scale = 255.0 if floats else 255.0 / (65535.0 if arr.max() > 255 else 255.0)
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, arr.shape[1]))
    for top in range(0, arr.shape[0], rows):
        check()
        strip = arr[top:top + rows].astype(np.float64)
        if floats:
            strip = np.nan_to_num(strip)
        out[top:top + rows] = np.clip(strip * scale, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def opaque_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit image of any mode (1, L, P, RGBA, LA, CMYK ...) as RGB; transparent
    pixels become white. An RGB image comes back as the same object."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def to_rgb(img: Image.Image, check: Callable[[], None] = no_check) -> Image.Image:
    """Apply EXIF orientation and bring any mode (L, P, RGBA, CMYK, 16-bit) to 8-bit RGB,
    calling ``check`` after each step.

    Works in place where it can: an upright RGB photo comes back as the same object,
    without the two full-size copies that exif_transpose and convert would make.
    """
    ImageOps.exif_transpose(img, in_place=True)
    check()
    if img.mode in WIDE_MODES:
        img = to_8bit(img, check)
        check()
    img = opaque_rgb(img)
    check()
    return img


def load_rgb(source: bytes | str | Path | Image.Image, min_side: int = 0,
             check: Callable[[], None] = no_check) -> Image.Image:
    """Decode a JPEG/PNG (bytes, a path, or an image open_image opened) to RGB.
    Raises ValueError if it cannot.

    With ``min_side``, a JPEG decodes at reduced scale (``draft``). An image already
    open decodes as it is, drafted or not: serving drafts it itself, before it reserves
    the memory the decode needs. ``check`` is called after each step (to_rgb).
    """
    img = source if isinstance(source, Image.Image) else open_image(source)
    try:
        draft(img, min_side)
        img.load()
        check()
        return to_rgb(img, check)
    except DecodeStopped:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLarge(TOO_LARGE) from None
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
