"""The data factory: one batch source that training, validation and test predictions consume.

``make_batches`` returns a ``BatchSource``; iterating it gives ``Batch``es already on
the training device: images normalized (float32, channels-last on GPU), targets,
the images that could not be decoded, and each image's index in its split. Two data
paths feed it (hyperparameter ``data-path``; ``auto`` takes ``gpu`` where CUDA is):

  cpu  loader workers decode with Pillow and apply the preset (presets.py); a batch
       leaves them as one uint8 NHWC tensor (one shared-memory segment per batch).
  gpu  loader workers only read file bytes and draw each image's crop from its
       header; a batch leaves them as one uint8 tensor of concatenated files. The
       device decodes its JPEGs in one batched call (``JpegDecoder``: nvJPEG through
       torchvision), and one ``roi_align`` crops, resizes and (by flipping selected
       rows) mirrors the whole batch with per-image crops. Files the device would
       decode otherwise than the contract (PNG, CMYK, EXIF-rotated or incomplete
       JPEGs) are decoded by the workers with the contract's code, one at a time;
       a JPEG nvJPEG refuses is decoded the same way in the training process.

Whatever the path, scaling to [0, 1] and the normalization run on the device, with
the contract's arithmetic (``normalize``). Validation and test predictions always
take the cpu path's evaluation preset, the contract's own preprocessing, so that
evaluation and the endpoint agree. On a GPU a thread prepares the next batches on
a CUDA stream of their own while the current step runs.

Every wait for a batch is bounded (stalls.py). Batches pass between processes
through /dev/shm; ``fit_workers`` takes fewer workers, or fewer batches in flight,
rather than let a small /dev/shm (Docker's default is 64 MiB) kill them.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from dogbreed_contract.errors import UnreadableImage
from dogbreed_contract.preprocess import Spec, load_rgb, open_image

from . import stalls
from .data import BadImage, Split, sample_name
from .presets import Crop, EvalPreset, TrainPreset, center_crop, random_crop

log = logging.getLogger(__name__)

PATHS = ("cpu", "gpu")
PREFETCH_BATCHES = 2    # per loader worker, and prepared ahead on the GPU
CROP_BUDGET = 2**28     # float32 elements in one padded roi_align input (1 GiB)
# How loader workers hand tensors over. Measured on the H200 (2026-12-04): under
# torch's default, file_descriptor, workers printed "OSError: [Errno 9] Bad file
# descriptor" in the queue feeder, batches were lost and the job waited forever;
# with file_system the same loaders ran. It names a /dev/shm file instead of passing
# a descriptor, so no descriptor is ever duplicated or runs out.
SHARING_STRATEGY = os.environ.get("DOGBREED_SHARING_STRATEGY", "file_system")
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
EXIF_ORIENTATION = 0x0112


def resolve_path(choice: str, device: torch.device) -> str:
    """``auto``: the GPU data path where training runs on CUDA, else the CPU path."""
    if choice == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    return choice


@dataclass(frozen=True)
class Feed:
    """How batches reach the model: the device and memory format, the data path,
    the loader workers, and the bound on every wait (loader-timeout)."""

    device: torch.device
    path: str = "cpu"
    workers: int = 0
    timeout: float = 300.0
    channels_last: bool = False
    watchdog: stalls.Watchdog | None = None

    def describe(self) -> str:
        where = (f"JPEG decode, crop and flip batched on {self.device}; workers read "
                 "file bytes" if self.path == "gpu" else
                 "workers decode with Pillow; normalized on " + str(self.device))
        return (f"data path {self.path} ({where}); {self.workers} loader workers; "
                f"/dev/shm {stalls.mib(stalls.shm_bytes())}; loader-timeout {self.timeout:g} s")


class Batch(NamedTuple):
    images: torch.Tensor        # N x 3 x H x W float32 on the device, normalized
    targets: torch.Tensor       # N class indices on the device
    bad: list                   # BadImage: images that could not be decoded
    indices: list[int]          # each image's index in its split


class Packed(NamedTuple):
    """What a loader worker hands over: one uint8 tensor for the whole batch."""

    data: torch.Tensor   # cpu path: N x H x W x 3 pixels; gpu path: concatenated files
    items: list          # (index, label) or, on the gpu path, Item
    bad: list


class Item(NamedTuple):
    """One image of a gpu-path batch: where its bytes are in Packed.data, and its
    shape when the worker decoded it (None: JPEG bytes for the device)."""

    index: int
    label: int
    offset: int
    size: int
    shape: tuple[int, int, int] | None
    crop: Crop


# ---------------------------------------------------------------- reading files

def read_image_file(path: Path) -> bytearray:
    """A file's bytes, refusing anything but a regular file: opening a FIFO or a device
    where an image was would block the job forever. (A regular file's read may still
    block, on a hung network file system: loader-timeout bounds that.)"""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UnreadableImage("not a regular file (a FIFO, device or socket)")
        with open(path, "rb", buffering=0) as fh:
            data = bytearray(os.fstat(fh.fileno()).st_size)
            got = fh.readinto(data)
    except OSError as exc:
        raise UnreadableImage(f"cannot read it: {exc.strerror or exc}") from None
    if got != len(data):
        raise UnreadableImage(f"read {got} of {len(data)} bytes")
    return data


# ---------------------------------------------------------------- in the loader workers

def _shared(shape, in_worker: bool) -> torch.Tensor:
    """An empty uint8 tensor; in a loader worker, in shared memory from the start, so
    handing it over costs no copy."""
    out = torch.empty(shape, dtype=torch.uint8)
    return out.share_memory_() if in_worker else out


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class DecodedImages(Dataset):
    """The cpu path and evaluation: decode (the contract's load_rgb) and apply a
    preset; an image that cannot be decoded comes back as a BadImage."""

    def __init__(self, split: Split, preset):
        self.split, self.preset = split, preset

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, i: int):
        path, label = self.split.samples[i]
        try:
            img = load_rgb(read_image_file(path), min_side=self.preset.min_side)
        except ValueError as exc:
            return BadImage(sample_name(self.split, path), str(exc))
        return i, label, self.preset(img)


def pack_pixels(samples: list, min_size: int = 1) -> Packed:
    """A batch of HWC uint8 images as one N x H x W x 3 tensor. A batch with fewer
    than `min_size` good images comes back empty (training: never one image)."""
    good = [s for s in samples if not isinstance(s, BadImage)]
    bad = [s for s in samples if isinstance(s, BadImage)]
    if len(good) < min_size or not good:
        return Packed(torch.empty(0, dtype=torch.uint8), [], bad)
    out = _shared((len(good), *good[0][2].shape), _in_worker())
    rows = out.numpy()  # Pillow's arrays are read-only: numpy copies them in as they are
    for k, (_, _, pixels) in enumerate(good):
        rows[k] = pixels
    return Packed(out, [(i, label) for i, label, _ in good], bad)


def device_decodable(img, data: bytearray) -> bool:
    """A JPEG the device decodes to what the contract's load_rgb gives: RGB or
    grayscale, upright (no EXIF rotation), and whole (it ends where JPEGs end)."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return False
    if not (data.startswith(JPEG_START) and bytes(data[-64:]).rstrip(b"\x00").endswith(JPEG_END)):
        return False
    return img.getexif().get(EXIF_ORIENTATION, 1) == 1


class EncodedImages(Dataset):
    """The gpu path: file bytes and each image's crop, drawn from its header (or the
    image, decoded here by the contract's code, when the device cannot decode it)."""

    def __init__(self, split: Split, spec: Spec, augment: bool):
        self.split, self.spec, self.augment = split, spec, augment

    def __len__(self) -> int:
        return len(self.split.samples)

    def crop(self, width: int, height: int) -> Crop:
        return random_crop(width, height) if self.augment else center_crop(width, height,
                                                                           self.spec)

    def __getitem__(self, i: int):
        path, label = self.split.samples[i]
        try:
            data = read_image_file(path)
            with open_image(data) as img:
                if device_decodable(img, data):
                    return i, label, data, self.crop(*img.size)
            pixels = np.asarray(load_rgb(data), dtype=np.uint8)
        except ValueError as exc:
            return BadImage(sample_name(self.split, path), str(exc))
        return i, label, pixels, self.crop(pixels.shape[1], pixels.shape[0])


def pack_encoded(samples: list, min_size: int = 1) -> Packed:
    """A batch of files (and worker-decoded images) as one flat uint8 tensor."""
    good = [s for s in samples if not isinstance(s, BadImage)]
    bad = [s for s in samples if isinstance(s, BadImage)]
    if len(good) < min_size or not good:
        return Packed(torch.empty(0, dtype=torch.uint8), [], bad)
    sizes = [len(data) if isinstance(data, bytearray) else data.nbytes
             for _, _, data, _ in good]
    out = _shared((sum(sizes),), _in_worker())
    flat = out.numpy()
    items, offset = [], 0
    for (i, label, data, crop), size in zip(good, sizes, strict=True):
        if isinstance(data, bytearray):
            flat[offset:offset + size] = np.frombuffer(data, dtype=np.uint8)
            shape = None
        else:
            flat[offset:offset + size] = data.reshape(-1)
            shape = data.shape
        items.append(Item(i, label, offset, size, shape, crop))
        offset += size
    return Packed(out, items, bad)


# ---------------------------------------------------------------- on the device

class Normalizer:
    """uint8 (or 0-255 float) NCHW images to the model's input, with the arithmetic of
    dogbreed_contract.preprocess.normalize: float32, times 1/255, minus mean, over std."""

    def __init__(self, spec: Spec, device: torch.device):
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images to a new float32 tensor, in their memory format."""
        return self.in_place(images.float())

    def in_place(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 tensor of 0-255 values, normalized in place (one buffer, no copies)."""
        return x.mul_(1.0 / 255.0).sub_(self.mean).div_(self.std)


class JpegDecoder(Protocol):
    """Decodes a batch of JPEG files (1-D uint8 CPU tensors) to RGB uint8 CHW images
    on the device; raises if any one fails. torchvision's decode_jpeg is the one used;
    TorchCodec's decode_jpeg (torchcodec >= 0.16), which torchvision 0.29 points to,
    fits the same call."""

    def __call__(self, files: list[torch.Tensor]) -> list[torch.Tensor]: ...


class TorchvisionJpeg:
    """torchvision.io.decode_jpeg: nvJPEG in one batched call on CUDA (its hardware
    decoder where the GPU has one), libjpeg-turbo image by image on CPU."""

    def __init__(self, device: torch.device):
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device, self._decode, self._rgb = device, decode_jpeg, ImageReadMode.RGB
        # torchvision 0.29 warns at every call that its decoders move to TorchCodec.
        warnings.filterwarnings("ignore", message=".*TorchCodec.*")
        warnings.filterwarnings("ignore", message=".*image decoding and encoding.*")

    def __call__(self, files: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._decode(files, mode=self._rgb, device=self.device)


def resized_crops(images: list[torch.Tensor], crops: list[Crop], size: int,
                  budget: int = CROP_BUDGET) -> torch.Tensor:
    """Each image's crop, resized to size x size and mirrored where its crop says, as
    one float N x 3 x size x size tensor (0-255): one roi_align per padded chunk.

    roi_align's adaptive sampling (sampling_ratio=-1) averages ceil(crop/size)^2
    bilinear samples per output pixel, a box-filtered (antialiased) resize; the
    images are padded to a common size with their last row and column repeated
    once, so samples at an image's edge see its own edge, as in an unpadded resize.
    """
    from torchvision.ops import roi_align

    device = images[0].device
    outputs, start = [], 0
    while start < len(images):
        end, height, width = start, 0, 0
        while end < len(images):
            h, w = max(height, images[end].shape[1]), max(width, images[end].shape[2])
            if end > start and (end - start + 1) * 3 * (h + 1) * (w + 1) > budget:
                break
            height, width, end = h, w, end + 1
        chunk = images[start:end]
        padded = torch.zeros((len(chunk), 3, height + 1, width + 1), dtype=torch.uint8,
                             device=device)
        for row, img in zip(padded, chunk, strict=True):
            row[:, :img.shape[1], :img.shape[2]] = img
        n = torch.arange(len(chunk), device=device)
        hs = torch.tensor([img.shape[1] for img in chunk], device=device)
        ws = torch.tensor([img.shape[2] for img in chunk], device=device)
        padded[n, :, hs, :] = padded[n, :, hs - 1, :]
        padded[n, :, :, ws] = padded[n, :, :, ws - 1]
        boxes = torch.tensor([[j, c.left, c.top, c.left + c.width, c.top + c.height]
                              for j, c in enumerate(crops[start:end])],
                             dtype=torch.float32, device=device)
        outputs.append(roi_align(padded.float(), boxes, (size, size), spatial_scale=1.0,
                                 sampling_ratio=-1, aligned=True))
        start = end
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    flips = torch.tensor([c.flip for c in crops], device=device).view(-1, 1, 1, 1)
    return torch.where(flips, out.flip(-1), out)


class PixelsToDevice:
    """The cpu path's batches onto the device: copy (pinned, non-blocking on GPU), the
    NHWC batch viewed as NCHW (so channels-last costs nothing), normalize.

    On a CPU device the normalization runs on one thread: it is a few memory-bound
    passes over the batch, and the OpenMP threads it would wake then spin on the cores
    the loader workers decode on (docs/benchmarks.md: on 2 cores, the data path alone
    ran 1.5x faster so)."""

    def __init__(self, spec: Spec, feed: Feed):
        self.feed, self.normalize = feed, Normalizer(spec, feed.device)

    def __call__(self, packed: Packed) -> Batch:
        device = self.feed.device
        labels = [label for _, label in packed.items]
        if not labels:
            return empty_batch(device, packed.bad)
        pixels = packed.data
        if device.type == "cuda":
            pixels = pixels.pin_memory()
        images = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
        with one_thread(device):
            # the layout first, while it is 4x fewer bytes
            images = self.normalize(memory_format(images, self.feed))
        return Batch(images, targets(labels, device), packed.bad, [i for i, _ in packed.items])


@contextmanager
def one_thread(device: torch.device):
    """torch's CPU work in this block on one thread (no-op for a GPU)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DecodeOnDevice:
    """The gpu path's batches: JPEGs decoded in one call, every image cropped, resized
    and flipped in one more, normalized. A JPEG the decoder refuses is decoded by the
    contract's code here instead; one that cannot be decoded at all is a BadImage."""

    def __init__(self, split: Split, spec: Spec, feed: Feed, min_size: int,
                 decoder: JpegDecoder | None = None):
        self.split, self.spec, self.feed, self.min_size = split, spec, feed, min_size
        self.decoder = decoder or TorchvisionJpeg(feed.device)
        self.normalize = Normalizer(spec, feed.device)
        self.refused = 0  # JPEGs the decoder refused (decoded by the contract's code)
        self.broken = False  # the decoder refused a whole batch, one by one too

    def __call__(self, packed: Packed) -> Batch:
        device, items, bad = self.feed.device, packed.items, list(packed.bad)
        images: list[torch.Tensor | None] = [None] * len(items)
        files = {k: packed.data[it.offset:it.offset + it.size] for k, it in enumerate(items)
                 if it.shape is None}
        for k, img in self._decode(files).items():
            images[k] = img
        for k, it in enumerate(items):
            if it.shape is not None:  # decoded by the worker
                pixels = packed.data[it.offset:it.offset + it.size].view(it.shape)
                images[k] = pixels.to(device, non_blocking=True).permute(2, 0, 1)
            elif images[k] is None:
                path = self.split.samples[it.index][0]
                try:
                    rgb = load_rgb(bytes(files[k].numpy()))
                except ValueError as exc:
                    bad.append(BadImage(sample_name(self.split, path), str(exc)))
                    continue
                self.refused += 1
                images[k] = torch.from_numpy(np.array(rgb)).to(device).permute(2, 0, 1)
        kept = [k for k, img in enumerate(images) if img is not None]
        if len(kept) < self.min_size or not kept:
            return empty_batch(device, bad)
        crops = [fit(items[k].crop, images[k]) for k in kept]
        x = resized_crops([images[k] for k in kept], crops, self.spec.image_size)
        return Batch(memory_format(self.normalize.in_place(x), self.feed),
                     targets([items[k].label for k in kept], device), bad,
                     [items[k].index for k in kept])

    def _decode(self, files: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """All in one call; if that fails, one by one, leaving out those that fail. A
        decoder that fails every file of a batch is not asked again."""
        if not files or self.broken:
            return {}
        try:
            return dict(zip(files, self.decoder(list(files.values())), strict=True))
        except Exception as exc:  # noqa: BLE001 - which one failed is found below
            error = exc
        decoded = {}
        for k, data in files.items():
            try:
                decoded[k] = self.decoder([data])[0]
            except Exception:  # noqa: BLE001  # nosec B112
                continue  # the contract's decoder decides (in __call__)
        if not decoded and len(files) > 1:
            self.broken = True
            log.warning("the JPEG decoder on %s decoded none of a batch's %d JPEGs (%s): "
                        "the training process decodes them from now on, one at a time; "
                        "data-path=cpu decodes in the loader workers instead",
                        self.feed.device, len(files), str(error).splitlines()[0][:200])
        return decoded


def fit(crop: Crop, image: torch.Tensor) -> Crop:
    """The crop, inside the image as decoded (a decoder may round sizes differently
    from the header the crop was drawn from)."""
    h, w = image.shape[1], image.shape[2]
    top, left = min(crop.top, h - 1), min(crop.left, w - 1)
    return Crop(top, left, min(crop.height, h - top), min(crop.width, w - left), crop.flip)


def targets(labels: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(labels, dtype=torch.long).to(device, non_blocking=True)


def empty_batch(device: torch.device, bad: list) -> Batch:
    return Batch(torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device),
                 bad, [])


def memory_format(images: torch.Tensor, feed: Feed) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last if feed.channels_last
                             else torch.contiguous_format)


# ---------------------------------------------------------------- the batch source

class TrainingBatches(BatchSampler):
    """Batches of `batch_size`, where a last batch of one sample joins the one before.

    BatchNorm cannot train on a batch of one ("Expected more than 1 value per
    channel when training"), and any training set one more than a multiple of the
    batch size ends with one. Every sample is still trained on once per epoch.
    """

    def __init__(self, sampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False)

    def __iter__(self):
        pending = None
        for batch in super().__iter__():
            if pending is not None and len(batch) == 1 < self.batch_size:  # the last one
                batch, pending = pending + batch, None
            if pending is not None:
                yield pending
            pending = batch
        if pending is not None:
            yield pending

    def __len__(self) -> int:
        n = len(self.sampler)
        return super().__len__() - (n > 1 and n % self.batch_size == 1)


_END = object()


class BatchSource:
    """One split's batches on the device, pass after pass, every wait bounded.

    On CUDA a thread prepares up to PREFETCH_BATCHES batches ahead on its own CUDA
    stream (the device work of the gpu path overlaps the training step); on CPU the
    batch is prepared when asked for, in the training process, so that with
    workers=0 a seed's augmentation and training draw random numbers in one order.
    """

    def __init__(self, name: str, loader: DataLoader, to_batch, feed: Feed, sampler=None):
        self.name, self.loader, self.to_batch, self.feed = name, loader, to_batch, feed
        self.sampler = sampler
        self.epoch = 0
        self.watchdog = feed.watchdog or stalls.Watchdog(feed.timeout)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def workers(self) -> int:
        return self.loader.num_workers

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`'s order, from its `start`-th sample (a resumed epoch)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):  # distributed.EpochSampler
            self.sampler.set_epoch(epoch, start)

    def what(self, k: int) -> str:
        """The wait, as the failure line names it: 'train' batch 2 of 3 in epoch 2."""
        where = f" in epoch {self.epoch}" if self.epoch else ""
        return f"'{self.name}' batch {k} of {len(self)}{where}"

    def __iter__(self):
        if self.feed.device.type == "cuda":
            return self._ahead()
        return self._when_asked()

    def _checked(self, k: int, fetch):
        """fetch() within the bound; a loader failure ends the job (stalls.stop)."""
        with self.watchdog.waiting(self.what(k)):
            try:
                return fetch()
            except RuntimeError as exc:
                fail_if_stalled(exc, self.what(k), self.feed.timeout)
                raise

    def _when_asked(self):
        it = self._checked(1, lambda: iter(self.loader))
        k = 0
        while True:
            k += 1
            packed = self._checked(k, lambda: next(it, _END))
            if packed is _END:
                return
            yield self.to_batch(packed)

    def _ahead(self):
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        done = threading.Event()
        device = self.feed.device

        def offer(item) -> bool:
            while not done.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            stream = torch.cuda.Stream(device)
            try:
                with torch.cuda.device(device), torch.cuda.stream(stream):
                    for packed in self.loader:
                        batch = self.to_batch(packed)
                        event = torch.cuda.Event()
                        event.record(stream)
                        if not offer((batch, event)):
                            return
                offer(_END)
            except BaseException as exc:  # noqa: BLE001 - handed to the training loop
                offer(exc)

        thread = threading.Thread(target=produce, name=f"{self.name}-batches", daemon=True)
        thread.start()
        try:
            k = 0
            while True:
                k += 1
                item = self._checked(k, ready.get)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    fail_if_stalled(item, self.what(k), self.feed.timeout)
                    raise item
                batch, event = item
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in (batch.images, batch.targets):
                    t.record_stream(current)
                yield batch
        finally:
            done.set()
            with self.watchdog.waiting(f"end of the '{self.name}' batches"):
                thread.join()


def fail_if_stalled(exc: BaseException, what: str, timeout: float) -> None:
    """DataLoader's timeout or a dead worker: end the job with its failure line."""
    if stalls.is_loader_failure(exc):
        cause = "" if "timed out" in str(exc) else f"a loader worker died ({exc})"
        stalls.stop(stalls.describe(what, timeout, cause))


def batch_bytes(split: Split, spec: Spec, batch_size: int, encoded: bool) -> int:
    """About what one batch takes in /dev/shm: decoded crops, or (gpu path) files,
    from a sample of them (a PNG counted as pixels: the worker decodes it)."""
    if not encoded:
        return batch_size * 3 * spec.image_size ** 2
    sizes = []
    for path, _ in split.samples[:: max(1, len(split.samples) // 32)][:32]:
        try:
            size = path.stat().st_size
        except OSError:
            continue
        sizes.append(size if path.suffix.lower() in (".jpg", ".jpeg") else 4 * size)
    return batch_size * int(np.mean(sizes)) if sizes else 0


def fit_workers(workers: int, per_batch: int, shm: int) -> tuple[int, int]:
    """(workers, batches in flight per worker) whose batches fit in half of /dev/shm:
    fewer in flight first, then fewer workers, then none (no shared memory needed)."""
    if workers == 0 or shm == 0 or per_batch == 0:
        return workers, PREFETCH_BATCHES
    budget = shm // 2
    if workers * PREFETCH_BATCHES * per_batch <= budget:
        return workers, PREFETCH_BATCHES
    fitted = min(workers, budget // per_batch)
    log.warning("/dev/shm has %s: %d loader workers with %d batches of %s in flight each "  # nosec B108
                "would not fit, so %s. Give the container more shared memory (docker "
                "--shm-size) or lower batch-size.", stalls.mib(shm), workers,
                PREFETCH_BATCHES, stalls.mib(per_batch),
                f"{fitted} worker(s) with 1 batch each" if fitted else
                "the training process decodes itself (workers=0)")
    return fitted, 1


def make_batches(split: Split, spec: Spec, batch_size: int, feed: Feed, *,
                 training: bool, augment: bool = True, seed: int = 0, sampler=None,
                 shuffle: bool = False) -> BatchSource:
    """The batch source for one split. `training`: the data path's training preset,
    and never a batch of a single image (unless batch_size is 1), neither at the end
    of an epoch (TrainingBatches) nor after decode failures; otherwise the evaluation
    preset, every image once, in order (unless `sampler` says otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    if sampler is None:
        sampler = (RandomSampler(range(len(split.samples)), generator=generator) if shuffle
                   else SequentialSampler(range(len(split.samples))))
    batches = (TrainingBatches(sampler, batch_size) if training
               else BatchSampler(sampler, batch_size, drop_last=False))
    min_size = min(2, batch_size) if training else 1
    on_device = training and feed.path == "gpu"
    if on_device:
        dataset: Dataset = EncodedImages(split, spec, augment)
        collate = functools.partial(pack_encoded, min_size=min_size)
        to_batch = DecodeOnDevice(split, spec, feed, min_size)
    else:
        dataset = DecodedImages(split, TrainPreset(spec, augment) if training
                                else EvalPreset(spec))
        collate = functools.partial(pack_pixels, min_size=min_size)
        to_batch = PixelsToDevice(spec, feed)
    workers, in_flight = fit_workers(feed.workers, batch_bytes(split, spec, batch_size,
                                                                on_device), stalls.shm_bytes())
    options = {}
    if workers:
        torch.multiprocessing.set_sharing_strategy(SHARING_STRATEGY)
        options = dict(timeout=feed.timeout, prefetch_factor=in_flight,
                       persistent_workers=True)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                        collate_fn=collate, generator=generator, **options)
    return BatchSource(split.name, loader, to_batch, feed, sampler)
