"""Malformed and hostile requests for the serving container, each with the answer it must get.

Used by tests/test_serve_hardening.py (one test per row) and the soak command (mixed into
the load). Every body is built here from Pillow, zlib and struct: nothing is downloaded.
The expected status is what the serving contract promises (docs/serving.md); the rows that expect 200 are files that are damaged or odd but still
decodable images, which the contract answers with a prediction (docs/hardening.md).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, PngImagePlugin

MAX_BODY = 6 * 1024 * 1024  # SAGEMAKER_MAX_PAYLOAD_IN_MB=6, the serving default


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    body: bytes
    content_type: str | None
    status: int
    headers: dict = field(default_factory=dict)
    chunked: bool = False  # send with Transfer-Encoding: chunked (no Content-Length)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 96, h: int = 72, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_raw(width: int, height: int, idat: bytes, color: int = 2, depth: int = 8,
            extra: bytes = b"") -> bytes:
    """A PNG with the header we say and whatever IDAT we give it."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def png_zeros(width: int, height: int) -> bytes:
    """A complete, valid grayscale PNG of zeros: megapixels in a few KB (a zip bomb)."""
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return png_raw(width, height, idat, color=0)


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with the frame header (SOF0) claiming other dimensions."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def flip(data: bytes, start: int, stop: int, mask: int = 0x55) -> bytes:
    return bytes(b ^ mask if start <= i < stop else b for i, b in enumerate(data))


def jpeg_with_broken_exif(jpeg: bytes) -> bytes:
    """An APP1 EXIF segment whose orientation entry points far outside the segment."""
    tiff = (b"II*\0\x08\0\0\0" + b"\x01\x00"
            + b"\x12\x01\x03\x00\xff\xff\xff\x7f\x06\x00\x00\x00")
    app1 = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def png_with_text_bomb(png: bytes) -> bytes:
    """A zTXt chunk that inflates to 64 MB (Pillow's text limit is 1 MB)."""
    bomb = zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    chunk = png_chunk(b"zTXt", b"Comment\0\0" + bomb)
    return png[:33] + chunk + png[33:]  # right after the 8-byte signature + 25-byte IHDR


def png_with_icc_bomb(png: bytes) -> bytes:
    bomb = zlib.compress(b"\0" * (64 * 1024 * 1024), 9)
    chunk = png_chunk(b"iCCP", b"icc\0\0" + bomb)
    return png[:33] + chunk + png[33:]


