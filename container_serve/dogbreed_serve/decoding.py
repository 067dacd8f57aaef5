"""From an HTTP request to model input, or a 4xx that says what was wrong.

Every failure becomes a ``ClientError`` whose message is written here (or, for an
image over MAX_PIXELS, in the contract's preprocess), never a library's own text: Pillow's messages carry object addresses (``<_io.BytesIO object
at 0x7f...>``) and their own limits. The work a request may cost is bounded before
anything is decoded, and again while it decodes (docs/hardening.md):

- the file's structure: at most MAX_JPEG_SCANS scans and MAX_JPEG_SEGMENTS marker
  segments in a JPEG (each progressive scan costs a pass over every pixel), at most
  MAX_PNG_CHUNKS chunks in a PNG (Pillow parses each one in Python);
- the header: the image, and the image the evaluation transform would resize it
  to, stay within ``MAX_PIXELS``;
- time: the whole decode has a deadline (``Deadline``), checked at every read of the
  body (Pillow reads it block by block) and between the steps that follow (EXIF
  rotation, 16-bit conversion strip by strip, mode conversion, resizing). Past it, the
  request gets 413: no step starts after the deadline, and a step in progress, of an
  image within MAX_PIXELS, runs to its end (Pillow's C code cannot be interrupted).
  A wait for decode memory (below) has the same time, before the decode's own starts;
- memory: an image whose decoding needs more than a few MiB reserves that much of
  the container's decode memory first (memory.py), and waits its turn if others hold it.

The accepted content types and magic bytes are the contract's (dogbreed_contract.media),
and so is the decoding itself: each body is opened once (preprocess.open_image), then
drafted, decoded to RGB and resized by the functions training's evaluation runs
(preprocess.draft, load_rgb, eval_array), with the deadline as their ``check``. The
endpoint sees exactly what training's evaluation saw; what this module adds is the
HTTP side: the media type, the limits, the deadline, the memory, and the answer.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import time
import warnings
from contextlib import nullcontext

import numpy as np
from PIL import Image

from dogbreed_contract.errors import DecodeStopped, ImageTooLarge, UnreadableImage
from dogbreed_contract.media import (
    ACCEPTED_TYPES,
    SNIFFED_TYPES,
    media_type,
    sniff,
)
from dogbreed_contract.preprocess import (
    MAX_PIXELS,
    Spec,
    draft,
    eval_array,
    load_rgb,
    open_image,
)

from .memory import DecodeMemory, MemoryBusy, NotEnoughMemory

log = logging.getLogger("dogbreed_serve")

# Pillow warns (to the log) about damaged EXIF, truncated reads and large images;
# each request's own answer already says what was wrong with it. Set once for the
# process: warnings.catch_warnings() is not safe in handler.py's decode threads.
warnings.filterwarnings("ignore", module="PIL")

# libjpeg writes 10 scans for a progressive colour JPEG (6 for grey), mozjpeg about
# 20. Each scan costs a pass over all of the image's blocks, empty or not: 2,000 empty
# scans on a 4-megapixel JPEG took 2.3 s of CPU, on 36 megapixels minutes.
MAX_JPEG_SCANS = 100
# Camera JPEGs have 10 to 30 segments (APPn, DQT, DHT, SOF, SOS ...). Pillow reads
# each one in Python: a million empty APP segments (4 MB) took 3.7 s to open.
MAX_JPEG_SEGMENTS = 1000
# Encoders write IDAT chunks of 8 to 64 KB; a 6 MB PNG has at most a few thousand.
# 400,000 empty chunks (5 MB) took Pillow 1.4 to 5 s to walk.
MAX_PNG_CHUNKS = 20_000
# Pillow hands the decoder the body block by block and reads the next block (which
# checks the deadline) in between. 8 KB of a PNG's zlib stream inflate to 8 MB at
# most; with Pillow's 64 KB a 36 KB PNG of zeros (36 megapixels) decoded in one call.
# JPEGs keep the 64 KB: smaller blocks cost libjpeg restarts, and scans are counted.
PNG_READ_BLOCK = 8192
# Images that need less than this to decode do not reserve decode memory: with up to
# 4 decode threads per worker they hold at most a few dozen MiB in all.
RESERVE_FROM_BYTES = 16 * 1024 * 1024

NOT_AN_IMAGE = "the body is not a JPEG or PNG image (unrecognised file signature)"
UNREADABLE = "not a readable JPEG or PNG image: the file header is damaged or incomplete"
CORRUPT = "the image data is corrupt or truncated"
UNDECODABLE = "the image could not be decoded: corrupt or unsupported data"


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class DecodeTimeout(DecodeStopped):
    """Raised once the request's decode deadline has passed (also inside Pillow's reads);
    preprocess lets it through as it is."""


class Deadline:
    """When a request's decoding must be done, on time.monotonic's clock."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        """The whole time again, from now: the decoding proper starts once the request
        holds its decode memory, and waiting for that memory is not the image's doing."""
        self.at = time.monotonic() + self.seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise DecodeTimeout


