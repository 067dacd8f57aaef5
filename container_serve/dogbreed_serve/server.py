"""`serve`: multi-model-server behind nginx, configured from SageMaker's environment.

Start-up order is what makes /ping honest:
  1. The model directory is checked whole (model.json, the ONNX session, its output
     width against the labels); a broken one ends here with one line saying what is
     wrong and what to do (exit 2).
  2. MMS starts on loopback ports only (inference and management API), inside
     SAGEMAKER_SAFE_PORT_RANGE when that is set, with its temporary files (pid file,
     worker sockets) in a fresh run folder: a restarted container starts clean.
  3. The model is registered through the management API with server-side batching
     and ``synchronous=true``: the call returns once a worker has loaded and warmed
     up the model (see handler.py). If MMS exits meanwhile, serve stops waiting.
  4. Only then nginx opens the public port (SAGEMAKER_BIND_TO_PORT, default 8080).
Before step 4 the port refuses connections, so SageMaker never routes to a cold
container. If MMS or nginx exits, ``serve`` exits too and SageMaker replaces it.

SIGTERM (``docker stop``, an endpoint update) is honoured at every stage. Once
serving, it drains: nginx stops accepting connections and finishes the requests in
flight (at most DRAIN_S), then MMS stops, and serve exits 0. Exit codes otherwise:
1 MMS or nginx failed, 2 a broken model or environment, 3 no working worker (see
Watchdog), 128+N a child killed by signal N.

Settings come from the inference toolkit's Environment (SAGEMAKER_BIND_TO_PORT,
SAGEMAKER_SAFE_PORT_RANGE, SAGEMAKER_MODEL_SERVER_WORKERS,
SAGEMAKER_MODEL_SERVER_TIMEOUT, SAGEMAKER_MAX_PAYLOAD_IN_MB,
SAGEMAKER_MODEL_SERVER_VMARGS, SAGEMAKER_STARTUP_TIMEOUT) and settings.py (DOGBREED_*).
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
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dogbreed_contract import ModelCardError, media
from dogbreed_contract.model_card import FILE as MODEL_CARD_FILE
from dogbreed_contract.model_card import ModelCard

from . import logs
from .settings import READY_FILE, RUN_DIR_ENV, Settings

log = logging.getLogger("dogbreed_serve.server")

HANDLER = "dogbreed_serve.handler:handle"
MODEL_NAME = "model"
CONF = Path(__file__).with_name("conf")
SERVICE_USER = "model-server"
RUN_PREFIX, MODEL_COPY_PREFIX = "dogbreed-serve-", "dogbreed-model-"
# nginx finishes the requests in flight within this, then MMS gets the rest of
# SageMaker's 30 s between SIGTERM and SIGKILL.
DRAIN_S = 20
MMS_STOP_S = 5


class Stop(Exception):
    """SIGTERM or SIGINT arrived before serve was serving: exit 0, nothing in flight."""


class Failure(Exception):
    """Serve cannot go on: the message is the one line the log gets, with an exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def default_workers() -> int:
    """One worker on a GPU; on CPUs two, so that one decodes while the other computes.

    Each CPU worker gets ONNX Runtime threads for all the CPUs (model.threads_for).
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return 1
    return min(2, os.cpu_count() or 1)


# multi-model-server 1.1.11 refuses to listen above this ("Invalid port number").
MMS_MAX_PORT = 32767


def port_range(value: str | None) -> range:
    """SAGEMAKER_SAFE_PORT_RANGE ("20000-20999", both ends included) or our default,
    without the ports MMS refuses."""
    if not value or not value.strip():
        return range(8081, MMS_MAX_PORT + 1)
    try:
        low, high = (int(part) for part in value.strip().split("-"))
    except ValueError:
        raise Failure(f"SAGEMAKER_SAFE_PORT_RANGE={value!r} is not LOW-HIGH (for example "
                      "20000-20999)", 2) from None
    if not 1 <= low <= high <= 65535:
        raise Failure(f"SAGEMAKER_SAFE_PORT_RANGE={value!r}: ports run from 1 to 65535", 2)
    if low > MMS_MAX_PORT:
        raise Failure(f"SAGEMAKER_SAFE_PORT_RANGE={value!r} lies above {MMS_MAX_PORT}, where "
                      "multi-model-server 1.1.11 refuses to listen: give a range that "
                      f"reaches below {MMS_MAX_PORT + 1}", 2)
    return range(low, min(high, MMS_MAX_PORT) + 1)


def free_ports(count: int, candidates: range, avoid: int) -> list[int]:
    """``count`` free loopback ports from ``candidates`` (MMS's inference and management)."""
    found: list[int] = []
    for port in candidates:
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
    raise Failure(f"no {count} free loopback ports in {candidates.start}-{candidates.stop - 1} "
                  "for multi-model-server (SAGEMAKER_SAFE_PORT_RANGE)", 2)


# The toolkit's default (-XX:-UseContainerSupport) plus three flags for a frontend that
# only moves bytes between sockets: the C1 compiler alone (C2's compile threads kept
# burning CPU for minutes), the serial collector, and no perf-data file in /tmp (which
# a read-only container may not have). At concurrency 16 on 2 CPUs the first two took
# the JVM from 4.3-4.9 to 1.7-1.9 ms of CPU per request (docs/benchmarks.md).
# SAGEMAKER_MODEL_SERVER_VMARGS replaces them all.
JVM_ARGS = "-XX:-UseContainerSupport -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData"


def mms_properties(env, inference_port: int, management_port: int, workers: int,
                   max_body: int) -> str:
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


def nginx_conf(run_dir: Path, port: int, mms_port: int, max_body: int, timeout: int) -> Path:
    text = string.Template((CONF / "nginx.conf.template").read_text()).substitute(
        workdir=run_dir, port=port, mms_port=mms_port, max_body=max_body, timeout=timeout,
        drain_s=DRAIN_S, accepted_types=media.nginx_type_pattern(),
        accepted_types_text=", ".join(t for t in media.ACCEPTED_TYPES if t != "image/jpg"))
    path = run_dir / "nginx.conf"
    path.write_text(text)
    return path


def writable_base() -> Path:
    """Where this start keeps its files: the first writable of TMPDIR, /tmp, /dev/shm,
    /var/tmp. A container run with --read-only still has /dev/shm (a tmpfs)."""
    candidates = [os.environ.get("TMPDIR"), "/tmp", "/dev/shm", "/var/tmp"]  # nosec B108
    for candidate in dict.fromkeys(c for c in candidates if c):
        path = Path(candidate)
        try:
            probe = tempfile.mkdtemp(prefix=".dogbreed-probe-", dir=path)
        except OSError:
            continue
        os.rmdir(probe)
        return path
    raise Failure("serve needs a writable folder for its sockets and temporary files, and "
                  "/tmp, /dev/shm and /var/tmp are all read-only: give the container a "
                  "writable /tmp (docker run --tmpfs /tmp, or a volume) or set TMPDIR to a "
                  "writable folder", 2)


def remove_stale(base: Path) -> None:
    """The run folders and model copies an earlier start of this container left behind
    (docker restart keeps /tmp): the old MMS pid file in one made MMS refuse to start."""
    for prefix in (RUN_PREFIX, MODEL_COPY_PREFIX):
        for old in base.glob(prefix + "*"):
            shutil.rmtree(old, ignore_errors=True)


def drop_privileges(model_dir: str, model_file: str, base: Path) -> str:
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
        for name in (MODEL_CARD_FILE, model_file))
    if not readable:
        copy = Path(tempfile.mkdtemp(prefix=MODEL_COPY_PREFIX, dir=base))
        try:
            shutil.copytree(model_dir, copy, dirs_exist_ok=True)
        except OSError as exc:
            raise Failure(f"{SERVICE_USER} cannot read {model_dir}, and copying it to {base} "
                          f"failed ({exc.strerror or exc}): make the model files readable to "
                          f"uid {user.pw_uid}, or give the container more space in {base}",
                          2) from None
        for path in [copy, *copy.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        log.info("copied the model to %s: %s cannot read %s", copy, SERVICE_USER, model_dir)
        model_dir = str(copy)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=SERVICE_USER)
    return model_dir


