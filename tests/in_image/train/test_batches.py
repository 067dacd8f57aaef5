"""The data factory (batches.py) and its presets: the cpu path against torchvision's
augmentation and the contract's evaluation, the gpu path's logic run on the CPU (the
same code, with torchvision's CPU JPEG decoder), and the bounds on every wait."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dogbreed_contract.preprocess import Spec, load_eval_array
from dogbreed_train import batches, data, presets
from dogbreed_train.errors import UserError

CPU = batches.Feed(torch.device("cpu"))
GPU_LOGIC = batches.Feed(torch.device("cpu"), path="gpu")  # the gpu path, decoding on CPU
SPEC = Spec.for_size(64)


def smooth_photo(seed: int, size=(120, 90)) -> Image.Image:
    """Smooth colour fields with mild grain: resampling differences stay small, a wrong
    crop or flip does not."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(5, 25, 6)
    arr = np.stack([128 + 90 * np.sin(xx / f[0] + yy / f[1]), 128 + 90 * np.cos(xx / f[2]),
                    128 + 80 * np.sin(yy / f[3] - xx / f[4])], -1)
    arr += rng.normal(0, 3, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_split(root, images: dict[str, Image.Image | bytes], name="train") -> data.Split:
    """A split of the given files (name -> image or raw bytes), all of class 0."""
    folder = root / name / "001.Things"
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for file, content in images.items():
        path = folder / file
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path, quality=92) if file.endswith(".jpg") else content.save(path)
        samples.append((path, 0))
    return data.Split(name, samples)


def pixels(images: torch.Tensor, spec: Spec = SPEC) -> torch.Tensor:
    """Normalized images back to 0-255."""
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (images * std + mean) * 255


def all_batches(source) -> list:
    return list(source)


# ---------------------------------------------------------------- the cpu path

def test_training_preset_is_torchvisions_augmentation():
    """Same seed, same crops and flips, same pixels as RandomResizedCrop + flip."""
    import torchvision.transforms.v2 as T

    reference = T.Compose([T.RandomResizedCrop(SPEC.image_size, scale=presets.SCALE,
                                               antialias=True),
                           T.RandomHorizontalFlip(), T.PILToTensor()])
    preset = presets.TrainPreset(SPEC, augment=True)
    img = smooth_photo(0)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = reference(img).permute(1, 2, 0).numpy()
        torch.manual_seed(seed)
        assert np.array_equal(preset(img), expected), seed


def test_evaluation_batches_are_the_contracts_preprocessing(tmp_path):
    """uint8 from the workers, normalized on the device: the endpoint's input exactly."""
    split = write_split(tmp_path, {f"{i}.{'jpg' if i % 2 else 'png'}": smooth_photo(i, (97, 131))
                                   for i in range(5)}, "test")
    for workers in (0, 2):
        feed = batches.Feed(torch.device("cpu"), workers=workers, timeout=60)
        (images, targets, bad, indices), = all_batches(
            batches.make_batches(split, SPEC, 8, feed, training=False))
        assert bad == [] and indices == list(range(5)) and targets.tolist() == [0] * 5
        for k, (path, _) in enumerate(split.samples):
            expected = torch.from_numpy(load_eval_array(path, SPEC))
            assert torch.equal(images[k], expected), path.name


@pytest.mark.parametrize("path", ["cpu", "gpu"])
def test_a_batch_leaves_the_workers_as_one_shared_uint8_tensor(tmp_path, path):
    split = write_split(tmp_path, {f"{i}.jpg": smooth_photo(i) for i in range(6)})
    feed = batches.Feed(torch.device("cpu"), path=path, workers=2, timeout=60)
    source = batches.make_batches(split, SPEC, 3, feed, training=True)
    packed = next(iter(source.loader))
    assert isinstance(packed.data, torch.Tensor) and packed.data.dtype == torch.uint8
    assert packed.data.is_shared()  # one shared-memory segment for the whole batch
    if path == "cpu":
        assert packed.data.shape == (3, 64, 64, 3)
    else:
        assert packed.data.dim() == 1 and all(it.shape is None for it in packed.items)


# ---------------------------------------------------------------- the gpu path's logic

def test_gpu_path_draws_the_cpu_paths_crops_and_flips(tmp_path):
    """Same seed: the same crop and flip per image (from the JPEG's header), resampled
    by roi_align instead of Pillow, so the pixels differ by a level or two at most."""
    split = write_split(tmp_path, {f"{i}.jpg": smooth_photo(i, (120 + 7 * i, 90 - 3 * i))
                                   for i in range(12)})
    torch.manual_seed(3)
    cpu = all_batches(batches.make_batches(split, SPEC, 5, CPU, training=True))
    torch.manual_seed(3)
    gpu = all_batches(batches.make_batches(split, SPEC, 5, GPU_LOGIC, training=True))
    assert [b.indices for b in cpu] == [b.indices for b in gpu] == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    for a, b in zip(cpu, gpu, strict=True):
        assert a.images.shape == b.images.shape == (len(a.indices), 3, 64, 64)
        diff = (pixels(a.images) - pixels(b.images)).abs().mean(dim=(1, 2, 3))
        assert diff.max() < 2.0, diff  # a wrong crop or flip differs by tens of levels
        assert torch.equal(a.targets, b.targets)


