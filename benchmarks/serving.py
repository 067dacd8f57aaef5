"""Host side of the serving benchmark: containers, cold start, and an HTTP load generator.

Only the standard library: http.client with one keep-alive connection per client
thread, so the client costs as little CPU as possible on a small machine.
"""
from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DOCKER = shutil.which("docker", path="/usr/bin") or "docker"


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def image_size_bytes(image: str) -> int | None:
    out = docker("image", "inspect", "-f", "{{.Size}}", image, check=False)
    return int(out.stdout.strip()) if out.returncode == 0 else None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def post(conn: http.client.HTTPConnection, body: bytes, content_type: str) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
    resp = conn.getresponse()
    return resp.status, resp.read()


@dataclass
class Container:
    """One serving container on a free loopback port; cold start measured from `docker run`."""

    image: str
    model_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[Path, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # more `docker run` options (--gpus all)
    id: str = ""
    port: int = 0
    cold_start_s: float | None = None

    def start(self, body: bytes, content_type: str = "image/jpeg", timeout: float = 180) -> float:
        """docker run -> first 200 from /invocations, in seconds."""
        name = f"dogbreed-bench-{uuid.uuid4().hex[:8]}"
        args = ["run", "-d", "--name", name, "-p", "127.0.0.1:0:8080",
                "-v", f"{self.model_dir}:/opt/ml/model:ro"]
        for host, inside in self.mounts.items():
            args += ["-v", f"{host}:{inside}:ro"]
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        args += self.extra
        t0 = time.monotonic()
        self.id = docker(*args, self.image, "serve").stdout.strip()
        port = docker("port", self.id, "8080").stdout.splitlines()[0].rsplit(":", 1)[1]
        self.port = int(port)
        while time.monotonic() - t0 < timeout:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                status, _ = post(conn, body, content_type)
                conn.close()
                if status == 200:
                    self.cold_start_s = time.monotonic() - t0
                    return self.cold_start_s
            except OSError:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", self.id).stdout.strip() != "true":
                raise RuntimeError(f"{self.image} exited:\n{self.logs()[-3000:]}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.image}: no successful prediction within {timeout} s\n"
                           f"{self.logs()[-3000:]}")

    def exec(self, *cmd: str, timeout: float = 600) -> str:
        return docker("exec", self.id, *cmd, timeout=timeout).stdout

    def logs(self) -> str:
        out = docker("logs", self.id, check=False)
        return out.stdout + out.stderr

    def stop(self) -> None:
        if self.id:
            docker("rm", "-f", self.id, check=False)
            self.id = ""


def load(port: int, body: bytes, concurrency: int, *, requests: int | None = None,
         seconds: float | None = None, warmup: int = 2, content_type: str = "image/jpeg") -> dict:
    """`concurrency` closed-loop clients; stop after `requests` in all or after `seconds`.

    Returns throughput, latency percentiles (ms) and the error count. With `seconds`,
    throughput counts the answers that arrived within the window (the pipeline is full
    from its first moment: every client sends at once), so the drain of the requests
    still in flight at the end does not dilute it.
    """
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120)
             for _ in range(concurrency)]
    for conn in conns:  # open connections and warm every path
        for _ in range(warmup):
            post(conn, body, content_type)
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    budget = [requests if requests is not None else 1 << 62]
    barrier = threading.Barrier(concurrency + 1)
    stop_at: list[float] = [0.0]
    in_window = [0]

    def client(conn: http.client.HTTPConnection) -> None:
        barrier.wait()
        while True:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            if seconds is not None and time.monotonic() >= stop_at[0]:
                return
            t0 = time.perf_counter()
            try:
                status, _ = post(conn, body, content_type)
            except OSError:
                status = -1
                conn.close()
            dt = time.perf_counter() - t0
            done = time.monotonic()
            with lock:
                (latencies if status == 200 else errors).append(dt if status == 200 else status)
                if status == 200 and done <= stop_at[0]:
                    in_window[0] += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    start = time.monotonic()
    stop_at[0] = start + (seconds or 1e9)
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    for conn in conns:
        conn.close()
    ms = [1000 * x for x in latencies]
    if seconds is not None:
        rate = in_window[0] / seconds
    else:
        rate = len(ms) / elapsed if elapsed else 0.0
    return {"concurrency": concurrency, "requests": len(ms), "errors": len(errors),
            "seconds": round(elapsed, 3), "throughput_rps": rate,
            "p50_ms": statistics.median(ms) if ms else None,
            "p99_ms": percentile(ms, 99) if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None}


def check_answer(port: int, body: bytes) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    status, data = post(conn, body, "image/jpeg")
    conn.close()
    if status != 200:
        raise RuntimeError(f"/invocations answered {status}: {data[:300]!r}")
    return json.loads(data)


class Probe:
    """benchmarks/forward.py --stdin inside a running container (docker exec -i)."""

    def __init__(self, container: Container, model_dir: str, image: str | None):
        cmd = [DOCKER, "exec", "-i", container.id, "python", "/bench/forward.py", "--stdin",
               "--model-dir", model_dir] + (["--image", image] if image else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("forward probe exited")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def one_request(port: int, body: bytes, conn_cache: dict) -> float | None:
    """One POST on a kept-alive connection; milliseconds, or None if not 200."""
    conn = conn_cache.get(port)
    if conn is None:
        conn = conn_cache[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    try:
        status, _ = post(conn, body, "image/jpeg")
    except OSError:
        conn.close()
        conn_cache.pop(port, None)
        return None
    return 1000 * (time.perf_counter() - t0) if status == 200 else None
