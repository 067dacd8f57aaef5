"""Hardening of the serving container: malformed input, fuzzing, load, worker death.

Everything here talks to the real `dogbreed-serve` container over real HTTP. The
container runs with a memory limit (MEMORY_LIMIT): an input that makes memory grow
without bound gets the worker killed by the kernel, and the tests below notice.
The longer soak is a command: `scripts/soak.py --help`.
"""

from __future__ import annotations

import contextlib
import re
import time

import pytest
import requests
from containers import Server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import images, mutated

from conftest import docker
from dogbreed_scripts import (
    malformed,
    soak,  # the same code as the scripts/soak.py command
)

MEMORY_LIMIT = "1536m"
CASES = malformed.cases()
# Nothing in an answer may name our code, its paths, libraries or versions.
LEAK = re.compile(r"Traceback|/opt/|/tmp/|site-packages|\.py\b|0x[0-9a-f]{6,}|"
                  r"Exception|java|netty|PIL|Pillow|onnx|nginx/|\d+\.\d+\.\d+")


@pytest.fixture(scope="module")
def server(serve_image, trained_model):
    srv = Server(serve_image, trained_model.root / "model",
                 docker_args=["--memory", MEMORY_LIMIT], name_prefix="dogbreed-serve-hardening")
    try:
        srv.wait_ready()
        srv.first_workers = soak.workers(srv.id)
        yield srv
    finally:
        srv.stop()


def assert_clean(resp: requests.Response) -> None:
    for name, value in resp.headers.items():
        assert not LEAK.search(f"{name}: {value}"), (name, value)
    if resp.status_code != 200:
        assert not LEAK.search(resp.text), resp.text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(server, case):
    with requests.Session() as session:
        resp = soak.post(session, server.url, case.body, case.content_type, case.headers,
                         case.chunked)
    assert soak.judge(resp, case.status) is None, (resp.status_code, resp.text[:300])
    assert_clean(resp)


def raw_http(url: str, request: bytes) -> bytes:
    """Bytes no HTTP library would send."""
    import socket

    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /ping HTTP/9.9\r\n\r\n", 505),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZ\r\n", 400),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
     b"X-Note: caf\xe9\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", 200),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
     b"X-Amzn-SageMaker-Custom-Attributes: top_k=\xff\xfe\r\nConnection: close\r\n"
     b"Content-Length: %d\r\n\r\n%s", 400),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
     b"Transfer-Encoding: gzip\r\nConnection: close\r\n\r\n", 501),
    (b"POST /invocations?" + b"q=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n"
     b"Content-Type: image/jpeg\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", 200),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
     + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 4000) for i in range(3))
     + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s", 200),
], ids=["garbage request line", "HTTP/9.9", "negative Content-Length", "bad chunk size",
        "10 KB URI", "latin-1 byte in a header", "invalid UTF-8 in top_k",
        "unknown Transfer-Encoding", "5 KB query string", "12 KB of headers in three lines"])
def test_malformed_http_gets_json(server, request_bytes, status):
    if b"%s" in request_bytes:  # a real image as the body
        image = malformed.good_inputs()[0][1]
        request_bytes = request_bytes.replace(b"%d", str(len(image)).encode()).replace(
            b"%s", image)
    reply = raw_http(server.url, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), reply[:300]
    assert b"Content-Type: application/json" in head, reply[:300]
    if status == 200:
        assert b'"predictions"' in body, body[:300]
    else:
        assert f'"status": {status}'.encode() in body and b"nginx" not in body
    assert b"Exception" not in body and b"<html" not in body.lower(), body[:300]


@pytest.mark.parametrize("request_bytes", [
    b"GET /ping?" + b"q=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /ping? HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
], ids=["5 KB query string", "empty query string", "POST with a body"])
def test_ping_is_answered_without_the_model_server(server, request_bytes):
    """/ping is nginx's own answer: whatever comes with it, MMS's exception names and
    its view of things never reach the client."""
    reply = raw_http(server.url, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", reply[:300]
    assert b"Content-Type: application/json" in head, reply[:300]
    assert body == b'{"status": "Healthy"}', body[:300]


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bodies_against_the_container(server, data):
    """Random and damaged bodies over real HTTP: a prediction or a JSON 4xx, never 5xx."""
    body = data.draw(st.one_of(mutated(), images(), st.binary(max_size=512),
                               st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b),
                               st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b)))
    ctype = data.draw(st.sampled_from(["image/jpeg", "image/png", "application/x-image"]))
    resp = requests.post(f"{server.url}/invocations", data=body,
                         headers={"Content-Type": ctype}, timeout=60)
    assert resp.status_code in (200, 400, 413), (resp.status_code, resp.text[:300])
    assert resp.headers["Content-Type"].startswith("application/json")
    payload = resp.json()
    if resp.status_code == 200:
        assert payload["predictions"]
    else:
        assert payload["error"] and payload["status"] == resp.status_code
    assert_clean(resp)