class DeadlineReader(io.BytesIO):
    """The body as a file whose every read fails once ``deadline`` has passed."""

    def __init__(self, body: bytes, deadline: Deadline):
        super().__init__(body)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check()
        return super().read(size)


def shown(value: str, limit: int = 40) -> str:
    """A client's own text, safe to echo back: ASCII only, and short."""
    value = ascii(value)[1:-1]
    return value if len(value) <= limit else value[:limit] + "..."


# The end of a JPEG scan's entropy-coded data: 0xFF followed by anything but a
# stuffed zero, a restart marker or another 0xFF (fill).
_END_OF_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def check_jpeg_structure(body: bytes) -> None:
    """Count the JPEG's segments and scans, refusing files with too many of either.

    Walks the marker segments by their lengths and skips each scan's entropy-coded
    data with one regular-expression search; stops at the first thing that is not a
    marker and leaves that damage to the decoder (which reports it).
    """
    scans = segments = 0
    pos, end = 2, len(body)
    while pos + 4 <= end:
        if body[pos] != 0xFF:
            return
        marker = body[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            pos += 2
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ClientError(400, f"JPEG has more than {MAX_JPEG_SEGMENTS} marker segments: "
                                   "not an image a camera or an image library writes")
        pos += 2 + struct.unpack_from(">H", body, pos + 2)[0]
        if marker == 0xDA:  # start of scan
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ClientError(400, f"progressive JPEG has more than {MAX_JPEG_SCANS} "
                                       "scans: re-encode it (image libraries write 10 to 20)")
            found = _END_OF_SCAN.search(body, pos)
            if found is None:
                return
            pos = found.start()


def check_png_structure(body: bytes) -> None:
    """Count the PNG's chunks (each a length, a type, data and a CRC) up to IEND."""
    pos, end, chunks = 8, len(body), 0
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", body, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ClientError(400, f"PNG has more than {MAX_PNG_CHUNKS:,} chunks: re-encode "
                                   "it (image libraries write a few hundred at most)")
        if kind == b"IEND":
            return
        pos += 12 + length


def open_body(body: bytes, fmt: str, deadline: Deadline) -> Image.Image:
    """Check the file's structure, then open it (headers only) with the deadline reader.
    Images over MAX_PIXELS are refused here (preprocess.open_image: ImageTooLarge)."""
    (check_jpeg_structure if fmt == "JPEG" else check_png_structure)(body)
    try:
        img = open_image(DeadlineReader(body, deadline), formats=(fmt,))
    except UnreadableImage:  # any failure to parse the header is the client's
        raise ClientError(400, UNREADABLE) from None
    if fmt == "PNG":
        img.decodermaxblock = PNG_READ_BLOCK
    return img


