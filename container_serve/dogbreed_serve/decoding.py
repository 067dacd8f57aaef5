"""From an HTTP request to model input, or a 4xx that says what was wrong.

Every failure becomes a ``ClientError`` whose message is written here, never a
library's own text: Pillow's messages carry object addresses (``<_io.BytesIO object
at 0x7f...>``) and their own limits. Work is bounded before anything is decoded:
the header alone decides whether the image, and the image the evaluation transform
would resize it to, stay within ``MAX_PIXELS`` (see docs/hardening.md).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
from PIL import Image

from .preprocess import MAX_PIXELS, Spec, load_eval_array

log = logging.getLogger("dogbreed_serve")

# Pillow warns (to the log) about damaged EXIF, truncated reads and large images;
# each request's own answer already says what was wrong with it. Set once for the
# process: warnings.catch_warnings() is not safe in handler.py's decode threads.
warnings.filterwarnings("ignore", module="PIL")

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/x-image"}
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
FORMATS = ("JPEG", "PNG")

NOT_AN_IMAGE = "the body is not a JPEG or PNG image (unrecognised file signature)"
UNREADABLE = "not a readable JPEG or PNG image: the file header is damaged or incomplete"
CORRUPT = "the image data is corrupt or truncated"
UNDECODABLE = "the image could not be decoded: corrupt or unsupported data"


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def media_type(content_type: str | None) -> str:
    """'Image/JPEG; charset=binary' -> 'image/jpeg'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniff(body: bytes) -> str | None:
    for magic, name in MAGIC.items():
        if body.startswith(magic):
            return name
    return None


def shown(value: str, limit: int = 40) -> str:
    """A client's own text, safe to echo back: ASCII only, and short."""
    value = ascii(value)[1:-1]
    return value if len(value) <= limit else value[:limit] + "..."


def too_large(width: int, height: int) -> ClientError:
    return ClientError(413, f"image too large: {width}x{height} pixels, the limit is "
                            f"{MAX_PIXELS:,} pixels")


def check_dimensions(body: bytes, spec: Spec) -> None:
    """Refuse, from the header alone, images whose decoding or resizing is unbounded.

    The evaluation transform scales the shorter side to ``spec.resize_size`` before
    it crops, so a 1x65000 image would become a 73x4,745,000 intermediate (GBs).
    Both the image and that intermediate must stay within MAX_PIXELS.
    """
    try:
        with Image.open(io.BytesIO(body), formats=FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        # Pillow refuses to open above 2 x MAX_IMAGE_PIXELS; our limit is lower anyway.
        raise ClientError(413, f"image too large: the limit is {MAX_PIXELS:,} pixels") from None
    except Exception:  # noqa: BLE001 - any failure to parse the header is the client's
        raise ClientError(400, UNREADABLE) from None
    if width < 1 or height < 1:
        raise ClientError(400, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise too_large(width, height)
    short, long_ = sorted((width, height))
    if spec.resize_size * (spec.resize_size * long_ / short) > MAX_PIXELS:
        ratio = MAX_PIXELS // spec.resize_size**2
        raise ClientError(400, f"image is {width}x{height} pixels: its longer side may be "
                               f"at most {ratio} times its shorter side")


def decode(body: bytes | bytearray | None, content_type: str | None, spec: Spec) -> np.ndarray:
    kind = media_type(content_type)
    if kind not in IMAGE_TYPES:
        raise ClientError(415, f"unsupported Content-Type '{shown(kind) or '(none)'}': send "
                               "the image bytes as image/jpeg, image/png or application/x-image")
    if not body:
        raise ClientError(400, "empty request body: send the image file's bytes")
    body = bytes(body)
    if sniff(body) is None:
        raise ClientError(400, NOT_AN_IMAGE)
    check_dimensions(body, spec)
    try:
        return load_eval_array(body, spec)
    except ValueError as exc:  # load_rgb's own: "image too large", "not a readable" ...
        text = str(exc)
        if text.startswith("image too large"):
            raise ClientError(413, f"image too large: the limit is {MAX_PIXELS:,} "
                                   "pixels") from None
        raise ClientError(400, UNREADABLE if text.startswith("not a readable")
                          else CORRUPT) from None
    except MemoryError:
        raise ClientError(413, "image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - e.g. struct.error from damaged metadata
        log.warning("undecodable %s image: %s", sniff(body), type(exc).__name__)
        raise ClientError(400, UNDECODABLE) from None


def parse_top_k(custom_attributes: str | None, default: int) -> int:
    """'top_k=3' (also 'top_k=3,other=x' or 'top_k=3;...') from the custom attributes."""
    if not custom_attributes:
        return default
    for part in custom_attributes.replace(";", ",").split(","):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("top_k", "topk", "k"):
            try:
                k = int(value.strip())
            except ValueError:
                raise ClientError(400, f"top_k must be an integer, got "
                                       f"'{shown(value.strip())}'") from None
            if k < 1:
                raise ClientError(400, "top_k must be at least 1")
            return k
    return default
