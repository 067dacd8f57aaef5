#!/usr/bin/env python3
"""Soak the serving container: many requests at once, good and malformed mixed.

Sends --requests POSTs to /invocations from --concurrency threads. A share of them
(--bad-fraction) are the malformed requests of scripts/dogbreed_scripts/malformed.py, each of which must
get its own 4xx (or 200) with a JSON body; the rest are valid JPEG/PNG images, which
must all get 200 with predictions. With --kill-worker-at, the model server's worker
process is killed (SIGKILL) once that share of the requests has been sent. Reports
latency percentiles of the good requests and the container's memory before and after.

Against a container this script starts (and removes afterwards):
  scripts/soak.py --image dogbreed-serve:latest --model-dir opt_ml/model \\
      --requests 5000 --concurrency 16
Against one that is already running (its id gives memory and worker figures):
  scripts/soak.py --url http://127.0.0.1:8080 --container CONTAINER_ID

Exit status 0 when no good request failed and every malformed one got its expected
answer; 1 otherwise. --json FILE also writes the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from dogbreed_scripts import malformed

DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
LEAKS = ("Traceback", "/opt/", "site-packages", ".py\"", "Exception", "nginx", " at 0x")


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=check,
                          timeout=120).stdout


# ---- what the container is doing -------------------------------------------------

def container_memory(container: str) -> int:
    """Bytes in use by the container (as `docker stats` counts them: without page cache)."""
    text = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container)
    value = text.split("/")[0].strip()
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2,
             "GB": 1000**3}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * units[unit])
    raise ValueError(f"cannot read docker stats: {text!r}")


def container_memory_peak(container: str) -> int | None:
    """The cgroup's high-water mark, v2 (memory.peak) or v1 (max_usage_in_bytes)."""
    out = docker("exec", container, "sh", "-c",
                 "cat /sys/fs/cgroup/memory.peak 2>/dev/null || "
                 "cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null", check=False)
    return int(out.split()[0]) if out.strip() else None


PROCS = ("for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); "
         "case \"$c\" in python*model_service_worker.py*) echo ${p#/proc/} "
         "$(awk '/^PPid|^Uid|^VmRSS/{print $2}' $p/status | tr '\\n' ' ');; esac; done")


def workers(container: str) -> list[dict]:
    """MMS's Python worker processes: pid, parent pid, uid, resident memory (KiB)."""
    rows = []
    for line in docker("exec", container, "sh", "-c", PROCS).splitlines():
        parts = line.split()
        if len(parts) >= 3:  # a process that exits meanwhile may lack VmRSS
            rows.append({"pid": int(parts[0]), "ppid": int(parts[1]), "uid": int(parts[2]),
                         "rss_kib": int(parts[3]) if len(parts) > 3 else 0})
    return rows


RSS = ("for p in /proc/[0-9]*; do echo \"$(awk '/^VmRSS/{print $2}' $p/status 2>/dev/null) "
       "$(tr '\\0' ' ' < $p/cmdline 2>/dev/null | cut -c1-80)\"; done")


def memory_by_process(container: str) -> dict:
    """Resident memory (MiB) of the MMS frontend (java), its Python workers, the rest."""
    out = {"java": 0.0, "python_workers": 0.0, "other": 0.0}
    for line in docker("exec", container, "sh", "-c", RSS).splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2 or not parts[0].isdigit() or parts[1].startswith("sh -c"):
            continue
        key = ("java" if parts[1].startswith("java") else "python_workers"
               if "model_service_worker" in parts[1] else "other")
        out[key] += int(parts[0]) / 1024
    return {k: round(v) for k, v in out.items()}


def kill_workers(container: str, which: str = "child") -> list[int]:
    """SIGKILL the worker that serves requests ("child": the forked process holding the
    model), or every worker process ("all")."""
    procs = workers(container)
    pids = {p["pid"] for p in procs}
    if which == "child":
        targets = [p["pid"] for p in procs if p["ppid"] in pids]
    else:
        targets = sorted(pids)
    if targets:
        docker("exec", container, "sh", "-c", "kill -9 " + " ".join(map(str, targets)))
    return targets


# ---- load ---------------------------------------------------------------------------

