"""The containers the tests start, each on a free loopback port or offline, removed after.

Server: the serving image answering over real HTTP; StopUnderLoad: clients that keep
it busy while it is stopped; broken_model: a model folder broken one way. Detached:
the training image in the background, so a test can signal it mid-run
(conftest.run_train runs it to the end). published_port and listening_sockets read a
running container from outside.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import docker

# One math thread: on 2 shared, busy cores two OpenMP threads made each tiny step
# 3-7 s instead of 0.5 s. It changes only speed, not what is tested.
ONE_MATH_THREAD = ("-e", "OMP_NUM_THREADS=1")


def published_port(container: str, inside: int = 8080) -> int:
    """The loopback port Docker published for the container's port `inside`."""
    return int(docker("port", container, str(inside)).stdout.splitlines()[0].rsplit(":", 1)[1])


def listening_sockets(container: str) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state inside the container."""
    rows = []
    for table in ("tcp", "tcp6"):
        text = docker("exec", container, "cat", f"/proc/net/{table}", check=False).stdout
        for line in text.splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if len(addr_hex) == 8:
                addr = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr_hex)[::-1])
            else:
                raw = bytes.fromhex(addr_hex)
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(
                    raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            rows.append((addr, int(port_hex, 16)))
    return rows


class Server:
    """`docker run -d IMAGE serve` with the model mounted read-only (at `mount`: a
    multi-model container gets a folder of models at /opt/ml/models); `env` items are
    NAME=VALUE, `docker_args` extra `docker run` options, `port` the one it serves on."""

    def __init__(self, image: str, model_dir: Path, *env: str, docker_args=(),
                 port: int = 8080, name_prefix: str = "dogbreed-serve-test",
                 mount: str = "/opt/ml/model"):
        self.name = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
        args = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:0:{port}",
                "-v", f"{model_dir}:{mount}:ro", *docker_args]
        for item in env:
            args += ["-e", item]
        self.id = docker(*args, image, "serve").stdout.strip()
        self.url = f"http://127.0.0.1:{published_port(self.id, port)}"

    def wait_ready(self, timeout: float = 90) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except requests.ConnectionError:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", self.id).stdout.strip() != "true":
                raise RuntimeError(f"server exited:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"no /ping 200 within {timeout} s:\n{self.logs()[-3000:]}")

    def invoke(self, body: bytes, content_type: str | None = "image/jpeg", **headers):
        if content_type is not None:
            headers["Content-Type"] = content_type
        return requests.post(f"{self.url}/invocations", data=body, headers=headers, timeout=60)

    def logs(self) -> str:
        out = docker("logs", self.id, check=False)
        return out.stdout + out.stderr

    # What a worker that died leaves in the log: MMS's lines, the Python traceback, and
    # the handler's line when the replacement loads the model.
    DEATH = re.compile(r"died|took over|Worker disconnected|Retry worker|Traceback|"
                       r"Error|Exception|Killed|signal", re.IGNORECASE)

    def deaths(self, around: int = 3) -> str:
        """The log lines that tell why a worker process was replaced, with ``around``
        lines either side: the message of an assertion on worker restarts."""
        lines = self.logs().splitlines()
        keep = sorted({j for i, line in enumerate(lines) if self.DEATH.search(line)
                       and "readv() failed" not in line
                       for j in range(max(0, i - around), min(len(lines), i + around + 1))})
        return "\n".join(lines[j] for j in keep)[-12000:] or "(no such line in the log)"

    def logs_once(self, ready, timeout: float = 60) -> str:
        """The log, once ``ready(log)`` holds (lines reach it through serve's pipes)."""
        deadline = time.monotonic() + timeout
        while not ready(text := self.logs()):
            if time.monotonic() > deadline:
                pytest.fail(f"the log lacks what was expected after {timeout} s:\n"
                            f"{text[-3000:]}")
            time.sleep(0.1)
        return text

    def state(self) -> dict:
        out = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}",
                     self.id).stdout.split()
        return {"status": out[0], "exit_code": int(out[1]), "oom_killed": out[2] == "true"}

    def state_once_stopped(self, timeout: float) -> dict:
        """state() once the container no longer runs, or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.state()["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
        return self.state()

    def stop(self) -> None:
        docker("rm", "-f", self.id, check=False)


class StopUnderLoad:
    """One client thread per (url, body, content type), each POSTing in a loop, while a
    container is stopped: a result is (time sent, status code or exception name), and a
    client ends with the first request it sent after the stop began. The drain tests
    read ``sent_before_stop``: every one of those must be answered."""

    def __init__(self, posts: list[tuple[str, bytes, str]]):
        self.results: list[tuple[float, int | str]] = []
        self.stop_at: float | None = None
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=post) for post in posts]

    def _client(self, url: str, body: bytes, content_type: str) -> None:
        with requests.Session() as session:
            while not self._done.is_set():
                sent = time.monotonic()
                try:
                    outcome: int | str = session.post(
                        url, data=body, headers={"Content-Type": content_type},
                        timeout=30).status_code
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                self.results.append((sent, outcome))
                if self.stop_at is not None and sent > self.stop_at:
                    return

    def __enter__(self) -> StopUnderLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def answered(self, count: int, timeout: float = 120) -> bool:
        """Whether ``count`` results came within ``timeout`` s (under load, at any speed)."""
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, container: str) -> float:
        """`docker stop -t 30` while the clients run; the seconds it took. The clients
        then end."""
        self.stop_at = time.monotonic()
        docker("stop", "-t", "30", container)
        took = time.monotonic() - self.stop_at
        self.__exit__()
        return took

    def sent_before_stop(self) -> list[int | str]:
        return [outcome for sent, outcome in self.results if sent < self.stop_at]


def broken_model(model_dir: Path, tmp_path: Path, case: str) -> Path:
    """A copy of a trained model directory, broken one way (``case``)."""
    out = tmp_path / case
    shutil.copytree(model_dir, out)
    meta_path = out / "model.json"
    meta = json.loads(meta_path.read_text())
    if case == "corrupt model.onnx":
        (out / "model.onnx").write_bytes(b"\x08\x01garbage" * 1000)
    elif case == "missing model.onnx":
        (out / "model.onnx").unlink()
    elif case == "model.json without labels":
        del meta["labels"]
        meta_path.write_text(json.dumps(meta))
    elif case == "model.json not JSON":
        meta_path.write_text("{labels: [")
    elif case == "fewer labels than outputs":
        meta["labels"] = meta["labels"][:2]
        meta_path.write_text(json.dumps(meta))
    elif case == "model card of schema version 2":
        meta["schema_version"] = 2
        meta_path.write_text(json.dumps(meta))
    elif case == "model card without a schema version":
        del meta["schema_version"]
        meta_path.write_text(json.dumps(meta))
    return out


class Detached:
    """`docker run -d` with run_train's arguments, so a test can signal it mid-run."""

    def __init__(self, image: str, root: Path, *extra: str):
        self.name = f"dogbreed-resil-{uuid.uuid4().hex[:8]}"
        self.id = docker("run", "-d", "--name", self.name, "--network", "none",
                         "--hostname", "algo-1", "-v", f"{root}:/opt/ml", *ONE_MATH_THREAD,
                         *extra, image, "train").stdout.strip()

    def logs(self) -> str:
        proc = docker("logs", self.id, check=False)
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        out = docker("inspect", "-f", "{{.State.Running}}", self.id, check=False).stdout
        return out.strip() == "true"

    def wait_for_log(self, pattern: re.Pattern, timeout: float = 240) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            log = self.logs()
            found = pattern.search(log)
            if found:
                return found
            if not self.running():
                pytest.fail(f"container ended before {pattern.pattern!r}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern.pattern!r} within {timeout}s:\n{log[-3000:]}")
            time.sleep(0.25)

    def wait(self, timeout: float = 180) -> int:
        return int(docker("wait", self.id, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        docker("rm", "-f", self.id, check=False)


@contextlib.contextmanager
def detached(image: str, root: Path, *extra: str):
    run = Detached(image, root, *extra)
    try:
        yield run
    finally:
        run.remove()
