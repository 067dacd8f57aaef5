"""The cluster a job runs on: its hosts, this host, this host's GPUs and CPUs.

SageMaker describes the cluster in input/config/resourceconfig.json, which the job
reads once (job_config.py): ``from_config`` turns the file's contents into a
Cluster, SM_* variables winning where they are set (the toolkit sets none where
launch.py runs: entrypoint.py, [toolkit-keeps-SM-variables]). Counting the GPUs
needs torch, so the launcher does it (``with_gpus_counted``) and hands the counted
cluster down with the job.

``unusable_gpus`` is the launcher's check that GPUs the host has are GPUs torch
can use: the image's torch is a CUDA 13 build, and on an older NVIDIA driver it
sees no GPU at all, which would otherwise train on the CPU, silently and slowly.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[str, ...] = ("algo-1",)
    current_host: str = "algo-1"
    gpus: int | None = 0  # on this host; None: not counted yet (with_gpus_counted)
    cpus: int = 1     # on this host
    network_interface: str | None = None  # the one SageMaker names, which may not exist
    instance_type: str = ""  # e.g. ml.g5.xlarge; "local" or "local_gpu" in local mode

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
    def from_config(cls, config: dict) -> Cluster:
        """The cluster resourceconfig.json's contents describe (``{}`` outside SageMaker:
        this machine alone); GPUs are left to count unless SM_NUM_GPUS says."""
        hosts = (json.loads(os.environ["SM_HOSTS"]) if os.environ.get("SM_HOSTS")
                 else config.get("hosts") or ["algo-1"])
        current = os.environ.get("SM_CURRENT_HOST") or config.get("current_host") or hosts[0]
        interface = (os.environ.get("SM_NETWORK_INTERFACE_NAME")
                     or config.get("network_interface_name") or None)
        gpus = int(os.environ["SM_NUM_GPUS"]) if os.environ.get("SM_NUM_GPUS") else None
        return cls(tuple(hosts), current, gpus, cpu_count(), interface,
                   str(config.get("current_instance_type") or ""))

    @classmethod
    def read(cls) -> Cluster:
        """The cluster on its own, read from resourceconfig.json, GPUs counted."""
        from .job_config import read_resource_config  # job_config builds Clusters

        return cls.from_config(read_resource_config()).with_gpus_counted()

    def with_gpus_counted(self) -> Cluster:
        """This cluster with this host's GPUs counted by torch, where no one said how many."""
        if self.gpus is not None:
            return self
        import torch  # only here: validating the job needs no torch

        return replace(self, gpus=torch.cuda.device_count())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> Cluster:
        return cls(**{**value, "hosts": tuple(value["hosts"])})


def cpu_count() -> int:
    return int(os.environ.get("SM_NUM_CPUS") or os.cpu_count() or 1)


# NVIDIA's minimum Linux driver per CUDA major version (CUDA release notes).
MIN_DRIVER = {"13": "580", "12": "525", "11": "450"}
DRIVER_VERSION = Path("/proc/driver/nvidia/version")
# SageMaker instance types with NVIDIA GPUs (ml.g4ad has AMD ones); local_gpu is local mode's.
GPU_INSTANCE = re.compile(r"^ml\.(p\d|g(?!4ad)\d)|^local_gpu$")


def gpus_promised(cluster: Cluster) -> str:
    """Why this host should have NVIDIA GPUs ("" when nothing says so)."""
    if os.environ.get("SM_NUM_GPUS") and cluster.gpus > 0:
        return f"SM_NUM_GPUS={os.environ['SM_NUM_GPUS']}"
    if GPU_INSTANCE.match(cluster.instance_type):
        return f"the instance type {cluster.instance_type}"
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
