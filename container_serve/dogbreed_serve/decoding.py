"""From an HTTP request to model input, or a 4xx that says what was wrong."""

from __future__ import annotations

import numpy as np

from .preprocess import Spec, eval_array, load_rgb

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/x-image"}
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


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


def decode(body: bytes | bytearray | None, content_type: str | None, spec: Spec) -> np.ndarray:
    kind = media_type(content_type)
    if kind not in IMAGE_TYPES:
        raise ClientError(415, f"unsupported Content-Type {kind or '(none)'!r}: send the "
                               "image bytes as image/jpeg, image/png or application/x-image")
    if not body:
        raise ClientError(400, "empty request body: send the image file's bytes")
    body = bytes(body)
    if sniff(body) is None:
        raise ClientError(400, "the body is not a JPEG or PNG image (unrecognised "
                               "file signature)")
    try:
        img = load_rgb(body)
    except ValueError as exc:
        status = 413 if "too large" in str(exc) else 400
        raise ClientError(status, str(exc)) from None
    return eval_array(img, spec)


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
                raise ClientError(400, f"top_k must be an integer, got {value.strip()!r}") from None
            if k < 1:
                raise ClientError(400, "top_k must be at least 1")
            return k
    return default
