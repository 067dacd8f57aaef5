"""serve's states on the host (supervisor.Supervisor): starting, ready, unhealthy,
stopping, each change logged once.

Real processes stand in for MMS and nginx (``sleep``, a shell that exits), and a real
HTTP server on loopback answers /ping as MMS does ({"status": "Healthy"} or
"Unhealthy", both with 200). The container tests (test_serve_lifecycle.py,
test_hardening_serve.py) run the same supervisor with the real children.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dogbreed_serve import supervisor as sup
from dogbreed_serve.supervisor import Failure, State, Supervisor


@pytest.fixture
def lines():
    """serve's own log records, as (level, message)."""
    got: list[tuple[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record):
            got.append((record.levelname, record.getMessage()))

    collect = Collect()
    logger = logging.getLogger("dogbreed_serve.server")
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(collect)


@pytest.fixture
def mms_ping():
    """A loopback /ping that answers the statuses in ``answers`` in turn, then the last."""
    answers: list[str] = []

    class Ping(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            status = answers.pop(0) if len(answers) > 1 else answers[0]
            body = json.dumps({"status": status}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ping)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    yield server.server_address[1], answers
    server.shutdown()
    server.server_close()


@pytest.fixture
def serving(monkeypatch):
    """A Supervisor in READY with two live children; both are gone afterwards."""
    monkeypatch.setattr(sup, "POLL_S", 0.01)
    monkeypatch.setattr(sup, "WATCH_EVERY_S", 0.02)
    s = Supervisor()
    s.mms = subprocess.Popen(["sleep", "30"], start_new_session=True)
    s.nginx = subprocess.Popen(["sleep", "30"])
    s.state = State.READY
    yield s
    for child in (s.mms, s.nginx):
        if child.poll() is None:
            child.kill()
            child.wait()


def test_unhealthy_and_back_is_logged_once_each_way_then_a_lasting_one_exits_3(
        serving, mms_ping, lines):
    port, answers = mms_ping
    answers += ["Healthy", "Unhealthy", "Unhealthy", "Unhealthy", "Healthy", "Healthy",
                "Unhealthy"]  # the last one lasts

    assert serving.serve(port, unhealthy_exit_s=1) == 3

    assert [level for level, _ in lines] == ["WARNING", "INFO", "WARNING", "ERROR"]
    assert lines[0][1] == lines[2][1] == "multi-model-server reports no healthy worker"
    assert lines[1][1] == "multi-model-server has a working worker again"
    assert "no working worker for 1 s" in lines[3][1]
    assert serving.state is State.STOPPING
    assert serving.mms.poll() is not None and serving.nginx.poll() is not None  # drained


def test_a_child_that_exits_stops_serve_with_its_status(serving, mms_ping, lines):
    port, answers = mms_ping
    answers.append("Healthy")
    serving.nginx.kill()
    serving.nginx.wait()
    serving.nginx = subprocess.Popen(["sh", "-c", "exit 7"])

    assert serving.serve(port, unhealthy_exit_s=30) == 7

    assert lines == [("ERROR", "nginx exited (status 7): stopping, so that the container "
                               "is replaced")]
    assert serving.state is State.STOPPING and serving.mms.poll() is not None


def test_sigterm_while_ready_drains_and_exits_0(serving, mms_ping, lines):
    port, answers = mms_ping
    answers.append("Healthy")
    threading.Timer(0.1, serving.on_signal, (signal.SIGTERM, None)).start()

    assert serving.serve(port, unhealthy_exit_s=30) == 0

    assert lines[0] == ("INFO", "SIGTERM received: draining (no new connections; at most "
                                f"{sup.DRAIN_S} s for the requests in flight)")
    assert lines[1][1].startswith("drained and stopped in ") and len(lines) == 2
    assert serving.state is State.STOPPING


def test_a_start_that_fails_is_one_error_line(lines):
    s = Supervisor()
    assert s.state is State.STARTING

    assert s.fail(Failure("the model cannot be served: broken", 2)) == 2
    s.enter(State.STOPPING, logging.ERROR, "a second reason is not logged")

    assert lines == [("ERROR", "the model cannot be served: broken")]
    assert s.state is State.STOPPING
