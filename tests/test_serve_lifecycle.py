"""The serving container's life: start, stop, restart, broken models, read-only roots.

Each test runs the real `dogbreed-serve` image with `docker run` and judges it from
outside: exit codes, how long `docker stop` takes, what the log says, what clients got.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid

import pytest
import requests
from containers import Server, StopUnderLoad, broken_model, published_port

from conftest import docker
from dogbreed_scripts import malformed

GOOD = malformed.good_inputs()[0]  # (name, bytes, content type)


def state(container: str) -> tuple[str, int]:
    out = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container).stdout
    status, code = out.split()
    return status, int(code)


def wait_exit(container: str, timeout: float) -> float:
    """Seconds until the container exits; fails after ``timeout``."""
    start = time.monotonic()
    while state(container)[0] == "running":
        if time.monotonic() - start > timeout:
            pytest.fail(f"still running after {timeout} s:\n{logs(container)[-2000:]}")
        time.sleep(0.2)
    return time.monotonic() - start


def logs(container: str) -> str:
    out = docker("logs", container, check=False)
    return out.stdout + out.stderr


def one_line_refusal(container: str) -> tuple[str, str, float]:
    """Wait for a serve that must refuse to start: exit 2 with exactly one ERROR line.
    Returns that line, the whole log and the seconds it took."""
    took = wait_exit(container, timeout=60)
    text = logs(container)
    assert state(container) == ("exited", 2), text[-2000:]
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text[-2000:]
    return errors[0], text, took


def run_serve(image: str, model_dir, *args: str) -> str:
    name = f"dogbreed-serve-life-{uuid.uuid4().hex[:8]}"
    return docker("run", "-d", "--name", name, "-v", f"{model_dir}:/opt/ml/model:ro", *args,
                  image, "serve").stdout.strip()


def test_docker_stop_drains_concurrent_load(serve_image, trained_model):
    """`docker stop` under load from 6 clients: every request sent before the stop gets its
    200, serve exits 0 well within SageMaker's 30 s, and says it drained."""
    srv = Server(serve_image, trained_model.root / "model")
    try:
        srv.wait_ready()
        post = (f"{srv.url}/invocations", GOOD[1], GOOD[2])
        with StopUnderLoad([post] * 6) as load:
            assert load.answered(21), load.results  # under load: more than 20 answered
            stop_s = load.stop(srv.id)
        before = load.sent_before_stop()
        assert len(before) > 20, load.results
        assert all(outcome == 200 for outcome in before), [o for o in before if o != 200]
        assert state(srv.id) == ("exited", 0), logs(srv.id)[-2000:]
        assert stop_s < 15, stop_s
        assert "drained and stopped" in logs(srv.id)
    finally:
        srv.stop()


