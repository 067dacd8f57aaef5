"""Where training time goes: waiting for data vs computing, GPU use, torch.profiler.

Every epoch logs one PERF line, e.g.

    PERF epoch=3/10 images/s=812.4 data_wait=41% compute=59% gpu_util=38% gpu_mem=9.1GiB input-bound data_path=cpu workers=8 shm=64MiB

"data_wait" is the time the training loop spent blocked on its batch source, the
device's share of the data path included (decoding and cropping on the GPU path,
normalizing on either). GPU work is queued asynchronously, so a loop waiting on
the GPU shows up as compute; a loop waiting on JPEG decoding shows up as
data_wait. Above 20% waiting the job is input-bound: the gpu data path, more
data-loader workers or a bigger instance's CPUs, or pre-resized images. The
line ends with the data path that ran, its loader workers and /dev/shm's size. The optional torch.profiler trace covers a window of steps and goes
to the TensorBoard folder (/opt/ml/output/tensorboard, copied into the job's
output at the end), for TensorBoard or Perfetto.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

log = logging.getLogger(__name__)

INPUT_BOUND = 0.20


class TimedBatches:
    """A loader whose iteration times itself, as torchvision's ``MetricLogger.log_every``
    does: the time from asking for the next batch to getting it is data wait, the
    rest (the loop body, with the step's GPU work queued) is compute. The loop that
    iterates it needs no timing of its own; ``stats`` sums it up afterwards."""

    def __init__(self, batches: Iterable):
        self.batches = batches
        self.wait, self.images = 0.0, 0
        self.started: float | None = None

    def __iter__(self) -> Iterator:
        self.started = mark = time.perf_counter()
        for batch in self.batches:
            now = time.perf_counter()
            self.wait += now - mark
            self.images += len(batch[1])  # (images, labels, ...)
            yield batch
            mark = time.perf_counter()

    def stats(self, device: torch.device) -> dict:
        """Images/s and the shares of waiting and computing, up to now (after the
        queued GPU work is done)."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - self.started if self.started is not None else 0.0
        share = self.wait / total if total > 0 else 0.0
        return {"images_per_s": self.images / total if total > 0 else 0.0,
                "data_wait": share, "compute": 1.0 - share,
                "bound": "input-bound" if share > INPUT_BOUND else "compute-bound"}


class GpuSampler:
    """CPU and GPU use over the training epochs, sampled every 0.5 s in a thread.

    Each epoch's mean GPU utilization and peak memory go into its PERF line; the
    whole series (CPU %, I/O wait %, GPU %, GPU memory % of the GPU, epoch) feeds
    the system rules (rules.py) and the report. 0.5 s is SageMaker's default
    system-monitor interval.
    """

    def __init__(self, device: torch.device, interval: float = 0.5):
        self.device, self.interval = device, interval
        self.samples: list[int] = []
        self.series: dict[str, list] = {"t": [], "epoch": [], "cpu": [], "iowait": []}
        self.epoch = 0
        self._stop = threading.Event()
        self._thread = None
        self._handle = None
        self._t0 = time.monotonic()
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                index = device.index if device.index is not None else torch.cuda.current_device()
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self._nvml = pynvml
                self.series.update(gpu_util=[], gpu_mem=[])
            except Exception as exc:  # noqa: BLE001 - utilization is nice to have
                log.warning("GPU utilization unavailable (NVML): %s", exc)
        try:
            import psutil

            self._psutil = psutil
            psutil.cpu_times_percent(interval=None)  # starts its interval
        except Exception:  # noqa: BLE001
            self._psutil = None

    def __enter__(self):
        self.samples.clear()
        self._stop.clear()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a sampler must never disturb training
                return

    def _sample(self) -> None:
        row = {}
        if self._psutil is not None:
            cpu = self._psutil.cpu_times_percent(interval=None)
            row["cpu"] = 100.0 - cpu.idle - getattr(cpu, "iowait", 0.0)
            row["iowait"] = getattr(cpu, "iowait", 0.0)
        if self._handle is not None:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            self.samples.append(util)
            row["gpu_util"], row["gpu_mem"] = util, 100.0 * mem.used / mem.total
        if not row:
            return
        row.update(t=round(time.monotonic() - self._t0, 2), epoch=self.epoch)
        for key, values in self.series.items():  # one row appended in full, or none
            values.append(row.get(key, 0.0))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def summary(self) -> dict:
        if self.device.type != "cuda":
            return {}
        out = {"gpu_mem_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
        if self.samples:
            out["gpu_util"] = sum(self.samples) / len(self.samples) / 100
        return out


def perf_line(epoch: int, epochs: int, stats: dict) -> str:
    parts = [f"PERF epoch={epoch}/{epochs}", f"images/s={stats['images_per_s']:.1f}",
             f"data_wait={stats['data_wait']:.0%}", f"compute={stats['compute']:.0%}"]
    if "gpu_util" in stats:
        parts.append(f"gpu_util={stats['gpu_util']:.0%}")
    if "gpu_mem_gib" in stats:
        parts.append(f"gpu_mem={stats['gpu_mem_gib']:.1f}GiB")
    parts.append(stats["bound"])
    if "data_path" in stats:
        shm = stats["shm_mib"]
        parts += [f"data_path={stats['data_path']}", f"workers={stats['workers']}",
                  f"shm={shm}MiB" if shm < 1024 else f"shm={shm / 1024:.0f}GiB"]
    return " ".join(parts)


def parse_window(text: str) -> tuple[int, int] | None:
    """'20-30' -> steps 20 to 29 of the run; '' -> no trace."""
    if not text:
        return None
    start, _, end = text.partition("-")
    return int(start), int(end)


def trace(window: tuple[int, int] | None, target: Path, rank: int, device: torch.device):
    """A torch.profiler over `window` (call .step() after every training step)."""
    if window is None:
        return nullcontext(None)
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    start, end = window
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    log.info("torch.profiler: tracing steps %d-%d into %s", start, end - 1, target)
    return profile(activities=activities,
                   schedule=schedule(skip_first=max(0, start - 1), wait=0,
                                     warmup=1 if start > 0 else 0, active=end - start, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(target),
                                                            worker_name=f"rank{rank}"),
                   record_shapes=False, with_stack=False)
