"""The cluster a job runs on, read once: its hosts, this host, this host's GPUs and CPUs.

SageMaker describes the cluster in input/config/resourceconfig.json. The training
toolkit's SM_* variables win where they are set, but the toolkit does not export
them into its own process (where launch.py runs), so the file is what is usually
read. As the toolkit's ``Environment`` does, everything is read into one frozen
object when a process starts and passed down from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

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