def test_requests_begun_before_sigterm_are_answered_by_the_model(serve_image, trained_model):
    """A large JPEG half uploaded, and another request with half its headers sent, when
    `docker stop` comes: both are answered by the model (200 with predictions) once
    their clients finish sending, over 4 s, while the public port takes no new
    connection. serve then exits 0."""
    from images import encode, photo

    body = encode(photo(1600, 1200), "JPEG", quality=95)  # about 2 MB
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    srv = Server(serve_image, trained_model.root / "model")
    stopper = None
    try:
        srv.wait_ready()
        host, port = srv.url.rsplit("/", 1)[1].split(":")
        uploading = socket.create_connection((host, int(port)), timeout=60)
        uploading.sendall(head + body[:len(body) // 2])
        heading = socket.create_connection((host, int(port)), timeout=60)
        heading.sendall(head[:40])
        stopper = threading.Thread(target=docker, args=("stop", "-t", "30", srv.id))
        stopper.start()
        deadline = time.monotonic() + 30
        while "SIGTERM received: draining" not in logs(srv.id):
            assert time.monotonic() < deadline, logs(srv.id)[-2000:]
            time.sleep(0.05)
        heading.sendall(head[40:])
        rest = body[len(body) // 2:]
        for i in range(8):  # a slow client: the rest over 4 s
            uploading.sendall(rest[i * len(rest) // 8:(i + 1) * len(rest) // 8])
            heading.sendall(body[i * len(body) // 8:(i + 1) * len(body) // 8])
            time.sleep(0.5)
        for sock in (uploading, heading):
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            sock.close()
            status_line, _, _ = reply.partition(b"\r\n")
            assert status_line.split()[1] == b"200", reply[:500]
            assert b'"predictions"' in reply, reply[:500]
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{srv.url}/ping", timeout=5)
        stopper.join(timeout=60)
        assert state(srv.id) == ("exited", 0), logs(srv.id)[-2000:]
        assert "drained and stopped" in logs(srv.id)
    finally:
        if stopper:
            stopper.join(timeout=60)
        srv.stop()


def test_restarted_container_serves_again(serve_image, trained_model):
    """docker restart keeps /tmp: the second start must not trip over the first's files."""
    srv = Server(serve_image, trained_model.root / "model")

    def republished():  # a new start publishes on a new host port
        srv.url = f"http://127.0.0.1:{published_port(srv.id)}"
    try:
        srv.wait_ready()
        docker("restart", "-t", "30", srv.id)
        republished()
        srv.wait_ready(timeout=90)
        assert srv.invoke(GOOD[1], GOOD[2]).status_code == 200
        docker("stop", "-t", "30", srv.id)
        docker("start", srv.id)
        republished()
        srv.wait_ready(timeout=90)
        assert srv.invoke(GOOD[1], GOOD[2]).status_code == 200
        assert "already running" not in logs(srv.id)
    finally:
        srv.stop()


def test_sigterm_while_starting_stops_at_once(serve_image, trained_model):
    """SIGTERM during start-up (before /ping says yes) ends serve promptly with 0.

    The container is frozen (docker pause) as soon as MMS's launcher has printed its
    first line, so the signal lands while MMS is starting on any machine, however
    fast: it waits, queued, until the container thaws."""
    cid = run_serve(serve_image, trained_model.root / "model")
    try:
        deadline = time.monotonic() + 60
        while "MMS is using" not in logs(cid):  # serve has its handlers; MMS is starting
            assert time.monotonic() < deadline and state(cid)[0] == "running", logs(cid)
            time.sleep(0.02)
        docker("pause", cid)
        assert "nginx" not in docker("top", cid).stdout, "was ready before it was frozen"
        start = time.monotonic()
        os.kill(int(docker("inspect", "-f", "{{.State.Pid}}", cid).stdout), signal.SIGTERM)
        docker("unpause", cid)
        wait_exit(cid, timeout=30)
        took = time.monotonic() - start
        assert state(cid) == ("exited", 0), logs(cid)[-2000:]
        assert took < 10, took
        assert "SIGTERM received while starting: stopping" in logs(cid)
    finally:
        docker("rm", "-f", cid, check=False)


def test_mms_dying_at_start_up_is_not_waited_for(serve_image, trained_model):
    """A JVM that cannot start (a heap of 1 MB): serve says so and exits 1 at once,
    instead of waiting for the management API until the start-up timeout."""
    cid = run_serve(serve_image, trained_model.root / "model",
                    "-e", "SAGEMAKER_MODEL_SERVER_VMARGS=-Xmx1m -Xms1m")
    try:
        took = wait_exit(cid, timeout=60)
        assert state(cid) == ("exited", 1), logs(cid)[-2000:]
        assert took < 45, took
        assert "multi-model-server exited" in logs(cid)
    finally:
        docker("rm", "-f", cid, check=False)


@pytest.mark.parametrize("case,says", [
    ("corrupt model.onnx", "is not an ONNX model"),
    ("missing model.onnx", "model.onnx is missing"),
    ("model.json without labels", "lacks labels"),
    ("model.json not JSON", "is not valid JSON"),
    ("fewer labels than outputs", "has 3 outputs but"),
])
def test_broken_model_directory_is_explained_in_one_line(serve_image, trained_model, tmp_path,
                                                         case, says):
    model = broken_model(trained_model.root / "model", tmp_path, case)
    cid = run_serve(serve_image, model)
    try:
        error, text, took = one_line_refusal(cid)
        assert says in error, text[-2000:]
        assert "deploy the model.tar.gz that a dogbreed-train job wrote" in error
        assert "Traceback" not in text and "multi-model-server" not in text
        assert took < 30, took
    finally:
        docker("rm", "-f", cid, check=False)


@pytest.mark.parametrize("case,says", [
    ("model card of schema version 2", "has schema version 2, but this image reads model "
                                       "cards of schema version 1"),
    ("model card without a schema version", "has no schema version, but this image reads"),
])
def test_model_from_another_schema_version_is_refused_at_start(serve_image, trained_model,
                                                               tmp_path, case, says):
    model = broken_model(trained_model.root / "model", tmp_path, case)
    cid = run_serve(serve_image, model)
    try:
        error, text, _ = one_line_refusal(cid)
        assert says in error, text[-2000:]
        assert "another release of dogbreed-train" in error
        assert "Traceback" not in text and "multi-model-server" not in text
    finally:
        docker("rm", "-f", cid, check=False)


def test_read_only_root_serves_from_dev_shm(serve_image, trained_model):
    """`docker run --read-only` without a writable /tmp: serve uses /dev/shm (a tmpfs
    Docker still mounts) and answers as usual."""
    srv = Server.__new__(Server)
    srv.id = run_serve(serve_image, trained_model.root / "model", "--read-only",
                       "-p", "127.0.0.1:0:8080")
    srv.url = f"http://127.0.0.1:{published_port(srv.id)}"
    try:
        srv.wait_ready()
        assert srv.invoke(GOOD[1], GOOD[2]).status_code == 200
        assert "dogbreed-serve-" in docker("exec", srv.id, "ls", "/dev/shm").stdout
    finally:
        srv.stop()


def test_read_only_root_without_any_writable_folder_says_what_to_do(serve_image,
                                                                    trained_model):
    cid = run_serve(serve_image, trained_model.root / "model", "--read-only", "--ipc", "none")
    try:
        error, text, _ = one_line_refusal(cid)
        assert "give the container a writable /tmp" in error, text
        assert "Traceback" not in text
    finally:
        docker("rm", "-f", cid, check=False)


def test_safe_port_range_that_mms_cannot_use_is_refused_in_one_line(serve_image,
                                                                    trained_model):
    """MMS 1.1.11 will not listen above 32767: serve says so before starting it."""
    cid = run_serve(serve_image, trained_model.root / "model",
                    "-e", "SAGEMAKER_SAFE_PORT_RANGE=40000-40009")
    try:
        error, text, _ = one_line_refusal(cid)
        assert "lies above 32767" in error, text
    finally:
        docker("rm", "-f", cid, check=False)


@pytest.mark.parametrize("variable,value,says", [
    ("DOGBREED_DECODE_TIMEOUT_S", "abc", "it takes a number of seconds above 0"),
    ("DOGBREED_DECODE_TIMEOUT_S", "nan", "it takes a number of seconds above 0"),
    ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1.5", "it takes a whole number, 1 or more"),
    ("SAGEMAKER_BIND_TO_PORT", "70000", "it takes a whole number from 1 to 65535"),
    ("DOGBREED_LOG_FORMAT", "xml", "it takes text or json"),
    ("SAGEMAKER_SAFE_PORT_RANGE", "9000-8000", "is reversed: give the lower port first "
                                               "(8000-9000)"),
])
def test_bad_environment_values_are_refused_in_one_line(serve_image, trained_model, variable,
                                                        value, says):
    """Exit 2 with one line that names the variable and what it takes, as for every
    other fault of the environment; no traceback."""
    cid = run_serve(serve_image, trained_model.root / "model", "-e", f"{variable}={value}")
    try:
        error, text, _ = one_line_refusal(cid)
        assert f"{variable}='{value}'" in error and says in error, text[-2000:]
        assert "Traceback" not in text
    finally:
        docker("rm", "-f", cid, check=False)


def test_a_name_from_outside_stays_on_its_log_line(serve_image, trained_model):
    """A model folder named with a newline (DOGBREED_MODEL_DIR): the refusal is still one
    line, and the name cannot forge a line of its own."""
    cid = run_serve(serve_image, trained_model.root / "model",
                    "-e", "DOGBREED_MODEL_DIR=/nowhere\n2026-12-04 00:00:00,000 ERROR forged")
    try:
        error, text, _ = one_line_refusal(cid)
        assert "no model in /nowhere\\n2026-12-04 00:00:00,000 ERROR forged: " in error
        assert not any(line.startswith("2026-12-04 00:00:00") for line in text.splitlines())
    finally:
        docker("rm", "-f", cid, check=False)


# Read as they are, whatever they hold: paths, JVM flags, the toolkit's own strings.
FREE_TEXT = {"DOGBREED_MODEL_DIR", "DOGBREED_MODELS_DIR", "DOGBREED_RUN_DIR",
             "SAGEMAKER_BASE_DIR", "SAGEMAKER_MODEL_SERVER_VMARGS", "SAGEMAKER_PROGRAM",
             "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "SAGEMAKER_SAFE_PORT_RANGE"}
PROBE = """
import json, os
from dogbreed_serve import settings

class Recording(dict):
    read = set()
    def get(self, key, default=None):
        Recording.read.add(key)
        return super().get(key, default)
    def __getitem__(self, key):
        Recording.read.add(key)
        return super().__getitem__(key)

base = dict(os.environ)
os.environ = Recording(base)
settings.Settings.from_env()
names = sorted(n for n in Recording.read if n.startswith(("DOGBREED_", "SAGEMAKER_")))
answers = {}
for name in names:
    os.environ = Recording(base, **{name: "abc"})
    try:
        settings.Settings.from_env()
        answers[name] = None
    except settings.SettingsError as exc:
        answers[name] = str(exc)
    except Exception as exc:
        answers[name] = "not SettingsError: " + type(exc).__name__
print(json.dumps(answers))
"""


def test_every_number_or_choice_serve_reads_is_checked(serve_image):
    """Every DOGBREED_* and SAGEMAKER_* variable that Settings.from_env reads in the
    image (the inference toolkit's included), set to 'abc': refused with the one line
    naming it, unless it is free text."""
    out = docker("run", "--rm", "--network", "none", serve_image, "python", "-c", PROBE)
    answers = json.loads(out.stdout.splitlines()[-1])
    assert "DOGBREED_DECODE_TIMEOUT_S" in answers and "SAGEMAKER_STARTUP_TIMEOUT" in answers
    for name, answer in answers.items():
        if name in FREE_TEXT:
            continue
        assert answer and answer.startswith(f"environment variable {name}='abc' is not "
                                            "allowed: it takes "), (name, answer)
