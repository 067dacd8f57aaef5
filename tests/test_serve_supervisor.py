"""serve's states on the host (supervisor.Supervisor): starting, ready, unhealthy,
stopping, each change logged once; the file nginx answers 503 by; the environment's
values (settings.py) and serve's own log lines (logs.py).

Real processes stand in for MMS and nginx (``sleep``, a shell that exits, a process
named like an MMS worker), and a real HTTP server on loopback answers /ping as MMS
does ({"status": "Healthy"}, "Partial Healthy" or "Unhealthy", all with 200). The
container tests (test_serve_lifecycle.py, test_serve_hardening.py) run the same
supervisor with the real children.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dogbreed_serve import config_files, logs, settings
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


# --- no worker can take a request: nginx answers 503 (supervisor.MmsHealth.can_answer)

def files(tmp_path) -> config_files.NginxFiles:
    made = config_files.NginxFiles(tmp_path / "nginx.conf", tmp_path / "nginx-closed.conf",
                                   tmp_path / "unavailable")
    made.conf.write_text("listen 8080")
    made.closed.write_text("listen unix")
    return made


def test_nginx_answers_503_from_unhealthy_until_ready_again(tmp_path):
    s = Supervisor()
    s.nginx_files = files(tmp_path)
    s.enter(State.READY, logging.INFO, "ready")
    assert not s.nginx_files.unavailable.exists()
    s.enter(State.UNHEALTHY, logging.WARNING, "no worker")
    assert s.nginx_files.unavailable.exists()
    s.enter(State.READY, logging.INFO, "again")
    assert not s.nginx_files.unavailable.exists()
    s.enter(State.UNHEALTHY, logging.WARNING, "no worker")
    s.enter(State.STOPPING, logging.ERROR, "exiting")
    assert s.nginx_files.unavailable.exists()  # until serve is gone


def fake_mms(worker_seconds: int) -> subprocess.Popen:
    """A process group like MMS's: a parent (its JVM) with one child named like MMS's
    Python worker (model_service_worker.py), which lives ``worker_seconds``."""
    worker = f"import time; time.sleep({worker_seconds})"
    return subprocess.Popen(["sh", "-c", f"'{sys.executable}' -c '{worker}' "
                             "model_service_worker.py & sleep 30"], start_new_session=True)


def test_a_worker_mms_is_restarting_keeps_serve_ready_one_gone_is_unhealthy(
        serving, mms_ping, lines, tmp_path):
    """MMS says Unhealthy while it restarts a worker whose forked child died (1-2 s):
    the worker's process is there, requests wait in MMS's queue for it, and nginx
    must not refuse them. Once no worker process is left, nothing can answer: serve
    is unhealthy, and nginx answers 503 until serve exits."""
    port, answers = mms_ping
    answers.append("Unhealthy")
    serving.mms.kill()
    serving.mms.wait()
    serving.mms = fake_mms(worker_seconds=2)
    serving.nginx_files = files(tmp_path)
    deadline = time.monotonic() + 10
    while not sup.worker_processes(serving.mms.pid):
        assert time.monotonic() < deadline, "the fake worker never started"
    while_alive = []

    def watch():  # serve's state, each time seen while the worker still lives after
        while True:
            seen = (serving.state, serving.nginx_files.unavailable.exists())
            if not sup.worker_processes(serving.mms.pid):
                return
            while_alive.append(seen)
    watcher = threading.Thread(target=watch)
    watcher.start()

    assert serving.serve(port, unhealthy_exit_s=3) == 3

    watcher.join()
    assert while_alive and set(while_alive) == {(State.READY, False)}
    assert [level for level, _ in lines] == ["WARNING", "ERROR"], lines
    assert lines[0][1] == "multi-model-server reports no healthy worker"
    assert "no working worker for 3 s" in lines[1][1]
    assert serving.nginx_files.unavailable.exists()


def test_partial_health_keeps_serving_until_it_lasts(serving, mms_ping, lines, tmp_path):
    """Partial Healthy: some workers work, so nothing is refused; lasting, serve exits."""
    port, answers = mms_ping
    answers.append("Partial Healthy")
    serving.nginx_files = files(tmp_path)

    assert serving.serve(port, unhealthy_exit_s=1) == 3

    assert len(lines) == 1 and lines[0][0] == "ERROR", lines
    assert "fewer working workers than it started with for 1 s" in lines[0][1]
    assert not serving.nginx_files.unavailable.exists()


# --- the environment (settings.py): one line, naming the variable and what it takes

@pytest.mark.parametrize("name,value,takes", [
    ("DOGBREED_DECODE_TIMEOUT_S", "abc", "a number of seconds above 0"),
    ("DOGBREED_DECODE_TIMEOUT_S", "nan", "a number of seconds above 0"),
    ("DOGBREED_DECODE_TIMEOUT_S", "inf", "a number of seconds above 0"),
    ("DOGBREED_DECODE_TIMEOUT_S", "0", "a number of seconds above 0"),
    ("DOGBREED_TOP_K", "0", "a whole number, 1 or more"),
    ("DOGBREED_MAX_BATCH", "2.5", "a whole number, 1 or more"),
    ("DOGBREED_MAX_BATCH_DELAY_MS", "-1", "a whole number, 0 or more"),
    ("DOGBREED_ORT_SPINNING", "2", "0 or 1"),
    ("DOGBREED_LOG_FORMAT", "xml", "text or json"),
    ("SAGEMAKER_BIND_TO_PORT", "65536", "a whole number from 1 to 65535"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "4096", "a whole number from 1 to 2047"),
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "all", "a whole number, 1 or more"),
    ("SAGEMAKER_STARTUP_TIMEOUT", "10m", "a whole number, 1 or more"),
])
def test_a_value_a_variable_does_not_take_is_refused_naming_it(monkeypatch, name, value,
                                                               takes):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as err:
        settings.check_environment()
    assert str(err.value) == (f"environment variable {name}='{value}' is not allowed: it "
                              f"takes {takes}, or leave it unset")


def test_values_within_the_rules_and_unset_ones_pass(monkeypatch):
    for name, value in [("DOGBREED_DECODE_TIMEOUT_S", "0.5"), ("DOGBREED_LOG_FORMAT", "JSON"),
                        ("DOGBREED_TOP_K", " 3 "), ("SAGEMAKER_BIND_TO_PORT", "65535"),
                        ("DOGBREED_ORT_SPINNING", "1"), ("DOGBREED_MAX_BATCH", "")]:
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SAGEMAKER_STARTUP_TIMEOUT", raising=False)
    settings.check_environment()


def test_a_refused_value_is_quoted_on_one_short_line(monkeypatch):
    monkeypatch.setenv("DOGBREED_TOP_K", "1\n2026-12-04 ERROR forged" + "x" * 5000)
    with pytest.raises(settings.SettingsError) as err:
        settings.check_environment()
    assert "\n" not in str(err.value) and len(str(err.value)) < 200, str(err.value)


@pytest.mark.parametrize("value,says", [
    ("9000-8000", "SAGEMAKER_SAFE_PORT_RANGE='9000-8000' is reversed: give the lower port "
                  "first (8000-9000)"),
    ("8000", "SAGEMAKER_SAFE_PORT_RANGE='8000' is not LOW-HIGH"),
    ("0-70000", "SAGEMAKER_SAFE_PORT_RANGE='0-70000': ports run from 1 to 65535"),
])
def test_a_safe_port_range_serve_cannot_use_is_explained(value, says):
    with pytest.raises(config_files.ConfigError) as err:
        config_files.port_range(value)
    assert str(err.value).startswith(says), str(err.value)


# --- serve's own log: a name from outside cannot start a line of its own

def test_text_log_lines_escape_what_would_break_them():
    out = io.StringIO()
    logs.Writer(as_json=False, stream=out).write({}, "GET /\x1b[31m\nforged\r\u2028x\ty")
    assert out.getvalue() == "GET /\\x1b[31m\\nforged\\r\\u2028x\ty\n"
    record = logging.LogRecord("dogbreed_serve.server", logging.ERROR, __file__, 1,
                               "no model in %s", ("/a\nERROR forged",), None)
    line = logs.ServeFormatter(as_json=False).format(record)
    assert "\n" not in line and line.endswith("no model in /a\\nERROR forged")


# --- the run folder: room for its Unix sockets

def test_a_folder_too_long_for_the_sockets_is_passed_over(monkeypatch, tmp_path):
    """A TMPDIR whose path leaves no room for the Unix sockets serve keeps in its run
    folder (the kernel takes 107 bytes for a socket path): the next writable folder is
    used, instead of a traceback when the first socket is made."""
    from dogbreed_serve import server

    deep = tmp_path / ("a" * 80)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    base = server.writable_base()
    assert base != deep and len(str(base)) <= server.BASE_MAX_CHARS
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    if len(str(tmp_path)) <= server.BASE_MAX_CHARS:
        assert server.writable_base() == tmp_path
    longest = base / "dogbreed-serve-XXXXXXXX" / "public-closed.sock"
    assert len(str(longest)) <= 107
