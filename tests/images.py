"""The tests' images in one place: a photo and its encodings, PNGs with forged headers,
and Hypothesis strategies for valid and damaged JPEG/PNG bytes.

photo, encode and the PNG builders are dogbreed_scripts.malformed's: the soak command
builds its table of bad requests from them, and the tests use the same bytes.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from dogbreed_scripts.malformed import encode, photo, png_raw

__all__ = ["encode", "photo", "png_with_size", "turned_16_bit_png", "images", "mutated"]


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height`, with a tiny compressed body."""
    return png_raw(width, height, zlib.compress(b"\0" * 1000), color=0)


def turned_16_bit_png() -> bytes:
    """A 300x200 16-bit grey PNG turned by its EXIF orientation: its decode goes through
    every step (read, rotation, 16-bit conversion, mode conversion)."""
    img = Image.fromarray(np.arange(300 * 200, dtype=np.uint16).reshape(200, 300) * 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "PNG", exif=exif)


@st.composite
def images(draw) -> bytes:
    """A valid JPEG or PNG: random size, colour mode and encoder options."""
    fmt = draw(st.sampled_from(["JPEG", "PNG"]))
    modes = ["RGB", "L", "CMYK"] if fmt == "JPEG" else ["RGB", "L", "RGBA", "P", "LA", "1",
                                                        "I;16"]
    mode = draw(st.sampled_from(modes))
    w, h = draw(st.integers(1, 160)), draw(st.integers(1, 160))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
    elif mode != "RGB":
        img = img.convert(mode)
    kw = {}
    if fmt == "JPEG":
        kw = {"quality": draw(st.integers(1, 100)), "progressive": draw(st.booleans())}
        if draw(st.booleans()):
            exif = Image.Exif()
            exif[0x0112] = draw(st.integers(0, 9))
            kw["exif"] = exif
    else:
        kw = {"compress_level": draw(st.integers(0, 9))}
    return encode(img, fmt, **kw)


@st.composite
def mutated(draw) -> bytes:
    """A valid image, then 1 to 4 edits: truncation, bit flips, inserted, deleted or
    overwritten bytes, a repeated slice, or a header field set to an extreme value."""
    data = bytearray(draw(images()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite",
                                   "repeat", "extreme"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            del data[at:]
        elif op == "flip":
            data[at:at + 1] = bytes([data[at] ^ draw(st.integers(1, 255))]) if data else b""
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif op == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 512))] * draw(st.integers(2, 50))
        else:  # a 16- or 32-bit field near the start (dimensions live there) set to 0 or max
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            pos = draw(st.integers(0, min(200, max(0, len(data) - 4))))
            packed = struct.pack(">I", value) if draw(st.booleans()) else struct.pack(
                ">H", value & 0xFFFF)
            data[pos:pos + len(packed)] = packed
    return bytes(data)