def check_dimensions(width: int, height: int, spec: Spec) -> None:
    """Refuse, from the header alone, images whose resizing is unbounded.

    The evaluation transform scales the shorter side to ``spec.resize_size`` before
    it crops, so a 1x65000 image would become a 73x4,745,000 intermediate (GBs).
    Like the image itself (open_body), that intermediate must stay within MAX_PIXELS.
    """
    if width < 1 or height < 1:
        raise ClientError(400, f"image has no pixels ({width}x{height})")
    short, long_ = sorted((width, height))
    if spec.resize_size * (spec.resize_size * long_ / short) > MAX_PIXELS:
        ratio = MAX_PIXELS // spec.resize_size**2
        raise ClientError(400, f"image is {width}x{height} pixels: its longer side may be "
                               f"at most {ratio} times its shorter side")


# Peak memory of preprocess.load_rgb per pixel of the (drafted) image, by the mode
# Pillow opens it in. Measured (peak resident memory) on 20-megapixel PNGs: L, P and 1
# 5.3 bytes, RGB 4.3, P with transparency 17, RGBA and LA 20, 16-bit grey 7 (26 when
# converted to 8 bits in one float64 array, not in strips). The figures below add one
# more copy of the decoded image, which an EXIF rotation makes (docs/hardening.md).
PEAK_BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 6, "RGB": 9, "CMYK": 12, "LA": 21, "PA": 21,
                        "RGBA": 21, "I;16": 9, "I;16B": 9, "I;16L": 9, "I": 13}


def decode_bytes(img: Image.Image) -> int:
    """What decoding ``img`` and bringing it to RGB costs at its peak, in bytes."""
    mode = "RGBA" if img.mode == "P" and "transparency" in img.info else img.mode
    return img.width * img.height * PEAK_BYTES_PER_PIXEL.get(mode, 21)


def decode(body: bytes | bytearray | None, content_type: str | None, spec: Spec,
           timeout_s: float = 10.0, memory: DecodeMemory | None = None) -> np.ndarray:
    """A request body to model input; raises ClientError (4xx, or 503 when busy)."""
    kind = media_type(content_type)
    if kind not in ACCEPTED_TYPES:
        raise ClientError(415, f"unsupported Content-Type '{shown(kind) or '(none)'}': send "
                               "the image bytes as image/jpeg, image/png, application/x-image "
                               "or application/octet-stream")
    if not body:
        raise ClientError(400, "empty request body: send the image file's bytes")
    body = bytes(body)
    fmt = sniff(body)
    if fmt is None:
        if kind in SNIFFED_TYPES:
            raise ClientError(415, "the application/octet-stream body is not a JPEG or PNG "
                                   "image (unrecognised file signature)")
        raise ClientError(400, NOT_AN_IMAGE)
    deadline = Deadline(timeout_s)
    try:
        img = open_body(body, fmt, deadline)
        check_dimensions(img.width, img.height, spec)
        draft(img, spec.resize_size)
        need = decode_bytes(img)
        reservation = (memory.reserve(need, deadline.at)
                       if memory and need >= RESERVE_FROM_BYTES else nullcontext())
        with reservation:
            deadline.restart()
            try:
                # Every read of the body checks the deadline, and so does each step.
                rgb = load_rgb(img, check=deadline.check)
            except UnreadableImage:  # truncated, broken stream, bad metadata
                raise ClientError(400, CORRUPT) from None
            array = eval_array(rgb, spec)  # resizing
            deadline.check()  # a decode past its deadline is refused, whatever it got to
            return array
    except ClientError:
        raise
    except DecodeTimeout:
        raise ClientError(413, f"the image took more than {timeout_s:g} s to decode: send a "
                               "smaller or simpler image") from None
    except NotEnoughMemory as exc:
        raise ClientError(413, f"image too large to decode in this container's memory: it "
                               f"needs about {exc.need_mib} MiB, {exc.total_mib} MiB is set "
                               "aside for decoding") from None
    except MemoryBusy:
        raise ClientError(503, "the server is busy decoding other large images: "
                               "retry shortly") from None
    except ImageTooLarge as exc:  # the contract's message: its size and the limit
        raise ClientError(413, str(exc)) from None
    except MemoryError:
        raise ClientError(413, "image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - the resize of a damaged image
        log.warning("undecodable %s image: %s", fmt, type(exc).__name__)
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