WORK_BOMBS = [c for c in CASES if c.group == "work" and c.status == 400]


def test_work_bombs_are_refused_in_bounded_time(server):
    """Small files that cost minutes of CPU (thousands of empty progressive scans) or
    seconds of header parsing (a million empty segments or chunks): refused from their
    structure, while the worker stays free for the next request."""
    assert len(WORK_BOMBS) == 3
    good = malformed.good_inputs()[0]
    with requests.Session() as session:
        for case in WORK_BOMBS:
            start = time.monotonic()
            resp = soak.post(session, server.url, case.body, case.content_type)
            took = time.monotonic() - start
            assert resp.status_code == 400 and took < 5, (case.name, resp.text, took)
            start = time.monotonic()
            assert soak.post(session, server.url, good[1], good[2]).status_code == 200
            assert time.monotonic() - start < 5


def test_concurrent_16_bit_40_megapixel_pngs_stay_within_memory(server):
    """Four 16-bit 40-megapixel PNGs (77 KB each) at once, in a container limited to
    1.5 GB: converted whole, each would take about 1 GB and four would OOM-kill the
    workers. Each reserves its share of the container's decode memory and waits its
    turn: all are answered (200, or 503 'busy, retry' if one waited past its deadline), no
    process is killed, and the workers are the ones that started."""
    from concurrent.futures import ThreadPoolExecutor

    body = malformed.png16_zeros(6000, 6600)
    before = [w["pid"] for w in soak.workers(server.id)]

    def send(_):
        resp = requests.post(f"{server.url}/invocations", data=body,
                             headers={"Content-Type": "image/png"}, timeout=120)
        return resp.status_code, resp.json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(4)))
    assert {status for status, _ in answers} <= {200, 503}, answers
    assert sum(status == 200 for status, _ in answers) >= 2, answers
    state = server.state()
    assert state["status"] == "running" and not state["oom_killed"], state
    assert [w["pid"] for w in soak.workers(server.id)] == before


def test_nothing_was_lost_to_bad_input(server):
    """After the table and the fuzzing (pytest runs this file in order): the same
    worker process as at start, no OOM kill under the memory limit, no traceback."""
    state = server.state()
    assert state["status"] == "running" and not state["oom_killed"], state
    assert soak.workers(server.id) and [w["pid"] for w in soak.workers(server.id)] == [
        w["pid"] for w in server.first_workers], "a worker process was replaced"
    logs = server.logs()
    for bad in ("Traceback", "Worker died", "Backend worker process died", "OutOfMemory"):
        assert bad not in logs, bad
    good = malformed.good_inputs()[0]
    assert requests.post(f"{server.url}/invocations", data=good[1],
                         headers={"Content-Type": good[2]}, timeout=30).status_code == 200


def test_soak_ci_size(server):
    """The CI-size soak: 800 requests at concurrency 8, 30% malformed, no failures."""
    result = soak.soak(server.url, requests_total=800, concurrency=8, bad_fraction=0.3,
                       container=server.id, seed=8)
    print("\nsoak:", {k: result[k] for k in ("seconds", "throughput_rps", "latency_ms",
                                              "memory_before", "memory_after",
                                              "memory_peak_cgroup", "rss_mib_before",
                                              "rss_mib_after")})
    assert result["good"]["ok"] == result["good"]["sent"] > 400, result["good"]
    assert result["bad"]["as_expected"] == result["bad"]["sent"] > 150, result["bad"]
    assert result["server_errors_5xx"] == 0
    # Our code runs in the Python worker: its memory must not grow with the requests.
    # (The JVM frontend's heap grows towards its maximum, sized from host RAM, before it
    # collects: bounded, not a leak; docs/hardening.md.)
    growth = (result["rss_mib_after"]["python_workers"]
              - result["rss_mib_before"]["python_workers"])
    assert growth < 30, f"the worker's memory grew by {growth} MiB"
    assert not server.state()["oom_killed"]


