"""Entry point for the SageMaker training toolkit (SAGEMAKER_TRAINING_MODULE).

`docker run IMAGE train` runs the toolkit's ``train``, which prepares the SM_*
environment and calls ``main`` here. The training program runs as a child process
so that its exit code and failure file are its own; a plain SystemExit here would
be reported by the toolkit as success, so a failure is raised as an exception
whose ``errno`` becomes the container's exit code.

One GPU and one host: ``python -m dogbreed_train``. Several GPUs or several hosts:
torchrun starts one process per GPU (one per host on CPU) on every host, with
the first host as the rendezvous. Hosts come from resourceconfig.json (SM_HOSTS and
SM_CURRENT_HOST win when set); the toolkit does not export SM_* variables into its
own process. DOGBREED_PROCS_PER_HOST overrides the number of processes per host.
This process is the container's PID 1 (entrypoint.py), so it passes SIGTERM on
to the program, which stops and says so itself; a program that died of one
before it could say so gets its ``Stopped:`` failure file from here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

from . import errors, paths, stopping

log = logging.getLogger(__name__)

MASTER_PORT = 29500
STOPPED = 128 + signal.SIGTERM  # 143, as the program exits on SIGTERM


class TrainingFailed(Exception):
    def __init__(self, code: int):
        super().__init__(f"training exited with code {code}; see the failure file and log")
        self.errno = code


def resource_config() -> dict:
    """SageMaker's description of the cluster: hosts, this host, network interface."""
    path = paths.config_dir() / "resourceconfig.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def gpu_count() -> int:
    if os.environ.get("SM_NUM_GPUS"):
        return int(os.environ["SM_NUM_GPUS"])
    import torch  # only here: the launcher itself needs no torch otherwise

    return torch.cuda.device_count()


def procs_per_host() -> int:
    override = os.environ.get("DOGBREED_PROCS_PER_HOST")
    if override:
        return max(1, int(override))
    return max(1, gpu_count())


def hosts() -> list[str]:
    if os.environ.get("SM_HOSTS"):
        return json.loads(os.environ["SM_HOSTS"])
    return resource_config().get("hosts") or ["algo-1"]


def current_host(all_hosts: list[str]) -> str:
    return (os.environ.get("SM_CURRENT_HOST") or resource_config().get("current_host")
            or all_hosts[0])


def command() -> list[str]:
    all_hosts, nproc = hosts(), procs_per_host()
    if len(all_hosts) == 1 and nproc == 1:
        return [sys.executable, "-m", "dogbreed_train"]
    current = current_host(all_hosts)
    # One host: loopback, which needs neither name resolution nor a network.
    master = all_hosts[0] if len(all_hosts) > 1 else "127.0.0.1"
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(all_hosts)}",
            f"--node-rank={all_hosts.index(current)}", f"--master-addr={master}",
            f"--master-port={MASTER_PORT}", f"--nproc-per-node={nproc}", "-m", "dogbreed_train"]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    interface = (env.get("SM_NETWORK_INTERFACE_NAME")
                 or resource_config().get("network_interface_name"))
    if interface and len(hosts()) > 1:  # the interface SageMaker connects the hosts on
        env.setdefault("GLOO_SOCKET_IFNAME", interface)
        env.setdefault("NCCL_SOCKET_IFNAME", interface)
    return env


def main() -> None:
    errors.clear_failure()
    cmd = command()
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
    child = subprocess.Popen(cmd, env=environment())
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
