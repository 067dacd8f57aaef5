"""The shared evaluation transform against torchvision's, and every colour mode."""

import io

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from dogbreed_contract.preprocess import Spec, eval_array, load_eval_array, load_rgb


def _photo(w=300, h=200):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (224, 224), (641, 479)])
def test_eval_array_matches_torchvision(size):
    img = _photo(*size)
    spec = Spec.for_size(224)
    reference = T.Compose([
        T.Resize(spec.resize_size, antialias=True), T.CenterCrop(spec.image_size),
        T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std),
    ])(img)
    ours = torch.from_numpy(eval_array(img, spec))
    assert ours.shape == (3, 224, 224)
    assert torch.allclose(ours, reference, atol=1e-5)


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(mode):
    img = _photo(40, 30).convert(mode) if mode != "I;16" else Image.fromarray(
        (np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_rgb(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_exif_orientation_is_applied():
    img = _photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    out = load_rgb(_encode(img, "JPEG", exif=exif))
    assert out.size == (20, 40)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert load_rgb(_encode(img, "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("blob", [b"", b"garbage", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_unreadable_bytes_raise_valueerror(blob):
    with pytest.raises(ValueError):
        load_rgb(blob)


def _smooth_photo(w, h):
    """Photo-like content (smooth colour fields and edges): what DCT scaling is for."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0),
                    255 * ((x // 97 + y // 61) % 2)], axis=-1)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("size, min_side, decoded", [
    ((768, 576), 256, (384, 288)),     # 1/2: both sides stay >= 256
    ((2048, 1536), 256, (512, 384)),   # 1/4
    ((768, 576), 300, (768, 576)),     # 1/2 would make 288 < 300: full size
    ((768, 576), 0, (768, 576)),       # training's augmentation path: full size
])
def test_jpeg_decodes_at_reduced_scale_but_never_below_min_side(size, min_side, decoded):
    out = load_rgb(_encode(_smooth_photo(*size), "JPEG", quality=90), min_side=min_side)
    assert out.mode == "RGB" and out.size == decoded


def test_png_and_rotated_jpeg_with_min_side():
    png = load_rgb(_encode(_smooth_photo(768, 576), "PNG"), min_side=256)
    assert png.size == (768, 576)  # no DCT scaling for PNG
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = load_rgb(_encode(_smooth_photo(768, 576), "JPEG", exif=exif), min_side=256)
    assert rotated.size == (288, 384)


def test_reduced_scale_decoding_keeps_the_evaluation_input():
    """DCT scaling changes pixels slightly, not what the model is shown."""
    blob = _encode(_smooth_photo(768, 576), "JPEG", quality=90)
    spec = Spec.for_size(224)
    full = eval_array(load_rgb(blob), spec)
    reduced = load_eval_array(blob, spec)
    assert reduced.shape == full.shape == (3, 224, 224)
    assert np.abs(reduced - full).mean() < 0.05  # normalized units: ~1% of the range
    assert np.corrcoef(reduced.ravel(), full.ravel())[0, 1] > 0.99
