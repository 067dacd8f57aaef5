"""The image formats the endpoint takes: content types, magic bytes, file suffixes.

The server's Content-Type check, nginx's early 415 (its regex is rendered from
``nginx_type_pattern``), training's scan of a channel and the scripts that send
files all read these, so a format is added or dropped in one place.
"""

from __future__ import annotations

import re
from pathlib import Path

# Formats by Pillow's name, with their file signatures.
FORMATS = ("JPEG", "PNG")
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# The Content-Type to send for each format.
FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}

# Content types that declare an image (application/x-image: SageMaker's built-in
# image algorithms use it; image/jpg: a common misspelling).
IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/x-image")
# The SDK's IdentitySerializer default: the format is then known from the bytes alone.
SNIFFED_TYPES = ("application/octet-stream",)
ACCEPTED_TYPES = IMAGE_TYPES + SNIFFED_TYPES

# File suffixes training reads and the scripts send, with their content types.
SUFFIX_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
IMAGE_SUFFIXES = frozenset(SUFFIX_TYPES)
SUFFIXES_SHOWN = "/".join(SUFFIX_TYPES)  # ".jpg/.jpeg/.png", for messages


def media_type(content_type: str | None) -> str:
    """'Image/JPEG; charset=binary' -> 'image/jpeg'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniff(body: bytes) -> str | None:
    """The format named by the body's first bytes ('JPEG', 'PNG'), or None."""
    for magic, name in MAGIC.items():
        if body.startswith(magic):
            return name
    return None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def content_type_for(path: Path, head: bytes = b"") -> str | None:
    """The Content-Type to send a file with: from its first bytes, else its suffix."""
    found = sniff(head)
    return FORMAT_TYPES[found] if found else SUFFIX_TYPES.get(path.suffix.lower())


def nginx_type_pattern() -> str:
    """A case-insensitive nginx regex capturing an accepted media type from Content-Type."""
    names = "|".join(re.escape(t) for t in ACCEPTED_TYPES)
    return rf"~*^\s*(?<type>{names})\s*(;.*)?$"
