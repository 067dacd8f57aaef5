"""Property-based fuzzing of the serving image's request decoding, on the host.

dogbreed_serve and dogbreed_contract are installed in the host venv as they are in
the serving image, so this is the code the container runs.
Property: for any body and any Content-Type, decode() either returns the model input
(3 x S x S, finite float32) or raises ClientError with a 4xx and a message of our own:
nothing else escapes, and no message carries library internals.
"""

from __future__ import annotations

import io
import re
import struct
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import images, mutated, turned_16_bit_png
from PIL import Image

from conftest import ROOT
from dogbreed_contract import media, preprocess
from dogbreed_serve import decoding

SPECS = [decoding.Spec.for_size(64), decoding.Spec()]  # the tests' model, and the default
CONTENT_TYPES = ["image/jpeg", "image/png", "application/x-image", "IMAGE/JPEG; q=1",
                 "image/jpg", "text/plain", "", None, "image/gif", "multipart/form-data",
                 "image/png\x00", "\u00e9/\u00e9"]
# What a message must never contain: object addresses, paths, tracebacks, library names.
LEAK = re.compile(r"0x[0-9a-f]{6,}|Traceback|/opt/|site-packages|\.py\b|PIL|Pillow|"
                  r"numpy|BytesIO|Error\b|Exception")
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(body: bytes, content_type, spec) -> None:
    """The property itself; returns normally or fails the test."""
    try:
        arr = decoding.decode(body, content_type, spec)
    except decoding.ClientError as exc:
        assert exc.status in (400, 413, 415), exc.status
        assert exc.message and not LEAK.search(exc.message), exc.message
        assert len(exc.message) < 300
        return
    assert arr.shape == (3, spec.image_size, spec.image_size)
    assert arr.dtype == np.float32 and np.isfinite(arr).all()


