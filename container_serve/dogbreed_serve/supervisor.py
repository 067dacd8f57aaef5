"""serve's children (multi-model-server, nginx) and the state serve is in.

    STARTING --(model registered, nginx up)--> READY <--> UNHEALTHY (MMS: no working worker)
        \\                                        |           |
         `-------> STOPPING <--------------------'-----------'
                   (a signal, a child that exited, a start-up failure, or UNHEALTHY
                    for longer than DOGBREED_UNHEALTHY_EXIT_S)

Each change of state is logged once, by ``Supervisor.enter``, with the line that says
why. SIGTERM/SIGINT only set a flag; the main thread notices it, logs, and drains:
nginx first (no new connections, the requests in flight finish within DRAIN_S), then
MMS's whole process group.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import config_files, logs
from .config_files import CONF, DRAIN_S
from .settings import Settings

log = logging.getLogger("dogbreed_serve.server")

MODEL_NAME = "model"
MMS_STOP_S = 5
POLL_S = 0.5         # how often serve looks at its children while serving
WATCH_EVERY_S = 1.0  # how often it asks MMS's /ping


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"


class Stop(Exception):
    """SIGTERM or SIGINT arrived before serve was serving: exit 0, nothing in flight."""


class Failure(Exception):
    """Serve cannot go on: the message is the one line the log gets, with an exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def exit_code(returncode: int) -> int:
    """A child's Popen return code as a process exit status (-15 -> 143, not 241)."""
    return 128 - returncode if returncode < 0 else returncode


class MmsHealth:
    """MMS's own /ping on its loopback port, asked at most every WATCH_EVERY_S.

    MMS restarts a worker whose forked child died within a second or two. When the
    worker's parent process dies too, MMS keeps reconnecting to a socket nobody
    listens on: requests hang and its /ping answers 200 {"status": "Unhealthy"}.
    """

    def __init__(self, mms_port: int):
        self.url = f"http://127.0.0.1:{mms_port}/ping"
        self.last_check = 0.0

    def status(self) -> str | None:
        """MMS's word for its workers: Healthy, Partial Healthy, Unhealthy; None when
        it does not answer."""
        try:
            # loopback (bandit B310)
            with urllib.request.urlopen(self.url, timeout=5) as resp:  # nosec B310
                return json.loads(resp.read()).get("status")
        except (OSError, ValueError, AttributeError):
            return None

    def healthy(self) -> bool:
        return self.status() == "Healthy"

    def check(self, now: float) -> bool | None:
        """True or False when asked this time; None between checks."""
        if now - self.last_check < WATCH_EVERY_S:
            return None
        self.last_check = now
        return self.healthy()


