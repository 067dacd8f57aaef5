"""`serve`: multi-model-server behind nginx, configured from SageMaker's environment.

Start-up order is what makes /ping honest:
  1. MMS starts on loopback ports only (inference and management API).
  2. The model is registered through the management API with server-side batching
     and ``synchronous=true``: the call returns once a worker has loaded and warmed
     up the model (see handler.py).
  3. Only then nginx opens the public port (SAGEMAKER_BIND_TO_PORT, default 8080).
Before step 3 the port refuses connections, so SageMaker never routes to a cold
container. If MMS or nginx exits, ``serve`` exits too and SageMaker replaces it.

Settings come from the inference toolkit's Environment (SAGEMAKER_BIND_TO_PORT,
SAGEMAKER_MODEL_SERVER_WORKERS, SAGEMAKER_MODEL_SERVER_TIMEOUT,
SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_MODEL_SERVER_VMARGS,
SAGEMAKER_STARTUP_TIMEOUT) and settings.py (DOGBREED_*).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sagemaker_inference.environment import Environment

from .model import METADATA_FILE
from .settings import Settings

log = logging.getLogger("dogbreed_serve.server")

HANDLER = "dogbreed_serve.handler:handle"
MODEL_NAME = "model"
CONF = Path(__file__).with_name("conf")


def default_workers() -> int:
    """One worker on a GPU; on CPUs two, so that one decodes while the other computes.

    Each CPU worker gets ONNX Runtime threads for all the CPUs (model.threads_for).
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return 1
    return min(2, os.cpu_count() or 1)


def free_ports(count: int, avoid: int) -> list[int]:
    """Free loopback ports below 32768 (MMS rejects higher ones)."""
    found: list[int] = []
    for port in range(8081, 32768):
        if port == avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError("no free loopback ports for multi-model-server")


# The toolkit's default (-XX:-UseContainerSupport) plus two flags for a frontend that
# only moves bytes between sockets: the C1 compiler alone (C2's compile threads kept
# burning CPU for minutes) and the serial collector. At concurrency 16 on 2 CPUs they
# took the JVM from 4.3-4.9 to 1.7-1.9 ms of CPU per request (docs/benchmarks.md).
# SAGEMAKER_MODEL_SERVER_VMARGS replaces them all.
JVM_ARGS = "-XX:-UseContainerSupport -XX:+UseSerialGC -XX:TieredStopAtLevel=1"


def mms_properties(env: Environment, inference_port: int, management_port: int,
                   workers: int, max_body: int) -> str:
    lines = {
        "inference_address": f"http://127.0.0.1:{inference_port}",
        "management_address": f"http://127.0.0.1:{management_port}",
        "default_workers_per_model": workers,
        "default_response_timeout": env.model_server_timeout,
        "max_request_size": max_body + 65536,
        "vmargs": os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS") or JVM_ARGS,
        "decode_input_request": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def register_model(management_port: int, settings: Settings, workers: int,
                   timeout: int) -> None:
    """Register with batching; returns when the workers have loaded the model."""
    query = urllib.parse.urlencode({
        "url": settings.model_dir, "model_name": MODEL_NAME, "handler": HANDLER,
        "runtime": "python3", "batch_size": settings.max_batch,
        "max_batch_delay": settings.max_batch_delay_ms, "initial_workers": workers,
        "synchronous": "true", "response_timeout": timeout,
    })
    url = f"http://127.0.0.1:{management_port}/models?{query}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, method="POST")
            # loopback (bandit B310)
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # nosec B310
                log.info("model registered: %s", json.loads(resp.read()).get("status"))
                return
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"MMS refused the model: {exc.code} {exc.read()[:500]!r}") from None
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("MMS management API did not come up in time") from None
            time.sleep(0.1)


def nginx_conf(workdir: Path, port: int, mms_port: int, max_body: int, timeout: int) -> Path:
    text = string.Template((CONF / "nginx.conf.template").read_text()).substitute(
        workdir=workdir, port=port, mms_port=mms_port, max_body=max_body, timeout=timeout)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


SERVICE_USER = "model-server"


def drop_privileges(model_dir: str) -> str:
    """Run everything as SERVICE_USER; returns the model dir that user can read.

    SageMaker starts containers as root and mounts the model as root's files; SDK
    local mode even extracts it into a 0700 folder. When the service user cannot
    read it, the model is copied to a folder it owns first.
    """
    if os.getuid() != 0:
        return model_dir
    user = pwd.getpwnam(SERVICE_USER)
    readable = all(
        subprocess.run(["test", "-r", str(Path(model_dir) / name)], user=user.pw_uid,
                       group=user.pw_gid, extra_groups=[]).returncode == 0
        for name in (METADATA_FILE, json.loads((Path(model_dir) / METADATA_FILE)
                                               .read_text())["model_file"]))
    if not readable:
        copy = Path(tempfile.mkdtemp(prefix="dogbreed-model-"))
        shutil.copytree(model_dir, copy, dirs_exist_ok=True)
        for path in [copy, *copy.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        log.info("copied the model to %s: %s cannot read %s", copy, SERVICE_USER, model_dir)
        model_dir = str(copy)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=SERVICE_USER)
    return model_dir