def test_worker_killed_during_load(server):
    """SIGKILL the worker under load: MMS starts a new one, nginx retries the requests
    the dead worker held, and nothing is lost. The new worker is not root either."""
    before = {w["pid"] for w in soak.workers(server.id)}
    # Enough requests that the load goes on well past the 5 s after the kill at this
    # machine's pace, measured first: 12 s of it after the kill, and at least 1,200
    # requests (about 10 s at the 90 requests/s of a quiet 2-CPU machine).
    pace = soak.soak(server.url, requests_total=200, concurrency=8, bad_fraction=0.2, seed=10)
    total = max(1200, int(pace["throughput_rps"] * 12 / 0.75))
    result = soak.soak(server.url, requests_total=total, concurrency=8, bad_fraction=0.2,
                       container=server.id, kill_worker_at=0.25, seed=9)
    print("\nkill:", result["kill"], result["latency_ms"])
    assert result["kill"]["killed_pids"], "no worker process was found to kill"
    assert result["good"]["ok"] == result["good"]["sent"], (result["good"],
                                                            server.logs()[-4000:])
    assert result["bad"]["as_expected"] == result["bad"]["sent"], result["bad"]
    assert result["kill"]["of_which_as_expected"] == result["kill"][
        "requests_started_5s_after_kill"] > 0
    after = soak.workers(server.id)
    assert {w["pid"] for w in after} != before
    assert all(w["uid"] != 0 for w in after), after
    # The killed worker's orphaned parent-side process is reaped: no zombies.
    states = docker("exec", server.id, "sh", "-c",
                    "cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}'").stdout.split()
    assert "Z" not in states, states


@contextlib.contextmanager
def every_worker_killed(serve_image, trained_model, unhealthy_exit_s: int):
    """A ready server whose every MMS worker process (the forked child and its parent)
    was then killed: MMS has none left to restart."""
    srv = Server(serve_image, trained_model.root / "model",
                 f"DOGBREED_UNHEALTHY_EXIT_S={unhealthy_exit_s}",
                 name_prefix="dogbreed-serve-hardening")
    try:
        srv.wait_ready()
        assert soak.kill_workers(srv.id, "all")
        yield srv
    finally:
        srv.stop()


def test_ping_and_invocations_answer_503_at_once_while_no_worker_exists(serve_image,
                                                                        trained_model):
    """Kill every worker process, so that MMS has none left to restart: serve notices,
    /ping answers 503 and an invocation gets a JSON 503 at once, well within a 15 s
    client timeout, instead of waiting in MMS's queue for a worker that never comes."""
    with every_worker_killed(serve_image, trained_model, unhealthy_exit_s=600) as srv:
        deadline = time.monotonic() + 60
        while (ping := requests.get(f"{srv.url}/ping", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, srv.logs()[-2000:]
            time.sleep(0.2)
        assert ping.status_code == 503 and ping.json() == {"status": "Unhealthy"}
        assert "multi-model-server reports no healthy worker" in srv.logs()
        good = malformed.good_inputs()[0]
        for _ in range(3):
            resp = requests.post(f"{srv.url}/invocations", data=good[1],
                                 headers={"Content-Type": good[2]}, timeout=15)
            assert resp.status_code == 503, resp.text
            assert resp.json()["status"] == 503 and "retry" in resp.json()["error"]
            assert_clean(resp)
        assert srv.state()["status"] == "running"


def test_container_exits_when_mms_cannot_recover(serve_image, trained_model):
    """Kill every worker process (the forked child and its parent): MMS cannot start a
    new one and its /ping still answers 200, so serve exits and SageMaker replaces the
    container, instead of an endpoint that hangs every request while counted healthy."""
    with every_worker_killed(serve_image, trained_model, unhealthy_exit_s=5) as srv:
        state = srv.state_once_stopped(timeout=60)
        assert state["status"] == "exited" and state["exit_code"] == 3, state
        assert "no working worker" in srv.logs()