class Supervisor:
    """One start of the serving stack, from the first signal handler to the last exit."""

    def __init__(self, writer: logs.Writer | None = None):
        self.writer = writer  # the container's log (logs.configure_serve_logging)
        self.state = State.STARTING
        self.stopping = threading.Event()
        self.signal_name = ""
        self.mms: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.pumps: list[threading.Thread] = []
        self.model_label = None  # multi-model mode: model name -> its /metrics label

    def enter(self, state: State, level: int, message: str, *args) -> None:
        """Change state, logging why; a state serve is already in is not logged again."""
        if state is self.state:
            return
        self.state = state
        log.log(level, message, *args)

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

    def start_mms(self, run_dir: Path, config: Path) -> None:
        env = dict(os.environ, TEMP=str(run_dir), TMPDIR=str(run_dir))  # pid file, sockets
        self.mms = subprocess.Popen(
            ["multi-model-server", "--start", "--foreground", "--mms-config", str(config),
             "--model-store", "/", "--log-config", str(CONF / "log4j2.xml")],
            cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pumps.append(logs.pump(self.mms.stdout,
                                    lambda line: self.writer.write(*logs.mms_record(line))))

    def register_model(self, management_port: int, settings: Settings) -> None:
        """Register with batching; returns when the workers have loaded the model."""
        query = config_files.registration_query(settings, MODEL_NAME, settings.model_dir)
        request = urllib.request.Request(
            f"http://127.0.0.1:{management_port}/models?{query}", method="POST")
        try:
            body = self.ask_mms(request, settings.startup_timeout_s, "the model was registered")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise Failure(f"multi-model-server could not start a worker with the model "
                          f"({exc.code}: {detail}): see the worker's lines above") from None
        log.info("model registered: %s", json.loads(body).get("status"))

    def wait_for_management(self, management_port: int, settings: Settings) -> None:
        """Multi-model mode: returns once MMS's management API answers (no model yet)."""
        request = urllib.request.Request(f"http://127.0.0.1:{management_port}/models")
        self.ask_mms(request, settings.startup_timeout_s, "its management API answered")

    def ask_mms(self, request: urllib.request.Request, timeout: int, until: str) -> bytes:
        """Send ``request`` to MMS, again while it is still starting; the answer's body.

        MMS's HTTPError is raised as it is; MMS exiting, a signal or ``timeout``
        (SAGEMAKER_STARTUP_TIMEOUT) end the wait.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_stop()
            if self.mms.poll() is not None:
                raise Failure(f"multi-model-server exited (status {exit_code(self.mms.poll())}) "
                              f"before {until}: see its lines above")
            try:
                # loopback (bandit B310)
                with urllib.request.urlopen(request, timeout=timeout) as resp:  # nosec B310
                    return resp.read()
            except urllib.error.HTTPError:
                raise
            except OSError:
                if time.monotonic() > deadline:
                    raise Failure(f"multi-model-server's management API did not answer "
                                  f"within {timeout} s (SAGEMAKER_STARTUP_TIMEOUT)") from None
                self.stopping.wait(0.1)

    def start_nginx(self, conf: Path) -> None:
        from . import metrics

        writer = self.writer

        def access(line: str) -> None:
            record = logs.access_record(line)
            if record is None:
                writer.write({"level": "INFO", "source": "nginx", "message": line}, line)
                return
            metrics.count_access(record, self.model_label)
            writer.write(dict(record, level="INFO", source="access"), logs.access_text(record))

        # nginx reopens /dev/stdout for its access log; a pipe we (the service user) own
        # allows that where the container's own stdout belongs to root.
        self.nginx = subprocess.Popen(["nginx", "-c", str(conf), "-e", "stderr"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pumps.append(logs.pump(self.nginx.stdout, access))
        self.pumps.append(logs.pump(self.nginx.stderr, lambda line: writer.write(
            logs.nginx_error_record(line), line)))

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

    # --- ending
    def stop_starting(self) -> int:
        """A signal before READY: nothing is in flight."""
        self.enter(State.STOPPING, logging.INFO, "%s received while starting: stopping",
                   self.signal_name)
        self.drain()
        return 0

    def fail(self, failure: Failure) -> int:
        self.enter(State.STOPPING, logging.ERROR, "%s", failure)
        self.drain()
        return failure.code

    # --- serving
    def serve(self, mms_port: int, unhealthy_exit_s: int, health: MmsHealth | None = None) -> int:
        """READY until a signal, a child's exit or a lasting UNHEALTHY; the exit code.
        ``health`` is what counts as healthy (multi_model.ModelsHealth in that mode)."""
        health = health or MmsHealth(mms_port)
        unhealthy_since: float | None = None
        while not self.stopping.wait(POLL_S):
            reap_orphans({self.mms.pid, self.nginx.pid})
            for name, child in (("multi-model-server", self.mms), ("nginx", self.nginx)):
                if child.poll() is not None:
                    code = exit_code(child.poll()) or 1
                    self.enter(State.STOPPING, logging.ERROR, "%s exited (status %d): "
                               "stopping, so that the container is replaced", name, code)
                    self.drain()
                    return code
            now = time.monotonic()
            healthy = health.check(now)
            if healthy:
                unhealthy_since = None
                self.enter(State.READY, logging.INFO,
                           "multi-model-server has a working worker again")
            elif healthy is False:
                if unhealthy_since is None:
                    unhealthy_since = now
                self.enter(State.UNHEALTHY, logging.WARNING,
                           "multi-model-server reports no healthy worker")
                if now - unhealthy_since >= unhealthy_exit_s:
                    # MMS's /ping answers 200 {"status": "Unhealthy"} here, which
                    # SageMaker counts as healthy: serve exits instead.
                    self.enter(State.STOPPING, logging.ERROR, "multi-model-server has had no "
                               "working worker for %d s (a worker process was killed and MMS "
                               "cannot restart it): exiting, so that the container is "
                               "replaced", unhealthy_exit_s)
                    self.drain()
                    return 3
        self.enter(State.STOPPING, logging.INFO, "%s received: draining (no new connections; "
                   "at most %d s for the requests in flight)", self.signal_name, DRAIN_S)
        started = time.monotonic()
        self.drain()
        log.info("drained and stopped in %.1f s", time.monotonic() - started)
        return 0


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