def exit_code(returncode: int) -> int:
    """A child's Popen return code as a process exit status (-15 -> 143, not 241)."""
    return 128 - returncode if returncode < 0 else returncode


class Serve:
    """One start of the serving stack, from the first signal handler to the last exit."""

    def __init__(self):
        self.stopping = threading.Event()
        self.signal_name = ""
        self.mms: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.mms_port = 0
        self.pumps: list[threading.Thread] = []

    # --- signals
    def on_signal(self, signum, _frame) -> None:
        """Only flags and signals here: the main thread logs and drains."""
        if self.stopping.is_set():
            return
        self.signal_name = signal.Signals(signum).name
        self.stopping.set()
        if self.nginx is None and self.mms is not None:  # still starting: nothing in flight
            self.signal_mms(signal.SIGTERM)

    def check_stop(self) -> None:
        if self.stopping.is_set():
            raise Stop

    # --- children
    def signal_mms(self, signum: int) -> None:
        """MMS's Python launcher, its JVM and the workers share one process group."""
        try:
            os.killpg(self.mms.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def start_mms(self, run_dir: Path, config: Path, writer: logs.Writer) -> None:
        env = dict(os.environ, TEMP=str(run_dir), TMPDIR=str(run_dir))  # pid file, sockets
        self.mms = subprocess.Popen(
            ["multi-model-server", "--start", "--foreground", "--mms-config", str(config),
             "--model-store", "/", "--log-config", str(CONF / "log4j2.xml")],
            cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pumps.append(logs.pump(self.mms.stdout,
                                    lambda line: writer.write(*logs.mms_record(line))))

    def start_nginx(self, conf: Path, writer: logs.Writer) -> None:
        from . import metrics

        def access(line: str) -> None:
            record = logs.access_record(line)
            if record is None:
                writer.write({"level": "INFO", "source": "nginx", "message": line}, line)
                return
            metrics.count_access(record)
            writer.write(dict(record, level="INFO", source="access"), logs.access_text(record))

        # nginx reopens /dev/stdout for its access log; a pipe we (the service user) own
        # allows that where the container's own stdout belongs to root.
        self.nginx = subprocess.Popen(["nginx", "-c", str(conf), "-e", "stderr"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pumps.append(logs.pump(self.nginx.stdout, access))
        self.pumps.append(logs.pump(self.nginx.stderr, lambda line: writer.write(
            logs.nginx_error_record(line), line)))

    def register_model(self, management_port: int, settings: Settings, workers: int,
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
            self.check_stop()
            if self.mms.poll() is not None:
                raise Failure(f"multi-model-server exited (status {exit_code(self.mms.poll())}) "
                              "before the model was registered: see its lines above")
            try:
                request = urllib.request.Request(url, method="POST")
                # loopback (bandit B310)
                with urllib.request.urlopen(request, timeout=timeout) as resp:  # nosec B310
                    log.info("model registered: %s", json.loads(resp.read()).get("status"))
                    return
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                raise Failure(f"multi-model-server could not start a worker with the model "
                              f"({exc.code}: {detail}): see the worker's lines above") from None
            except OSError:
                if time.monotonic() > deadline:
                    raise Failure(f"multi-model-server's management API did not answer "
                                  f"within {timeout} s (SAGEMAKER_STARTUP_TIMEOUT)") from None
                self.stopping.wait(0.1)

    def drain(self) -> None:
        """nginx: no new connections, finish what is in flight; then MMS."""
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(DRAIN_S + 2)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        if self.mms and self.mms.poll() is None:
            self.signal_mms(signal.SIGTERM)
            try:
                self.mms.wait(MMS_STOP_S)
            except subprocess.TimeoutExpired:
                pass
        if self.mms:
            self.signal_mms(signal.SIGKILL)  # whatever of the group is left
            self.mms.wait()
        for pump in self.pumps:  # the last log lines
            pump.join(timeout=2)

    # --- the whole start
    def run(self) -> int:
        writer = logs.configure_serve_logging()
        settings = Settings.from_env()
        try:
            return self.start_and_serve(settings, writer)
        except Stop:
            log.info("%s received while starting: stopping", self.signal_name)
            self.drain()
            return 0
        except Failure as exc:
            log.error("%s", exc)
            self.drain()
            return exc.code

    def start_and_serve(self, settings: Settings, writer: logs.Writer) -> int:
        from sagemaker_inference.environment import Environment

        from .model import validate

        if not (Path(settings.model_dir) / MODEL_CARD_FILE).is_file():
            raise Failure(f"no model in {settings.model_dir}: expected model.onnx and "
                          "model.json from dogbreed-train", 2)
        try:
            card = ModelCard.load(settings.model_dir)
            base = writable_base()
            remove_stale(base)
            model_dir = drop_privileges(settings.model_dir, card.model_file, base)
            if model_dir != settings.model_dir:
                os.environ["DOGBREED_MODEL_DIR"] = model_dir
                settings = Settings.from_env()
            self.check_stop()
            model = validate(settings.model_dir)  # as the user that will serve it
        except ModelCardError as exc:
            raise Failure(f"the model cannot be served: {exc}", 2) from None
        self.check_stop()

        env = Environment()
        port = int(env.inference_http_port)
        workers = int(env.model_server_workers or default_workers())
        max_body = env.max_request_size or 6 * 1024 * 1024
        timeout = int(env.model_server_timeout or 60)
        self.mms_port, mgmt_port = free_ports(
            2, port_range(os.environ.get("SAGEMAKER_SAFE_PORT_RANGE")), avoid=port)

        run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=base))
        (run_dir / "metrics").mkdir()
        # Read by the handler, by prometheus_client (before metrics.py is imported) and
        # by every child's tempfile module.
        os.environ.update({"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
                           RUN_DIR_ENV: str(run_dir), "TMPDIR": str(run_dir),
                           "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics")})
        config = run_dir / "mms.properties"
        config.write_text(mms_properties(env, self.mms_port, mgmt_port, workers, max_body))
        started = time.monotonic()
        self.start_mms(run_dir, config, writer)
        self.register_model(mgmt_port, settings, workers, int(env.startup_timeout))
        self.check_stop()

        from . import memory, metrics

        decode_mib = memory.create(run_dir, memory.budget_bytes(settings.decode_memory_mb))
        (run_dir / READY_FILE).touch()
        metrics.serve_scrapes(run_dir / "metrics.sock")
        self.start_nginx(nginx_conf(run_dir, port, self.mms_port, max_body, timeout), writer)
        log.info("ready on port %d after %.1f s: %d worker(s), batches of up to %d, "
                 "%d MiB for decoding large images; model: %s", port,
                 time.monotonic() - started, workers, settings.max_batch, decode_mib,
                 ", ".join(f"{k} {v}" for k, v in model.items()))
        return self.serve()

    def serve(self) -> int:
        watchdog = Watchdog(self.mms_port)
        while not self.stopping.wait(0.5):
            reap_orphans({self.mms.pid, self.nginx.pid})
            for name, child in (("multi-model-server", self.mms), ("nginx", self.nginx)):
                if child.poll() is not None:
                    code = exit_code(child.poll()) or 1
                    log.error("%s exited (status %d): stopping, so that the container is "
                              "replaced", name, code)
                    self.drain()
                    return code
            if watchdog.broken():
                log.error("multi-model-server has had no working worker for %d s (a worker "
                          "process was killed and MMS cannot restart it): exiting, so that "
                          "the container is replaced", UNHEALTHY_EXIT_S)
                self.drain()
                return 3
        log.info("%s received: draining (no new connections; at most %d s for the "
                 "requests in flight)", self.signal_name, DRAIN_S)
        started = time.monotonic()
        self.drain()
        log.info("drained and stopped in %.1f s", time.monotonic() - started)
        return 0


def main() -> int:
    serve = Serve()
    # First of all: serve is PID 1, for which the kernel ignores signals without a handler.
    signal.signal(signal.SIGTERM, serve.on_signal)
    signal.signal(signal.SIGINT, serve.on_signal)
    return serve.run()


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