def test_crops_are_per_image_and_flips_mirror_exactly():
    """One roi_align over a padded batch of different sizes gives each image what
    roi_align gives it alone, edges included; a flipped crop is the crop mirrored."""
    from torchvision.ops import roi_align

    images = [torch.from_numpy(np.array(smooth_photo(i, size))).permute(2, 0, 1)
              for i, size in enumerate([(50, 40), (81, 63), (33, 71)])]
    crops = [presets.Crop(10, 20, 30, 30), presets.Crop(0, 0, 63, 81),  # the whole image
             presets.Crop(41, 3, 30, 30)]                               # to the bottom edge
    out = batches.resized_crops(images, crops, 24)
    for img, crop, got in zip(images, crops, out, strict=True):
        box = torch.tensor([[0, crop.left, crop.top, crop.left + crop.width,
                             crop.top + crop.height]], dtype=torch.float32)
        alone = roi_align(img[None].float(), box, (24, 24), 1.0, -1, True)[0]
        assert torch.allclose(got, alone, atol=1e-3)
    flipped = batches.resized_crops(images, [presets.Crop(c.top, c.left, c.height, c.width,
                                                          flip=True) for c in crops], 24)
    assert torch.equal(flipped, out.flip(-1))
    # A budget of one image per roi_align call changes nothing.
    assert torch.allclose(batches.resized_crops(images, crops, 24, budget=1), out)


def test_gpu_path_without_augmentation_is_the_evaluation_crop(tmp_path):
    split = write_split(tmp_path, {f"{i}.jpg": smooth_photo(i, (150, 100 + 20 * i))
                                   for i in range(3)})
    (gpu,) = all_batches(batches.make_batches(split, SPEC, 4, GPU_LOGIC, training=True,
                                              augment=False))
    (cpu,) = all_batches(batches.make_batches(split, SPEC, 4, CPU, training=True,
                                              augment=False))
    diff = (pixels(gpu.images) - pixels(cpu.images)).abs().mean(dim=(1, 2, 3))
    assert diff.max() < 2.0, diff


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def test_files_the_device_would_decode_otherwise_are_decoded_by_the_workers(tmp_path):
    """Only upright RGB or grayscale JPEGs that end where JPEGs end go to the device;
    PNG, CMYK and EXIF-rotated JPEGs are decoded by the contract's code in the worker,
    and come out as the cpu path's evaluation crop of the same file would."""
    base = smooth_photo(1, (140, 100))
    exif = Image.Exif()
    exif[batches.EXIF_ORIENTATION] = 6  # rotate 90 degrees: 100 x 140 upright
    files = {"rgb.jpg": _jpeg(base), "gray.jpg": _jpeg(base.convert("L")),
             "progressive.jpg": _jpeg(base, progressive=True),
             "cmyk.jpg": _jpeg(base.convert("CMYK")), "rotated.jpg": _jpeg(base, exif=exif),
             "image.png": base}
    split = write_split(tmp_path, files)
    dataset = batches.EncodedImages(split, SPEC, augment=False)
    on_device = {path.name: isinstance(dataset[i][2], bytearray)
                 for i, (path, _) in enumerate(split.samples)}
    assert on_device == {"rgb.jpg": True, "gray.jpg": True, "progressive.jpg": True,
                         "cmyk.jpg": False, "rotated.jpg": False, "image.png": False}
    (gpu,) = all_batches(batches.make_batches(split, SPEC, 8, GPU_LOGIC, training=True,
                                              augment=False))
    (cpu,) = all_batches(batches.make_batches(split, SPEC, 8, CPU, training=True,
                                              augment=False))
    assert gpu.bad == cpu.bad == [] and gpu.indices == cpu.indices
    diff = (pixels(gpu.images) - pixels(cpu.images)).abs().mean(dim=(1, 2, 3))
    assert diff.max() < 2.5, dict(zip(files, diff.tolist(), strict=True))