def post(session: requests.Session, url: str, body: bytes, content_type: str | None,
         headers: dict | None = None, chunked: bool = False) -> requests.Response:
    headers = dict(headers or {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    data = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    return session.post(f"{url}/invocations", data=data, headers=headers, timeout=120)


def judge(resp: requests.Response, expected: int) -> str | None:
    """None if the answer is what the contract promises, else what was wrong."""
    if resp.status_code != expected:
        return f"status {resp.status_code}, expected {expected}"
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return f"Content-Type {resp.headers.get('Content-Type')!r}"
    try:
        payload = resp.json()
    except ValueError:
        return "body is not JSON"
    leaks = [s for s in LEAKS if s in resp.text]
    if leaks:
        return f"body leaks {leaks}"
    if expected == 200:
        if not payload.get("predictions"):
            return "no predictions"
    elif not (payload.get("error") and payload.get("status") == expected):
        return "error body without a reason"
    return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def soak(url: str, requests_total: int = 1000, concurrency: int = 8, bad_fraction: float = 0.3,
         container: str | None = None, kill_worker_at: float | None = None,
         kill_which: str = "child", seed: int = 0, include_large: bool = False) -> dict:
    """Run the load; return the summary (see --help for what each figure means)."""
    # a reproducible mix, not a secret (bandit B311)
    rng = random.Random(seed)  # nosec B311
    good = malformed.good_inputs()
    # Rows of several MB (bodies at the limit) stress the client more than the server:
    # left out by default, every other row of the table is mixed in.
    bad = [c for c in malformed.cases() if include_large or len(c.body) < 1_000_000]
    plan = []
    for _ in range(requests_total):
        if rng.random() < bad_fraction:
            case = rng.choice(bad)
            plan.append(("bad", case.name, case.body, case.content_type, case.headers,
                         case.chunked, case.status))
        else:
            name, body, ctype = rng.choice(good)
            plan.append(("good", name, body, ctype, {}, False, 200))

    summary: dict = {"url": url, "requests": requests_total, "concurrency": concurrency,
                     "bad_fraction": bad_fraction}
    if container:
        # Warm-up: one of each input first, so memory "before" includes what the first
        # request of each kind allocates for good (buffers, arenas, caches).
        with requests.Session() as s:
            for _, body, ctype in good:
                post(s, url, body, ctype)
            for case in bad:
                post(s, url, case.body, case.content_type, case.headers, case.chunked)
        time.sleep(1)
        summary["memory_before"] = container_memory(container)
        summary["rss_mib_before"] = memory_by_process(container)
        summary["workers_before"] = workers(container)

    local = threading.local()
    results: list[tuple] = []
    lock = threading.Lock()
    sent = [0]
    kill = {"at": None, "pids": []}
    kill_after = int(requests_total * kill_worker_at) if kill_worker_at is not None else None
    samples: list[int] = []
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            try:
                samples.append(container_memory(container))
            except (subprocess.SubprocessError, ValueError):
                pass
            stop_sampling.wait(2.0)

    def one(item):
        kind, name, body, ctype, headers, chunked, expected = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
        with lock:
            sent[0] += 1
            n = sent[0]
        if kill_after is not None and n == kill_after and container:
            kill["at"] = time.monotonic()
            kill["pids"] = kill_workers(container, kill_which)
        start = time.monotonic()
        try:
            resp = post(local.session, url, body, ctype, headers, chunked)
            problem, status = judge(resp, expected), resp.status_code
        except requests.RequestException as exc:
            problem, status = f"{type(exc).__name__}", None
            local.session = requests.Session()
        results.append((kind, name, status, problem, time.monotonic() - start, start))

    sampler = threading.Thread(target=sample, daemon=True) if container else None
    if sampler:
        sampler.start()
    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, plan))
    elapsed = time.monotonic() - began
    stop_sampling.set()

    good_rows = [r for r in results if r[0] == "good"]
    bad_rows = [r for r in results if r[0] == "bad"]
    latencies = [r[4] for r in good_rows if r[3] is None]
    summary.update({
        "seconds": round(elapsed, 1),
        "throughput_rps": round(len(results) / elapsed, 1),
        "good": {"sent": len(good_rows), "ok": sum(r[3] is None for r in good_rows),
                 "failed": Counter(f"{r[2]}: {r[3]}" for r in good_rows if r[3])},
        "bad": {"sent": len(bad_rows), "as_expected": sum(r[3] is None for r in bad_rows),
                "statuses": Counter(str(r[2]) for r in bad_rows),
                "wrong": Counter(f"{r[1]}: {r[3]}" for r in bad_rows if r[3])},
        "server_errors_5xx": sum(1 for r in results if r[2] is not None and r[2] >= 500),
        "latency_ms": {q: round(percentile(latencies, float(q[1:])) * 1000, 1)
                       for q in ("p50", "p90", "p99")} | {
                       "max": round(max(latencies, default=float("nan")) * 1000, 1)},
    })
    if kill["at"] is not None:
        after = [r for r in results if r[5] > kill["at"] + 5]
        summary["kill"] = {"killed_pids": kill["pids"], "which": kill_which,
                           "requests_started_5s_after_kill": len(after),
                           "of_which_as_expected": sum(r[3] is None for r in after)}
    if container:
        time.sleep(1)
        summary["memory_after"] = container_memory(container)
        summary["rss_mib_after"] = memory_by_process(container)
        summary["memory_sampled_max"] = max(samples, default=None)
        summary["memory_peak_cgroup"] = container_memory_peak(container)
        summary["workers_after"] = workers(container)
    summary["passed"] = (summary["good"]["ok"] == len(good_rows)
                         and summary["bad"]["as_expected"] == len(bad_rows))
    return summary