def forward(stream) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def main() -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if not (Path(settings.model_dir) / METADATA_FILE).is_file():
        log.error("no model in %s: expected model.onnx and model.json from dogbreed-train",
                  settings.model_dir)
        return 2
    model_dir = drop_privileges(settings.model_dir)
    if model_dir != settings.model_dir:
        os.environ["DOGBREED_MODEL_DIR"] = model_dir
        settings = Settings.from_env()
    env = Environment()
    port = int(env.inference_http_port)
    workers = int(env.model_server_workers or default_workers())
    max_body = env.max_request_size or 6 * 1024 * 1024
    timeout = int(env.model_server_timeout or 60)
    os.environ["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)  # read by the handler

    workdir = Path(tempfile.mkdtemp(prefix="dogbreed-serve-"))
    mms_port, mgmt_port = free_ports(2, avoid=port)
    config = workdir / "mms.properties"
    config.write_text(mms_properties(env, mms_port, mgmt_port, workers, max_body))
    started = time.monotonic()
    mms = subprocess.Popen(
        ["multi-model-server", "--start", "--foreground", "--mms-config", str(config),
         "--model-store", "/", "--log-config", str(CONF / "log4j2.xml")], cwd=workdir)
    children = [mms]

    def stop(*_):
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        register_model(mgmt_port, settings, workers, int(env.startup_timeout))
    except RuntimeError as exc:
        log.error("%s", exc)
        stop()
        return 1
    # nginx reopens /dev/stdout for its access log; a pipe we (the service user) own
    # allows that where the container's own stdout belongs to root.
    nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf(workdir, port, mms_port,
                                                             max_body, timeout)),
                              "-e", "stderr"], stdout=subprocess.PIPE)
    threading.Thread(target=forward, args=(nginx.stdout,), daemon=True).start()
    children.append(nginx)
    log.info("ready on port %d after %.1f s: %d worker(s), batches of up to %d",
             port, time.monotonic() - started, workers, settings.max_batch)
    watchdog = Watchdog(mms_port)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
        reap_orphans({child.pid for child in children})
        if watchdog.broken():
            log.error("multi-model-server has had no working worker for %d s (a worker "
                      "process was killed and MMS cannot restart it): exiting, so that the "
                      "container is replaced", UNHEALTHY_EXIT_S)
            stop()
            for child in children:
                child.wait()
            return 3
    stop()
    codes = [child.wait() for child in children]
    return next((c for c in codes if c), 0)


# MMS restarts a worker whose forked child died within a second or two. When the
# worker's parent process dies too, MMS keeps reconnecting to a socket nobody listens
# on: requests hang and MMS's /ping answers 200 {"status": "Unhealthy"}, which
# SageMaker counts as healthy. serve exits instead, after this long.
UNHEALTHY_EXIT_S = int(os.environ.get("DOGBREED_UNHEALTHY_EXIT_S") or 30)
WATCH_EVERY_S = 1.0


class Watchdog:
    def __init__(self, mms_port: int):
        self.url = f"http://127.0.0.1:{mms_port}/ping"
        self.last_check = 0.0
        self.unhealthy_since: float | None = None

    def healthy(self) -> bool:
        try:
            # loopback (bandit B310)
            with urllib.request.urlopen(self.url, timeout=5) as resp:  # nosec B310
                return json.loads(resp.read()).get("status") == "Healthy"
        except (OSError, ValueError):
            return False

    def broken(self) -> bool:
        now = time.monotonic()
        if now - self.last_check < WATCH_EVERY_S:
            return False
        self.last_check = now
        if self.healthy():
            self.unhealthy_since = None
            return False
        if self.unhealthy_since is None:
            self.unhealthy_since = now
            log.warning("multi-model-server reports no healthy worker")
        return now - self.unhealthy_since >= UNHEALTHY_EXIT_S


def reap_orphans(own: set[int]) -> None:
    """serve is PID 1 in the container: reap the orphans that get re-parented to it.

    When an MMS worker process dies, its children are re-parented to us; without this
    they stay zombies once they exit.
    Our own children (MMS, nginx) are left to Popen, which needs their exit codes.
    """
    if os.getpid() != 1:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == "1":  # state, parent pid
            try:
                os.waitpid(int(entry.name), os.WNOHANG)
            except ChildProcessError:
                pass