def png_with_html(img: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<html><script>alert(1)</script></html>")
    return encode(img, "PNG", pnginfo=info)


def progressive_with_empty_scans(scans: int, size: int = 2000) -> bytes:
    """A progressive JPEG followed by ``scans`` scans without data (10 bytes each):
    each one still costs the decoder a pass over every block of the image."""
    jpeg = encode(Image.new("RGB", (size, size), "white"), "JPEG", progressive=True)
    empty_scan = b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x01\x3f\x00"
    return jpeg[:-2] + empty_scan * scans + b"\xff\xd9"


def jpeg_with_empty_segments(jpeg: bytes, count: int) -> bytes:
    """``count`` empty APP5 segments (4 bytes each) right after the start marker."""
    return jpeg[:2] + b"\xff\xe5\x00\x02" * count + jpeg[2:]


def png_with_empty_chunks(png: bytes, count: int) -> bytes:
    """``count`` empty ancillary chunks (12 bytes each) right after IHDR."""
    return png[:33] + png_chunk(b"abCd", b"") * count + png[33:]


def png16_zeros(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG of zeros: 40 megapixels in 77 KB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return png_raw(width, height, idat, color=0, depth=16)


def cases() -> list[Case]:
    img = photo()
    jpg = encode(img, "JPEG", quality=90)
    png = encode(img, "PNG")
    sos = jpg.index(b"\xff\xda")
    idat = png.index(b"IDAT")
    rows: list[Case] = []

    def add(name, group, body, content_type, status, **kw):
        rows.append(Case(name, group, body, content_type, status, **kw))

    # --- truncated and corrupt files
    add("jpeg cut to its 3 magic bytes", "truncated", jpg[:3], "image/jpeg", 400)
    add("jpeg cut inside its headers", "truncated", jpg[:sos // 2], "image/jpeg", 400)
    add("jpeg cut at 90% of the scan", "truncated", jpg[:int(len(jpg) * 0.9)], "image/jpeg", 400)
    add("png signature only", "truncated", png[:8], "image/png", 400)
    add("png cut inside IDAT", "truncated", png[:idat + 40], "image/png", 400)
    add("png without IEND", "truncated", png[:-12], "image/png", 200)
    add("jpeg with corrupt quantisation table", "corrupt",
        jpg[:jpg.index(b"\xff\xdb") + 2] + b"\xff\xff" + jpg[jpg.index(b"\xff\xdb") + 4:],
        "image/jpeg", 400)
    add("jpeg with flipped bits in the scan", "corrupt", flip(jpg, sos + 40, sos + 140),
        "image/jpeg", 200)
    add("png with bad IHDR checksum", "corrupt", flip(png, 29, 33), "image/png", 400)
    add("png with corrupt zlib stream", "corrupt", flip(png, idat + 6, idat + 30), "image/png", 400)
    add("jpeg with damaged EXIF", "corrupt", jpeg_with_broken_exif(jpg), "image/jpeg", 200)
    # --- wrong magic bytes
    add("GIF sent as image/jpeg", "wrong magic", encode(img, "GIF"), "image/jpeg", 400)
    add("BMP sent as image/png", "wrong magic", encode(img, "BMP"), "image/png", 400)
    add("WebP sent as image/png", "wrong magic", encode(img, "WEBP"), "image/png", 400)
    add("TIFF sent as image/jpeg", "wrong magic", encode(img, "TIFF"), "image/jpeg", 400)
    add("gzip of a JPEG", "wrong magic", gzip.compress(jpg), "image/jpeg", 400)
    add("PDF header", "wrong magic", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "image/jpeg", 400)
    add("SVG document", "wrong magic", b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        "image/png", 400)
    # --- polyglots
    add("JPEG magic then a PNG", "polyglot", b"\xff\xd8\xff" + png, "image/jpeg", 400)
    add("PNG signature then a JPEG", "polyglot", b"\x89PNG\r\n\x1a\n" + jpg, "image/png", 400)
    add("GIF header then a JPEG", "polyglot", b"GIF89a" + jpg, "image/jpeg", 400)
    add("JPEG with a ZIP appended", "polyglot", jpg + b"PK\x03\x04" + b"\0" * 200,
        "image/jpeg", 200)
    add("PNG with HTML/script in a text chunk", "polyglot", png_with_html(img), "image/png", 200)
    # --- zero-size and huge dimensions
    add("png 0x10", "dimensions", png_raw(0, 10, zlib.compress(b"\0" * 100)), "image/png", 400)
    add("png 10x0", "dimensions", png_raw(10, 0, zlib.compress(b"\0" * 100)), "image/png", 400)
    add("jpeg header claiming 0x0", "dimensions", jpeg_with_size(jpg, 0, 0), "image/jpeg", 400)
    add("jpeg 1x1", "dimensions", encode(Image.new("RGB", (1, 1), "red"), "JPEG"),
        "image/jpeg", 200)
    add("png 1x1", "dimensions", encode(Image.new("RGB", (1, 1), "red"), "PNG"), "image/png", 200)
    add("png header claiming 7000x7000 (49 MP)", "dimensions",
        png_raw(7000, 7000, zlib.compress(b"\0" * 1000)), "image/png", 413)
    add("png header claiming 2147483647x1", "dimensions",
        png_raw(2**31 - 1, 1, zlib.compress(b"\0" * 1000)), "image/png", 413)
    add("jpeg header claiming 65535x65535", "dimensions", jpeg_with_size(jpg, 65535, 65535),
        "image/jpeg", 413)
    add("jpeg 1x65000, a real one", "dimensions",
        encode(Image.new("L", (1, 65000)), "JPEG"), "image/jpeg", 400)
    add("png header claiming 1x39000000", "dimensions",
        png_raw(1, 39_000_000, zlib.compress(b"\0" * 1000)), "image/png", 400)
    add("jpeg header claiming 65500x600 (39 MP, within the limit)", "dimensions",
        jpeg_with_size(jpg, 65500, 600), "image/jpeg", 200)
    # --- compressed bombs
    add("png of zeros, 6000x6000 (36 MP in 36 KB)", "bomb", png_zeros(6000, 6000),
        "image/png", 200)
    add("png of zeros, 7000x6000 (42 MP in 41 KB)", "bomb", png_zeros(7000, 6000),
        "image/png", 413)
    add("png with a 64 MB zTXt bomb", "bomb", png_with_text_bomb(png), "image/png", 400)
    add("png with a 64 MB iCCP bomb", "bomb", png_with_icc_bomb(png), "image/png", 400)
    add("png 16-bit of zeros, 6000x6600 (40 MP in 77 KB)", "bomb", png16_zeros(6000, 6600),
        "image/png", 200)
    add("gzip bomb with Content-Encoding: gzip", "bomb",
        gzip.compress(b"\0" * (32 * 1024 * 1024)), "image/jpeg", 400,
        headers={"Content-Encoding": "gzip"})
    # --- work per request (CPU): structure counted before anything is decoded
    add("progressive jpeg with 2,000 empty scans", "work", progressive_with_empty_scans(2000),
        "image/jpeg", 400)
    add("progressive jpeg with 90 empty scans", "work", progressive_with_empty_scans(90, 400),
        "image/jpeg", 200)
    add("jpeg with a million empty APP segments (4 MB)", "work",
        jpeg_with_empty_segments(jpg, 1_000_000), "image/jpeg", 400)
    add("png with 400,000 empty chunks (4.8 MB)", "work", png_with_empty_chunks(png, 400_000),
        "image/png", 400)
    # --- wrong or missing Content-Type
    add("image/gif", "content type", jpg, "image/gif", 415)
    add("image/jpegx", "content type", jpg, "image/jpegx", 415)
    add("multipart/form-data", "content type", jpg, "multipart/form-data; boundary=x", 415)
    add("JPEG as application/octet-stream", "content type", jpg, "application/octet-stream", 200)
    add("PNG as application/octet-stream", "content type", png, "application/octet-stream", 200)
    add("GIF as application/octet-stream", "content type", encode(img, "GIF"),
        "application/octet-stream", 415)
    add("text/csv", "content type", b"a,b\n1,2\n", "text/csv", 415)
    add("application/json", "content type", b'{"instances": [1]}', "application/json", 415)
    add("empty Content-Type", "content type", jpg, "", 415)
    add("Content-Type with odd case, a space and a parameter", "content type", png,
        "Image/PNG ; q=1", 200)
    add("PNG bytes sent as image/jpeg", "content type", png, "image/jpeg", 200)
    # --- payload size
    add("body of exactly the limit", "payload", b"\xff\xd8\xff" + b"\0" * (MAX_BODY - 3),
        "image/jpeg", 400)
    add("body one byte over the limit", "payload", b"\xff\xd8\xff" + b"\0" * (MAX_BODY - 2),
        "image/jpeg", 413)
    add("chunked body over the limit", "payload", b"\xff\xd8\xff" + b"\0" * (MAX_BODY + 1000),
        "image/jpeg", 413, chunked=True)
    add("chunked good JPEG", "payload", jpg, "image/jpeg", 200, chunked=True)
    # --- other headers
    add("top_k not a number", "headers", jpg, "image/jpeg", 400,
        headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=abc"})
    add("top_k = 0", "headers", jpg, "image/jpeg", 400,
        headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=0"})
    add("top_k with 5000 digits", "headers", jpg, "image/jpeg", 400,
        headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=" + "9" * 5000})
    add("request headers over 8 KB", "headers", jpg, "image/jpeg", 400,
        headers={"X-Padding": "a" * 9000})
    # Each line within nginx's 8 KB, together over MMS's 8 KB: they never reach MMS.
    add("request headers of 12 KB in three lines", "headers", jpg, "image/jpeg", 200,
        headers={f"X-Padding-{i}": "a" * 4000 for i in range(3)})
    add("custom attributes of 4,500 characters", "headers", jpg, "image/jpeg", 400,
        headers={"X-Amzn-SageMaker-Custom-Attributes": "top_k=1," + "x" * 4500})
    return rows


def good_inputs() -> list[tuple[str, bytes, str]]:
    """Plain, valid requests for the soak: a few sizes, both formats."""
    out = []
    for i, (w, h) in enumerate([(96, 72), (320, 240), (640, 480), (200, 300)]):
        img = photo(w, h, seed=100 + i)
        out.append((f"jpeg {w}x{h}", encode(img, "JPEG", quality=90), "image/jpeg"))
        out.append((f"png {w}x{h}", encode(img, "PNG"), "image/png"))
    return out
