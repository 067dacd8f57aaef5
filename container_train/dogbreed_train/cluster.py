"""The cluster a job runs on, read once: its hosts, this host, this host's GPUs and CPUs.

SageMaker describes the cluster in input/config/resourceconfig.json. The training
toolkit's SM_* variables win where they are set, but the toolkit does not export
them into its own process (where launch.py runs), so the file is what is usually
read. As the toolkit's ``Environment`` does, everything is read into one frozen
object when a process starts and passed down from there.

``unusable_gpus`` is the launcher's check that GPUs the host has are GPUs torch
can use: the image's torch is a CUDA 13 build, and on an older NVIDIA driver it
sees no GPU at all, which would otherwise train on the CPU, silently and slowly.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import paths

RESOURCE_CONFIG = "resourceconfig.json"


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[str, ...] = ("algo-1",)
    current_host: str = "algo-1"
    gpus: int = 0     # on this host
    cpus: int = 1     # on this host
    network_interface: str | None = None  # the one SageMaker names, which may not exist

    @property
    def master_host(self) -> str:
        """The first host: the rendezvous of torchrun."""
        return self.hosts[0]

    @property
    def host_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def multi_host(self) -> bool:
        return len(self.hosts) > 1

    @classmethod
    def read(cls) -> Cluster:
        config = resource_config()
        hosts = (json.loads(os.environ["SM_HOSTS"]) if os.environ.get("SM_HOSTS")
                 else config.get("hosts") or ["algo-1"])
        current = os.environ.get("SM_CURRENT_HOST") or config.get("current_host") or hosts[0]
        interface = (os.environ.get("SM_NETWORK_INTERFACE_NAME")
                     or config.get("network_interface_name") or None)
        return cls(tuple(hosts), current, gpu_count(), cpu_count(), interface)


def resource_config() -> dict:
    """SageMaker's description of the cluster; empty outside SageMaker."""
    try:
        return json.loads((paths.config_dir() / RESOURCE_CONFIG).read_text())
    except (OSError, ValueError):
        return {}


def gpu_count() -> int:
    if os.environ.get("SM_NUM_GPUS"):
        return int(os.environ["SM_NUM_GPUS"])
    import torch  # only here: the launcher needs no torch when SageMaker says how many

    return torch.cuda.device_count()


def cpu_count() -> int:
    return int(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1)


# NVIDIA's minimum Linux driver per CUDA major version (CUDA release notes).
MIN_DRIVER = {"13": "580", "12": "525", "11": "450"}
DRIVER_VERSION = Path("/proc/driver/nvidia/version")
# SageMaker instance types with NVIDIA GPUs (ml.g4ad has AMD ones); local_gpu is local mode's.
GPU_INSTANCE = re.compile(r"^ml\.(p\d|g(?!4ad)\d)|^local_gpu$")


def gpus_promised(cluster: Cluster) -> str:
    """Why this host should have NVIDIA GPUs ("" when nothing says so)."""
    if cluster.gpus > 0 and os.environ.get("SM_NUM_GPUS"):
        return f"SM_NUM_GPUS={os.environ['SM_NUM_GPUS']}"
    instance = resource_config().get("current_instance_type", "")
    if GPU_INSTANCE.match(instance):
        return f"the instance type {instance}"
    devices = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if devices:
        return f"{', '.join(devices)} exist"
    return ""


def driver_version() -> str:
    """The NVIDIA driver's version (NVML, else /proc), or "none"."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001  # nosec B110
        pass  # no driver, or no NVML library: /proc says
    try:
        found = re.search(r"Kernel Module\s+([\d.]+)", DRIVER_VERSION.read_text())
    except OSError:
        found = None
    return found.group(1) if found else "none"


def unusable_gpus(cluster: Cluster) -> str:
    """The failure line when the host has GPUs torch cannot use, else ""."""
    promised = gpus_promised(cluster)
    if not promised:
        return ""
    import torch

    if torch.cuda.is_available():
        return ""
    cuda = torch.version.cuda or "none (a CPU-only torch)"
    needs = MIN_DRIVER.get(cuda.split(".")[0])
    wanted = f"CUDA {cuda}, which needs NVIDIA driver {needs} or newer" if needs else \
        f"CUDA {cuda}"
    return (f"this host has GPUs ({promised}), but PyTorch cannot use them: NVIDIA driver "
            f"{driver_version()} found, and this image's torch {torch.__version__} needs "
            f"{wanted}. Use an instance family whose driver supports it, or build the "
            "image with a torch wheel for an older CUDA and NVIDIA's forward-compatibility "
            "libraries (docs/training.md, \"GPUs\"). Training on the CPU instead would be "
            "silent and slow, so the job stops.")
