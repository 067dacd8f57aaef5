"""Entry point for the SageMaker training toolkit (SAGEMAKER_TRAINING_MODULE).

`docker run IMAGE train` reads the job (entrypoint.py) and runs the toolkit's
``train``, which calls ``main`` here. The training program runs as a child process
so that its exit code and failure file are its own; a plain SystemExit here would
be reported by the toolkit as success (entrypoint.py,
[toolkit-exits-0-on-SystemExit]), so a failure is raised as an exception whose
``errno`` becomes the container's exit code.

One GPU and one host: ``python -m dogbreed_train``. Several GPUs or several hosts:
torchrun starts one process per GPU (one per host on CPU) on every host, with
the first host as the rendezvous. Hosts come from the job the entrypoint read
(job_config.current); this host's GPUs are counted here, once, and the job goes
on to the program with them (DOGBREED_JOB). DOGBREED_PROCS_PER_HOST overrides the
number of processes per host.
Before any of that, a host with GPUs that torch cannot use (a driver older than
the image's CUDA needs) fails the job at once (cluster.unusable_gpus).
This process is the container's PID 1 (entrypoint.py), so it passes SIGTERM on
to the program, which stops and says so itself; a program that died of one
before it could say so gets its ``Stopped:`` failure file from here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from . import errors, job_config, stopping
from .cluster import Cluster, unusable_gpus

log = logging.getLogger(__name__)

MASTER_PORT = 29500
STOPPED = 128 + signal.SIGTERM  # 143, as the program exits on SIGTERM
NET_DIR = Path("/sys/class/net")     # one entry per network interface
ROUTES = Path("/proc/net/route")     # the kernel's IPv4 routing table


class TrainingFailed(Exception):
    def __init__(self, code: int):
        super().__init__(f"training exited with code {code}; see the failure file and log")
        self.errno = code


def procs_per_host(cluster: Cluster) -> int:
    override = os.environ.get("DOGBREED_PROCS_PER_HOST")
    if override:
        return max(1, int(override))
    return max(1, cluster.gpus)


def command(cluster: Cluster) -> list[str]:
    nproc = procs_per_host(cluster)
    if not cluster.multi_host and nproc == 1:
        return [sys.executable, "-m", "dogbreed_train"]
    # One host: loopback, which needs neither name resolution nor a network.
    master = cluster.master_host if cluster.multi_host else "127.0.0.1"
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(cluster.hosts)}",
            f"--node-rank={cluster.host_rank}", f"--master-addr={master}",
            f"--master-port={MASTER_PORT}", f"--nproc-per-node={nproc}", "-m", "dogbreed_train"]


def interfaces() -> set[str]:
    try:
        return {p.name for p in NET_DIR.iterdir()}
    except OSError:
        return set()


def route_interface(address: str) -> str | None:
    """The interface the kernel sends packets to address through (longest prefix)."""
    try:
        rows = ROUTES.read_text().splitlines()[1:]
        target = struct.unpack("<I", socket.inet_aton(address))[0]
    except (OSError, ValueError):
        return None
    best: tuple[int, str] | None = None
    for row in rows:
        fields = row.split()
        if len(fields) < 8:
            continue
        name, dest, mask = fields[0], int(fields[1], 16), int(fields[7], 16)
        if target & mask == dest and (best is None or mask.bit_count() > best[0]):
            best = (mask.bit_count(), name)
    return best[1] if best else None


def socket_interface(named: str | None, master: str) -> tuple[str | None, str]:
    """The interface gloo/NCCL should use, and why: the one SageMaker names when this
    container has it (SDK v3's local mode names "ethwe", which a plain Docker network
    lacks), else the one that routes to the master host, else none (gloo picks)."""
    present = interfaces()
    if named and named in present:
        return named, f"{named}, named in resourceconfig.json"
    try:
        address = socket.gethostbyname(master)
    except OSError:
        address = None
    routed = route_interface(address) if address else None
    missing = f"{named} (named) does not exist here; " if named else ""
    if routed:
        return routed, f"{missing}{routed}, which routes to {master} ({address})"
    return None, f"{missing}no route to {master} found: gloo/NCCL choose"


def environment(cluster: Cluster) -> dict[str, str]:
    env = dict(os.environ)
    if cluster.multi_host and not env.get("GLOO_SOCKET_IFNAME"):
        # the interface the hosts reach each other on
        interface, why = socket_interface(cluster.network_interface, cluster.master_host)
        print(f"network interface: {why}", flush=True)
        if interface:
            env["GLOO_SOCKET_IFNAME"] = interface
            env.setdefault("NCCL_SOCKET_IFNAME", interface)
    return env


def main() -> None:
    errors.clear_failure()
    try:
        job = job_config.current()
    except errors.UserError as exc:  # read here only when the toolkit laid out the job
        raise TrainingFailed(errors.report(exc)) from None
    cluster = job.cluster.with_gpus_counted()
    job = replace(job, cluster=cluster)  # handed on with this host's GPUs counted
    problem = unusable_gpus(cluster)
    if problem:  # before any process starts: a GPU host must never train on the CPU
        raise TrainingFailed(errors.report(errors.UserError(problem)))
    cmd = command(cluster)
    child, stop_requested = None, False

    def forward(signum, frame):
        nonlocal stop_requested
        stop_requested = True
        if child is not None:
            child.send_signal(signum)

    # Until now a SIGTERM stopped the job at once (entrypoint.py); from here the program has it.
    signal.signal(signal.SIGTERM, forward)
    if "torch.distributed.run" in cmd:
        print("launching: " + " ".join(cmd[1:]), flush=True)
    child = subprocess.Popen(cmd, env={**environment(cluster), **job.to_env()})
    if stop_requested:  # it came while the program was being started
        child.send_signal(signal.SIGTERM)
    code = child.wait()
    if code != 0 and stop_requested and errors.failure_reason() in ("", "Stopped"):
        # The program died of it before its handler was in place, or torchrun, which
        # passes it on to the program, exited with its own code: the job was stopped.
        if not errors.failure_reason():
            errors.write_failure(f"Stopped: SIGTERM {stopping.STARTING}")
        raise TrainingFailed(STOPPED)
    if code != 0:
        raise TrainingFailed(code if code > 0 else 128 - code)