# ---- a container of our own --------------------------------------------------------

def start_container(image: str, model_dir: Path, *extra: str) -> tuple[str, str]:
    cid = docker("run", "-d", "-p", "127.0.0.1:0:8080", "-v", f"{model_dir}:/opt/ml/model:ro",
                 *extra, image, "serve").strip()
    try:
        port = docker("port", cid, "8080").splitlines()[0].rsplit(":", 1)[1]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    return cid, url
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        logs = docker("logs", cid, check=False)
        raise RuntimeError(f"container never became ready:\n{logs[-2000:]}")
    except BaseException:  # not ready, or Ctrl-C/SIGTERM while waiting: never left running
        docker("rm", "-f", cid, check=False)
        raise


def worker_deaths(container: str) -> int:
    """How often MMS logged a Python worker's death (killed, crashed, or dropped by
    the frontend after a frame it could not decode)."""
    logs = subprocess.run([DOCKER, "logs", container], capture_output=True, text=True,
                          timeout=120)
    return (logs.stdout + logs.stderr).count("Backend worker process died")


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1024**2:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("target (one of)")
    target.add_argument("--url", help="a running endpoint, e.g. http://127.0.0.1:8080")
    target.add_argument("--container", help="its container id: memory and worker figures")
    target.add_argument("--image", help="start this serving image instead (removed after)")
    target.add_argument("--model-dir", type=Path,
                        help="with --image: the model folder (model.onnx, model.json)")
    parser.add_argument("--requests", type=int, default=2000, help="total (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads (default 8)")
    parser.add_argument("--bad-fraction", type=float, default=0.3,
                        help="share of malformed requests (default 0.3)")
    parser.add_argument("--kill-worker-at", type=float, metavar="FRACTION",
                        help="SIGKILL the model worker after this share of the requests")
    parser.add_argument("--kill", choices=["child", "all"], default="child",
                        help="which worker processes to kill (default: the serving child)")
    parser.add_argument("--include-large", action="store_true",
                        help="also send the 6 MB rows of the malformed table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    if bool(args.url) == bool(args.image):
        parser.error("give --url (and optionally --container) or --image with --model-dir")
    if args.image and not args.model_dir:
        parser.error("--image needs --model-dir")

    cid, url, ours = args.container, args.url, False
    if args.image:
        cid, url = start_container(args.image, args.model_dir.resolve())
        ours = True
    try:
        result = soak(url, args.requests, args.concurrency, args.bad_fraction, cid,
                      args.kill_worker_at, args.kill, args.seed, args.include_large)
        if cid:
            result["worker_deaths_in_log"] = worker_deaths(cid)
    finally:
        if ours:
            docker("rm", "-f", cid, check=False)
    lat = result["latency_ms"]
    print(f"{result['requests']} requests at concurrency {result['concurrency']} in "
          f"{result['seconds']} s ({result['throughput_rps']} req/s)")
    print(f"good: {result['good']['ok']}/{result['good']['sent']} answered 200; "
          f"latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
          f"max {lat['max']} ms")
    print(f"malformed: {result['bad']['as_expected']}/{result['bad']['sent']} got their "
          f"expected answer; statuses {dict(result['bad']['statuses'])}")
    print(f"5xx answers: {result['server_errors_5xx']}")
    if cid:
        print(f"worker deaths in the container log: {result['worker_deaths_in_log']} "
              "(killed on purpose or not; a death's requests are retried by nginx)")
    if cid:
        print(f"memory: before {mib(result.get('memory_before'))}, after "
              f"{mib(result.get('memory_after'))}, sampled max "
              f"{mib(result.get('memory_sampled_max'))}, cgroup peak "
              f"{mib(result.get('memory_peak_cgroup'))}")
        print(f"resident MiB by process: before {result.get('rss_mib_before')}, after "
              f"{result.get('rss_mib_after')}")
    if "kill" in result:
        print(f"killed worker pids {result['kill']['killed_pids']}; requests started 5 s "
              f"later: {result['kill']['of_which_as_expected']}/"
              f"{result['kill']['requests_started_5s_after_kill']} as expected")
    for label, failures in (("good failures", result["good"]["failed"]),
                            ("malformed mismatches", result["bad"]["wrong"])):
        for what, count in failures.items():
            print(f"  {label}: {count} x {what}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    from dogbreed_scripts import settings

    settings.run(main, own_errors=True)  # SIGTERM cleans up as Ctrl-C does