@st.composite
def forged_png(draw) -> bytes:
    """A PNG built chunk by chunk: any header values, any pixel stream."""
    width = draw(st.one_of(st.integers(0, 64), st.sampled_from([1, 7506, 7507, 40_000_000,
                                                                2**31 - 1, 2**32 - 1])))
    height = draw(st.one_of(st.integers(0, 64), st.sampled_from([1, 6000, 65535, 2**31 - 1])))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 255]))
    color = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7]))
    interlace = draw(st.sampled_from([0, 1, 2]))
    raw = draw(st.one_of(st.binary(max_size=512),
                         st.integers(0, 200_000).map(lambda n: b"\0" * n)))
    idat = zlib.compress(raw) if draw(st.booleans()) else raw

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    extra = b""
    if color == 3 and draw(st.booleans()):
        extra = chunk(b"PLTE", draw(st.binary(min_size=0, max_size=96)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@FUZZ
@given(body=st.one_of(st.binary(max_size=2048),
                      st.sampled_from(list(media.MAGIC)).flatmap(
                          lambda m: st.binary(max_size=2048).map(lambda b: m + b))),
       content_type=st.sampled_from(CONTENT_TYPES), spec=st.sampled_from(SPECS))
def test_any_bytes_decode_or_give_a_clean_4xx(body, content_type, spec):
    check(body, content_type, spec)


@FUZZ
@given(body=mutated(), spec=st.sampled_from(SPECS))
def test_damaged_images_decode_or_give_a_clean_4xx(body, spec):
    check(body, "image/jpeg", spec)


@FUZZ
@given(body=forged_png(), spec=st.sampled_from(SPECS))
def test_forged_png_headers_decode_or_give_a_clean_4xx(body, spec):
    check(body, "image/png", spec)


@settings(max_examples=150, deadline=None, database=None)
@given(body=images(), spec=st.sampled_from(SPECS))
def test_every_valid_image_is_accepted(body, spec):
    arr = decoding.decode(body, "image/png", spec)
    assert arr.shape == (3, spec.image_size, spec.image_size) and np.isfinite(arr).all()


@pytest.mark.parametrize("width,height,status", [
    (1, 65000, 400),     # resizing the short side up would make a 4.7 GB intermediate
    (65000, 1, 400),
    (7000, 7000, 413),   # over MAX_PIXELS
    (0, 5, 400),
    (40, 2000, None),    # 1:50 is fine
])
def test_dimension_limits(width, height, status):
    """Header-only checks: these PNGs carry a few bytes of pixel data, never decoded."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row = b"\0" * (1 + width)
    body = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                               8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height if width * height < 10**6 else row))
            + chunk(b"IEND", b""))
    spec = decoding.Spec.for_size(64)
    if status is None:
        assert decoding.decode(body, "image/png", spec).shape == (3, 64, 64)
    else:
        with pytest.raises(decoding.ClientError) as err:
            decoding.decode(body, "image/png", spec)
        assert err.value.status == status


# --- bounded work per request (docs/hardening.md, section 6, "How each is bounded")

def test_structure_bombs_are_refused_before_decoding():
    """Thousands of empty progressive scans, a million empty JPEG segments, 400,000 empty
    PNG chunks: 400 from the structure alone, in milliseconds (Pillow took seconds to
    minutes on each)."""
    import time

    from dogbreed_scripts import malformed

    img = malformed.photo()
    jpg, png = malformed.encode(img, "JPEG"), malformed.encode(img, "PNG")
    bombs = [
        (malformed.progressive_with_empty_scans(2000), "more than 100 scans"),
        (malformed.jpeg_with_empty_segments(jpg, 1_000_000), "more than 1000 marker segments"),
        (malformed.png_with_empty_chunks(png, 400_000), "more than 20,000 chunks"),
    ]
    for body, says in bombs:
        start = time.perf_counter()
        with pytest.raises(decoding.ClientError) as err:
            decoding.decode(body, "image/jpeg", SPECS[0])
        assert err.value.status == 400 and says in err.value.message
        assert time.perf_counter() - start < 0.5
    # Within the limits, the same constructions still decode.
    assert decoding.decode(malformed.progressive_with_empty_scans(90, 200), "image/jpeg",
                           SPECS[0]).shape == (3, 64, 64)
    assert decoding.decode(malformed.png_with_empty_chunks(png, 1000), "image/png",
                           SPECS[0]).shape == (3, 64, 64)


class Clock:
    """decoding's clock (its ``time.monotonic``), moved only by the test: each step of a
    decode takes the time the test gives it, whatever the CPU."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def taking(self, seconds: float, step):
        """``step``, made to take ``seconds`` on this clock."""
        def slow(*args, **kwargs):
            self.now += seconds
            return step(*args, **kwargs)
        return slow


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(decoding, "time", fake)
    return fake


def test_decoding_stops_at_its_deadline(clock, monkeypatch):
    """36 megapixels in 36 KB, read 8 KB at a time: with each read of the body taking
    20 ms, a 0.05 s deadline stops the decode at the first read past it."""
    from dogbreed_scripts import malformed

    body = malformed.png_zeros(6000, 6000)
    monkeypatch.setattr(decoding.DeadlineReader, "read",
                        clock.taking(0.02, decoding.DeadlineReader.read))
    decoding.decode(body, "image/png", SPECS[0], timeout_s=10)
    reads_in_all = round(clock.now / 0.02)
    passed = []  # each check of the deadline: had it passed?
    check = decoding.Deadline.check

    def counted(deadline):
        passed.append(clock.now > deadline.at)
        check(deadline)
    monkeypatch.setattr(decoding.Deadline, "check", counted)

    clock.now = 0.0
    with pytest.raises(decoding.ClientError) as err:
        decoding.decode(body, "image/png", SPECS[0], timeout_s=0.05)
    assert err.value.status == 413 and "took more than 0.05 s" in err.value.message
    assert passed.count(True) == 1 and passed[-1], passed  # stopped at the first one
    assert round(clock.now / 0.02) < reads_in_all, reads_in_all


@pytest.mark.parametrize("step", ["reading", "EXIF rotation", "16-bit conversion",
                                  "mode conversion", "resizing"])
def test_the_deadline_bounds_every_step_of_a_decode(clock, monkeypatch, step):
    """On a CPU where one step of the decode is slow (1 s here), a 0.05 s deadline
    still refuses the request, whichever step it is: the deadline is checked after
    each one, not only between Pillow's reads of the body."""
    body = turned_16_bit_png()
    assert decoding.decode(body, "image/png", SPECS[0], timeout_s=0.05).shape == (3, 64, 64)
    where, name = {"reading": (decoding.DeadlineReader, "read"),
                   "EXIF rotation": (preprocess.ImageOps, "exif_transpose"),
                   "16-bit conversion": (preprocess, "to_8bit"),
                   "mode conversion": (preprocess, "opaque_rgb"),
                   "resizing": (decoding, "eval_array")}[step]
    monkeypatch.setattr(where, name, clock.taking(1.0, getattr(where, name)))

    with pytest.raises(decoding.ClientError) as err:
        decoding.decode(body, "image/png", SPECS[0], timeout_s=0.05)
    assert err.value.status == 413 and "took more than 0.05 s" in err.value.message


def test_waiting_for_decode_memory_is_not_counted_as_decoding(clock, monkeypatch, tmp_path):
    """A large image that waits 40 ms for its share of the decode memory, then decodes
    in 30 ms: within a 0.05 s deadline, which the decode itself gets whole once it holds
    its memory (the wait has its own, the same length: 503 past it). Its own steps stay
    bounded: 60 ms of them are refused."""
    from dogbreed_scripts import malformed
    from dogbreed_serve import memory

    memory.create(tmp_path, 300 * memory.MIB)
    budget = memory.DecodeMemory.in_run_dir(str(tmp_path))
    body = malformed.png_zeros(6000, 6000)  # 36 megapixels: it reserves 206 MiB
    monkeypatch.setattr(budget, "reserve", clock.taking(0.04, budget.reserve))
    monkeypatch.setattr(preprocess, "to_rgb", clock.taking(0.03, preprocess.to_rgb))
    assert decoding.decode(body, "image/png", SPECS[0], 0.05, budget).shape == (3, 64, 64)

    monkeypatch.setattr(decoding, "eval_array", clock.taking(0.03, decoding.eval_array))
    with pytest.raises(decoding.ClientError) as err:
        decoding.decode(body, "image/png", SPECS[0], 0.05, budget)
    assert err.value.status == 413 and "took more than 0.05 s" in err.value.message


@settings(max_examples=60, deadline=None, database=None)
@given(seed=st.integers(0, 2**32 - 1), w=st.integers(1, 120), h=st.integers(1, 120),
       bright=st.booleans(), orientation=st.integers(0, 8))
def test_16_bit_images_decode_exactly_as_training_evaluates_them(seed, w, h, bright,
                                                                  orientation):
    """The endpoint's decode (its own limits, deadline and memory around the contract's
    steps) against preprocess.load_eval_array (training's evaluation): the same array,
    bit for bit."""
    rng = np.random.default_rng(seed)
    peak = 65535 if bright else 255
    img = Image.fromarray(rng.integers(0, peak + 1, (h, w), dtype=np.uint16))
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "PNG", exif=exif)
    for spec in SPECS:
        ours = decoding.decode(buf.getvalue(), "image/png", spec)
        assert np.array_equal(ours, preprocess.load_eval_array(buf.getvalue(), spec))


def test_16_bit_conversion_memory_is_a_fraction_of_float64s():
    """A 16-bit 4000x2500 grey PNG: peak resident memory of decode() and of training's
    load_eval_array (both convert in strips) vs the same arithmetic on the whole image
    as float64 arrays, each in a fresh process."""
    import subprocess

    probe = """
import sys
import numpy as np
from PIL import Image
from dogbreed_serve import decoding
from dogbreed_contract import preprocess
from dogbreed_scripts import malformed
body = malformed.png16_zeros(4000, 2500)
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
base = hwm()
if sys.argv[1] == "serving":
    decoding.decode(body, "image/png", decoding.Spec())
elif sys.argv[1] == "training":
    preprocess.load_eval_array(body, decoding.Spec())
else:
    arr = np.asarray(preprocess.open_image(body), dtype=np.float64)
    peak = 65535.0 if arr.max() > 255 else 255.0
    img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8))
    preprocess.eval_array(img.convert("RGB"), decoding.Spec())
print(hwm() - base)
"""
    peaks = {}
    for which in ("serving", "training", "float64"):
        out = subprocess.run([sys.executable, "-c", probe, which], capture_output=True,
                             text=True, check=True, cwd=ROOT / "tests")
        peaks[which] = int(out.stdout.split()[-1]) * 1024 / 10_000_000  # bytes per pixel
    assert peaks["serving"] <= decoding.PEAK_BYTES_PER_PIXEL["I;16"], peaks
    assert peaks["serving"] < peaks["float64"] / 2, peaks
    assert peaks["training"] < peaks["float64"] / 2, peaks


def test_decode_memory_is_shared_and_released_by_a_killed_process(tmp_path):
    """memory.DecodeMemory: reservations add up across processes; what a killed process
    held comes back; a request that can never fit, or waits past its deadline, is told."""
    import multiprocessing
    import time

    from dogbreed_serve import memory

    mib = memory.create(tmp_path, 10 * memory.MIB)
    assert mib == 10
    budget = memory.DecodeMemory.in_run_dir(str(tmp_path))
    ready = multiprocessing.get_context("fork").Event()

    def hold():
        mine = memory.DecodeMemory(tmp_path / memory.FILE_NAME)
        with mine.reserve(8 * memory.MIB, time.monotonic() + 5):
            ready.set()
            time.sleep(60)

    child = multiprocessing.get_context("fork").Process(target=hold)
    child.start()
    try:
        assert ready.wait(10)
        with budget.reserve(2 * memory.MIB, time.monotonic() + 1):  # 8 + 2 of 10: fits
            pass
        with pytest.raises(memory.MemoryBusy):
            with budget.reserve(3 * memory.MIB, time.monotonic() + 0.3):
                pass
        with pytest.raises(memory.NotEnoughMemory):
            with budget.reserve(11 * memory.MIB, time.monotonic() + 1):
                pass
        child.kill()
        child.join()
        with budget.reserve(10 * memory.MIB, time.monotonic() + 1):  # all of it is back
            pass
    finally:
        child.kill()
        child.join()
