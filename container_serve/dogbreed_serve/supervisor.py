"""serve's children (multi-model-server, nginx) and the state serve is in.

    STARTING --(model registered, nginx up)--> READY <--> UNHEALTHY (MMS: no working worker)
        \\                                        |           |
         `-------> STOPPING <--------------------'-----------'
                   (a signal, a child that exited, a start-up failure, or UNHEALTHY
                    for longer than DOGBREED_UNHEALTHY_EXIT_S)

Each change of state is logged once, by ``Supervisor.enter``, with the line that says
why. UNHEALTHY means that no worker can take a request: MMS has no working worker and
no worker process left to restart one in (or does not answer at all). While serve is
in it, nginx answers /ping and /invocations 503 at once (config_files.NginxFiles:
the ``unavailable`` file that ``enter`` creates and removes); a worker MMS is
restarting (1-2 s after its forked child died) keeps serve READY, and the requests wait
in MMS's queue for it.

SIGTERM/SIGINT only set a flag; the main thread notices it, logs, and drains: nginx
reloads with its public port closed, so that its old worker finishes every request
it has begun (also one whose body is still arriving) while its new worker keeps the
guard's socket, through which those requests reach MMS (within DRAIN_S); then nginx
stops, then MMS's whole process group. When no worker can answer, MMS stops first, so
that the requests in flight get nginx's 503 at once.
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
from .config_files import CONF, DRAIN_S, NginxFiles
from .settings import Settings

log = logging.getLogger("dogbreed_serve.server")

MODEL_NAME = "model"
MMS_STOP_S = 5
NGINX_STOP_S = 2     # nginx, once nothing is in flight (or nothing can be answered)
KILLED_WAIT_S = 5    # a child after SIGKILL (only a process stuck in the kernel takes longer)
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
    It says "Partial Healthy" while some of its workers work.
    """

    def __init__(self, mms_port: int, group: int | None = None):
        self.url = f"http://127.0.0.1:{mms_port}/ping"
        self.group = group  # MMS's process group (its pid): where its workers live
        self.last_check = 0.0
        self.status: str | None = None  # MMS's last answer; None: it did not answer

    def ask(self) -> str | None:
        try:
            # loopback (bandit B310)
            with urllib.request.urlopen(self.url, timeout=5) as resp:  # nosec B310
                status = json.loads(resp.read()).get("status")
        except (OSError, ValueError, AttributeError):
            return None
        return status if isinstance(status, str) else None

    def healthy(self) -> bool:
        self.status = self.ask()
        return self.status == "Healthy"

    def check(self, now: float) -> bool | None:
        """True or False when asked this time; None between checks."""
        if now - self.last_check < WATCH_EVERY_S:
            return None
        self.last_check = now
        return self.healthy()

    def can_answer(self) -> bool:
        """After a check that was not Healthy: whether a request can still be answered,
        by a working worker or by one MMS is restarting (its process is there). Without
        either, requests would wait in MMS's queue for a worker that never comes."""
        if self.status == "Partial Healthy":
            return True
        return self.status == "Unhealthy" and self.group is not None and bool(
            worker_processes(self.group))