def test_bad_images_are_the_same_on_both_paths(tmp_path):
    """bad-images=skip|fail: the gpu path names the same images as the cpu path."""
    good = _jpeg(smooth_photo(2))
    corrupt = bytearray(good)
    corrupt[len(good) // 3: len(good) // 3 + 400] = os.urandom(400)  # whole, bad inside
    split = write_split(tmp_path, {"a.jpg": good, "garbage.jpg": os.urandom(3000),
                                   "truncated.jpg": good[: len(good) // 2],
                                   "b.jpg": good, "empty.jpg": b""})
    named = {}
    for feed in (CPU, GPU_LOGIC):
        found = all_batches(batches.make_batches(split, SPEC, 8, feed, training=True))
        named[feed.path] = sorted(b.name for batch in found for b in batch.bad)
        assert sum(len(batch.targets) for batch in found) == 5 - len(named[feed.path])
    assert named["gpu"] == named["cpu"]
    assert {"train/001.Things/garbage.jpg", "train/001.Things/truncated.jpg",
            "train/001.Things/empty.jpg"} <= set(named["gpu"])
    bad = [b for batch in all_batches(batches.make_batches(split, SPEC, 8, GPU_LOGIC,
                                                           training=True)) for b in batch.bad]
    with pytest.raises(UserError, match="unreadable image train/001.Things/"):
        data.BadImages("fail").add(bad)


def test_a_jpeg_the_decoder_refuses_is_decoded_by_the_contract(tmp_path):
    split = write_split(tmp_path, {f"{i}.jpg": smooth_photo(i) for i in range(4)})
    real = batches.TorchvisionJpeg(torch.device("cpu"))
    refused = bytes(split.samples[2][0].read_bytes())

    def refusing(files):  # the real decoder, which here cannot take the third file
        if any(bytes(f.numpy()) == refused for f in files):
            raise RuntimeError("nvjpeg: unsupported")
        return real(files)

    dataset = batches.EncodedImages(split, SPEC, augment=False)
    packed = batches.pack_encoded([dataset[i] for i in range(4)])
    decode = batches.DecodeOnDevice(split, SPEC, GPU_LOGIC, 1, decoder=refusing)
    got = decode(packed)
    assert got.indices == [0, 1, 2, 3] and got.bad == [] and decode.refused == 1
    expected = batches.DecodeOnDevice(split, SPEC, GPU_LOGIC, 1)(packed)
    assert torch.allclose(got.images, expected.images, atol=1e-5)


def test_a_decoder_that_refuses_everything_is_not_asked_again(tmp_path, caplog):
    """A broken GPU decoder (e.g. a driver without nvJPEG): the contract decodes every
    image, the training goes on, and the log says so once."""
    split = write_split(tmp_path, {f"{i}.jpg": smooth_photo(i) for i in range(6)})
    calls = []

    def broken(files):
        calls.append(len(files))
        raise RuntimeError("nvjpeg: NVJPEG_STATUS_NOT_INITIALIZED")

    dataset = batches.EncodedImages(split, SPEC, augment=False)
    decode = batches.DecodeOnDevice(split, SPEC, GPU_LOGIC, 1, decoder=broken)
    with caplog.at_level("WARNING"):
        first = decode(batches.pack_encoded([dataset[i] for i in range(3)]))
        second = decode(batches.pack_encoded([dataset[i] for i in range(3, 6)]))
    assert first.indices == [0, 1, 2] and second.indices == [3, 4, 5]
    assert calls == [3, 1, 1, 1]  # the batch, then each file; never again
    assert decode.broken and decode.refused == 6
    assert caplog.text.count("decoded none of a batch's 3 JPEGs (nvjpeg: NVJPEG_STATUS") == 1


def test_training_never_gets_a_batch_of_one_on_the_gpu_path(tmp_path):
    split = write_split(tmp_path, {"a.jpg": _jpeg(smooth_photo(0)),
                                   "broken.jpg": b"\xff\xd8\xff" + b"\x00" * 64})
    (only,) = all_batches(batches.make_batches(split, SPEC, 2, GPU_LOGIC, training=True))
    assert len(only.targets) == 0 and [b.name for b in only.bad] == [
        "train/001.Things/broken.jpg"]


# ---------------------------------------------------------------- reads that cannot block

def test_a_fifo_where_an_image_was_is_an_unreadable_image(tmp_path):
    """After the scan an image is replaced by a FIFO: opening it would wait forever for
    a writer; it is refused as not a regular file, on both paths."""
    split = write_split(tmp_path, {"a.jpg": smooth_photo(0), "b.jpg": smooth_photo(1),
                                   "c.jpg": smooth_photo(2)})
    fifo = split.samples[1][0]
    fifo.unlink()
    os.mkfifo(fifo)
    for feed in (CPU, GPU_LOGIC):
        (batch,) = all_batches(batches.make_batches(split, SPEC, 4, feed, training=True))
        assert batch.indices == [0, 2]
        assert [(b.name, b.reason) for b in batch.bad] == [
            ("train/001.Things/b.jpg", "not a regular file (a FIFO, device or socket)")]


@pytest.mark.parametrize("workers,per_batch,shm,expected", [
    (8, 2**20, 2**30, (8, 2)),          # room for every worker's batches in flight
    (8, 10 * 2**20, 64 * 2**20, (3, 1)),  # Docker's 64 MiB: fewer in flight, fewer workers
    (4, 40 * 2**20, 64 * 2**20, (0, 1)),  # not one batch fits: the training process decodes
    (0, 10 * 2**20, 64 * 2**20, (0, 2)),
])
def test_workers_fit_in_dev_shm(workers, per_batch, shm, expected):
    assert batches.fit_workers(workers, per_batch, shm) == expected


def test_data_path_auto_is_gpu_on_cuda_only():
    assert batches.resolve_path("auto", torch.device("cuda", 0)) == "gpu"
    assert batches.resolve_path("auto", torch.device("cpu")) == "cpu"
    assert batches.resolve_path("gpu", torch.device("cpu")) == "gpu"