class Supervisor:
    """One start of the serving stack, from the first signal handler to the last exit."""

    def __init__(self, writer: logs.Writer | None = None):
        self.writer = writer  # the container's log (logs.configure_serve_logging)
        self.state = State.STARTING
        self.stopping = threading.Event()
        self.signal_name = ""
        self.mms: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None
        self.nginx_files: NginxFiles | None = None
        self.pumps: list[threading.Thread] = []
        self.model_label = None  # multi-model mode: model name -> its /metrics label

    def enter(self, state: State, level: int, message: str, *args) -> None:
        """Change state, logging why; a state serve is already in is not logged again.
        nginx answers 503 from entering UNHEALTHY until READY again (STOPPING keeps it)."""
        if state is self.state:
            return
        self.state = state
        if state is State.UNHEALTHY:
            self.mark_unavailable(True)
        elif state is State.READY:
            self.mark_unavailable(False)
        log.log(level, message, *args)

    def mark_unavailable(self, unavailable: bool) -> None:
        if self.nginx_files is None:
            return
        flag = self.nginx_files.unavailable
        try:
            flag.touch() if unavailable else flag.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot %s %s (%s): /ping and /invocations do not follow serve's state",
                      "create" if unavailable else "remove", flag, exc.strerror or exc)

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

    def start_nginx(self, files: NginxFiles) -> None:
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
        self.nginx_files = files
        self.nginx = subprocess.Popen(["nginx", "-c", str(files.conf), "-e", "stderr"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pumps.append(logs.pump(self.nginx.stdout, access))
        self.pumps.append(logs.pump(self.nginx.stderr, lambda line: writer.write(
            logs.nginx_error_record(line), line)))

    def drain(self, answerable: bool = True) -> None:
        """Stop the children. ``answerable``: a worker can still answer the requests in
        flight, so nginx finishes them first (at most DRAIN_S), then MMS stops. Else MMS
        stops first, and nginx answers what it holds with its 503."""
        if answerable:
            self.close_public_port()
            self.stop_nginx()
            self.stop_mms()
        else:
            self.stop_mms()
            self.stop_nginx()
        for pump in self.pumps:  # the last log lines
            pump.join(timeout=2)

    def close_public_port(self) -> None:
        """nginx reloads with the public port closed; returns once its old worker has
        finished the requests it had begun (at most DRAIN_S).

        nginx's own stop (SIGQUIT) would close the guard's socket too, and a request
        whose body was still arriving would find no way to MMS (503). A reload keeps the
        guard's socket open, served by the new worker.
        """
        if not (self.nginx and self.nginx.poll() is None and self.nginx_files):
            return
        old = children(self.nginx.pid)
        try:
            os.replace(self.nginx_files.closed, self.nginx_files.conf)
        except OSError as exc:
            log.error("cannot close the public port (%s): nginx stops with the requests in "
                      "flight", exc.strerror or exc)
            return
        self.nginx.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + DRAIN_S
        while children(self.nginx.pid) & old and self.nginx.poll() is None:
            if time.monotonic() > deadline:
                log.warning("requests still in flight after %d s: nginx closes them", DRAIN_S)
                return
            time.sleep(0.05)

    def stop_nginx(self) -> None:
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            if not wait(self.nginx, NGINX_STOP_S):
                self.nginx.kill()
                wait(self.nginx, KILLED_WAIT_S)

    def stop_mms(self) -> None:
        if self.mms and self.mms.poll() is None:
            self.signal_mms(signal.SIGTERM)
            wait(self.mms, MMS_STOP_S)
        if self.mms:
            self.signal_mms(signal.SIGKILL)  # whatever of the group is left
            wait(self.mms, KILLED_WAIT_S)

    # --- ending
    def stop_starting(self) -> int:
        """A signal before READY: nothing is in flight."""
        self.enter(State.STOPPING, logging.INFO, "%s received while starting: stopping",
                   self.signal_name)
        self.drain()
        return 0

    def fail(self, failure: Failure) -> int:
        self.enter(State.STOPPING, logging.ERROR, "%s", failure)
        self.drain(answerable=False)  # nothing was served yet
        return failure.code

    # --- serving
    def serve(self, mms_port: int, unhealthy_exit_s: int, health: MmsHealth | None = None) -> int:
        """READY until a signal, a child's exit or a lasting UNHEALTHY; the exit code.
        ``health`` is what counts as healthy (multi_model.ModelsHealth in that mode)."""
        health = health or MmsHealth(mms_port, group=self.mms.pid)
        unhealthy_since: float | None = None
        while not self.stopping.wait(POLL_S):
            reap_orphans({self.mms.pid, self.nginx.pid})
            for name, child in (("multi-model-server", self.mms), ("nginx", self.nginx)):
                if child.poll() is not None:
                    code = exit_code(child.poll()) or 1
                    self.enter(State.STOPPING, logging.ERROR, "%s exited (status %d): "
                               "stopping, so that the container is replaced", name, code)
                    self.drain(answerable=False)
                    return code
            now = time.monotonic()
            healthy = health.check(now)
            if healthy is None:  # not asked this time
                continue
            if healthy:
                unhealthy_since = None
            elif unhealthy_since is None:
                unhealthy_since = now
            if healthy or health.can_answer():
                self.enter(State.READY, logging.INFO,
                           "multi-model-server has a working worker again")
            else:
                self.enter(State.UNHEALTHY, logging.WARNING,
                           "multi-model-server reports no healthy worker")
            if unhealthy_since is not None and now - unhealthy_since >= unhealthy_exit_s:
                # MMS's /ping answers 200 {"status": "Unhealthy"} here, which SageMaker
                # would count as healthy: serve exits instead.
                answerable = self.state is State.READY
                why = ("fewer working workers than it started with for %d s (a worker keeps "
                       "failing, or was killed where MMS cannot restart it)" if answerable else
                       "no working worker for %d s (a worker process was killed and MMS "
                       "cannot restart it)")
                self.enter(State.STOPPING, logging.ERROR, f"multi-model-server has had {why}: "
                           "exiting, so that the container is replaced", unhealthy_exit_s)
                self.drain(answerable)
                return 3
        answerable = self.state is State.READY
        self.enter(State.STOPPING, logging.INFO, "%s received: draining (no new connections; "
                   "at most %d s for the requests in flight)", self.signal_name, DRAIN_S)
        started = time.monotonic()
        self.drain(answerable)
        log.info("drained and stopped in %.1f s", time.monotonic() - started)
        return 0


def wait(child: subprocess.Popen, seconds: float) -> bool:
    """Whether ``child`` exited within ``seconds``."""
    try:
        child.wait(seconds)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) has not exited %g s after it was told to", child.args[0],
                    child.pid, seconds)
        return False
    return True


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process this one can see: pid -> (state, parent pid, process group)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def children(parent: int) -> set[int]:
    """The live child processes of ``parent`` (nginx's master: its workers)."""
    return {pid for pid, (state, ppid, _) in _processes().items()
            if ppid == parent and state != "Z"}


def worker_processes(group: int) -> set[int]:
    """MMS's Python worker processes in its process group ``group`` that MMS itself
    started: each listens for MMS and forks the child that loads the model and serves.
    While one lives, MMS can start a new child in it; their forked children (and the
    orphans a killed worker leaves) do not count."""
    procs = {pid: info for pid, info in _processes().items()
             if info[2] == group and info[0] != "Z"}

    def is_worker(pid: int) -> bool:  # python3 .../mms/model_service_worker.py --sock-type ...
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(arg.endswith(b"model_service_worker.py") for arg in argv)
    workers = {pid for pid in procs if is_worker(pid)}
    return {pid for pid in workers if procs[pid][1] in procs and procs[pid][1] not in workers}


def reap_orphans(own: set[int]) -> None:
    """serve is PID 1 in the container: reap the orphans that get re-parented to it.

    When an MMS worker process dies, its children are re-parented to us; without this
    they stay zombies once they exit.
    Our own children (MMS, nginx) are left to Popen, which needs their exit codes.
    """
    if os.getpid() != 1:
        return
    for pid, (state, ppid, _) in _processes().items():
        if state == "Z" and ppid == 1 and pid not in own:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
