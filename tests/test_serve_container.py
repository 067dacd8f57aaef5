"""`docker run dogbreed-serve serve` with a model the training image really produced."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from containers import Server, listening_sockets
from images import encode, photo, png_with_size
from PIL import Image

from synthetic import LABELS


@pytest.fixture(scope="module")
def server(serve_image, trained_model):
    srv = Server(serve_image, trained_model.root / "model")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def check_prediction(resp, k=3):
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    preds = resp.json()["predictions"]
    assert len(preds) == k and {p["label"] for p in preds} <= set(LABELS)
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    return preds


def test_ping_is_not_200_before_the_model_is_loaded(serve_image, trained_model):
    srv = Server(serve_image, trained_model.root / "model")
    try:
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                code = requests.get(f"{srv.url}/ping", timeout=2).status_code
            except requests.ConnectionError:
                code = None
            if code == 200:
                # By the time /ping says yes, the worker has loaded and warmed the model ...
                assert "model loaded and warmed up" in srv.logs()
                break
            seen.append(code)
            time.sleep(0.02)
        else:
            pytest.fail("never became ready")
        assert seen and set(seen) == {None}  # before that: refused, never a 200 or 5xx
        # ... and the very first invocation is answered at once.
        start = time.monotonic()
        check_prediction(srv.invoke(encode(photo(), "JPEG")))
        assert time.monotonic() - start < 5
    finally:
        srv.stop()


@pytest.mark.parametrize("mode,fmt,content_type", [
    ("RGB", "JPEG", "image/jpeg"),
    ("RGB", "PNG", "image/png"),
    ("L", "JPEG", "image/jpeg"),
    ("L", "PNG", "image/png"),
    ("RGBA", "PNG", "image/png"),
    ("P", "PNG", "image/png"),
    ("CMYK", "JPEG", "image/jpeg"),
    ("I;16", "PNG", "image/png"),
    ("RGB", "JPEG", "application/x-image"),
    ("RGB", "PNG", "image/jpeg"),           # format comes from the bytes, not the header
    ("RGB", "JPEG", "IMAGE/JPEG; charset=binary"),
    ("RGB", "JPEG", "application/octet-stream"),  # the SDK's IdentitySerializer default
    ("RGB", "PNG", "application/octet-stream"),
])
def test_raw_bytes_in_every_mode(server, mode, fmt, content_type):
    img = photo()
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257))
    elif mode != "RGB":
        img = img.convert(mode)
    check_prediction(server.invoke(encode(img, fmt), content_type))


def test_exif_orientation_is_applied(server):
    img = photo(120, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = server.invoke(encode(img, "JPEG", exif=exif, quality=95)).json()
    upright = server.invoke(encode(img.transpose(Image.Transpose.ROTATE_270), "JPEG",
                                   quality=95)).json()
    assert rotated["predictions"][0]["label"] == upright["predictions"][0]["label"]
    assert rotated["predictions"][0]["probability"] == pytest.approx(
        upright["predictions"][0]["probability"], abs=0.05)


def test_top_k_per_request(server):
    body = encode(photo(), "JPEG")
    check_prediction(server.invoke(body, **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=1"}), k=1)
    check_prediction(server.invoke(body, **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=50"}), k=3)


def test_endpoint_agrees_with_training_evaluation(server, trained_model):
    """Same image, same answer: the training job's own eval predictions vs the endpoint."""
    rows = json.loads((trained_model.root / "output/data/test_predictions.json").read_text())
    assert len(rows) == 12
    test_dir = trained_model.root / "input" / "data" / "test"
    for row in rows:
        path = test_dir / row["image"]
        ctype = "image/png" if path.suffix == ".png" else "image/jpeg"
        top = server.invoke(path.read_bytes(), ctype).json()["predictions"][0]
        assert top["label"] == row["predicted"], row
        assert top["probability"] == pytest.approx(row["probability"], abs=1e-4), row


GOOD = encode(photo(), "JPEG")
BAD_INPUTS = [
    ("empty body", b"", "image/jpeg", 400),
    ("not an image", b"hello world" * 10, "image/jpeg", 400),
    ("truncated jpeg", GOOD[: len(GOOD) // 2], "image/jpeg", 400),
    ("png magic then garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png", 400),
    ("text/plain", GOOD, "text/plain", 415),
    ("json", b'{"a": 1}', "application/json", 415),
    ("form encoded", GOOD, "application/x-www-form-urlencoded", 415),
    ("no content type", GOOD, None, 415),
    ("csv", b"a,b\n1,2\n", "text/csv", 415),
    ("octet-stream, not an image", b"GIF89a" + b"\0" * 64, "application/octet-stream", 415),
    ("decompression bomb", png_with_size(30000, 30000), "image/png", 413),
    ("over the payload limit", b"\xff\xd8\xff" + b"\0" * (7 * 1024 * 1024), "image/jpeg", 413),
]


@pytest.mark.parametrize("case,body,content_type,status", BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_4xx_json(server, case, body, content_type, status):
    resp = server.invoke(body, content_type)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    payload = resp.json()
    assert payload["error"] and payload["status"] == status
    for leak in ("Traceback", "/opt/", "site-packages", ".py"):
        assert leak not in resp.text


def test_server_survives_bad_input(server):
    for _, body, content_type, _ in BAD_INPUTS:
        server.invoke(body, content_type)
    check_prediction(server.invoke(GOOD))
    logs = server.logs()
    assert "Worker died" not in logs and "Traceback" not in logs


def test_only_ping_invocations_and_metrics_are_public(server):
    assert requests.get(f"{server.url}/models", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/invocations", timeout=5).status_code == 405
    assert requests.get(f"{server.url}/ping", timeout=5).json() == {"status": "Healthy"}
    assert requests.post(f"{server.url}/metrics", timeout=5).status_code == 405


def scrape(server) -> dict[str, float]:
    """GET /metrics, parsed: {'name{labels}': value}."""
    resp = requests.get(f"{server.url}/metrics", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def moved(before: dict, after: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_move_with_traffic(server):
    """Counters and histograms move with invocations, and only with invocations:
    pings and scrapes are neither counted nor logged."""
    before = scrape(server)
    lines_before = server.logs().count("\n")
    for _ in range(5):
        requests.get(f"{server.url}/ping", timeout=5)
        scrape(server)
    assert server.logs().count("\n") == lines_before
    idle = scrape(server)
    assert {k: v for k, v in idle.items() if k.startswith("dogbreed_requests_total")} == {
        k: v for k, v in before.items() if k.startswith("dogbreed_requests_total")}
    with requests.Session() as session:
        for _ in range(4):
            assert session.post(f"{server.url}/invocations", data=GOOD,
                                headers={"Content-Type": "image/jpeg"}, timeout=30).ok
        for _ in range(3):
            session.post(f"{server.url}/invocations", data=b"not an image",
                         headers={"Content-Type": "image/jpeg"}, timeout=30)
        session.post(f"{server.url}/invocations", data=GOOD,
                     headers={"Content-Type": "text/plain"}, timeout=30)
    after = scrape(server)
    ok = 'dogbreed_requests_total{endpoint="invocations",status="200"}'
    assert moved(before, after, ok) == 4
    assert moved(before, after, ok.replace("200", "400")) == 3
    assert moved(before, after, ok.replace("200", "415")) == 1  # nginx's own answer
    assert moved(before, after, "dogbreed_request_duration_seconds_count") == 8
    assert moved(before, after, "dogbreed_decode_duration_seconds_count") == 7
    assert moved(before, after, "dogbreed_batch_size_sum") == 4  # images through the network
    assert moved(before, after, "dogbreed_forward_duration_seconds_count") >= 1
    assert after["dogbreed_requests_in_flight"] == 0
    assert after["dogbreed_worker_restarts_total"] == 0, server.deaths()
    info = [k for k in after if k.startswith("dogbreed_model_info")]
    assert len(info) == 1 and 'classes="3"' in info[0] and 'input_size="64"' in info[0]
    assert 'execution_provider="CPUExecutionProvider"' in info[0] and after[info[0]] == 1


def test_request_ids_are_echoed_and_logged(server):
    """The id SageMaker sends (X-Amzn-SageMaker-Inference-Id) or a generated one: in the
    answer's header, in nginx's access line, and in the worker's line about a refusal."""
    header = "X-Amzn-SageMaker-Inference-Id"
    given = f"test-{time.time_ns()}"
    resp = server.invoke(b"not an image", "image/jpeg", **{header: given})
    assert resp.status_code == 400 and resp.headers[header] == given
    made = server.invoke(GOOD).headers[header]
    assert len(made) == 32 and made != given
    odd = server.invoke(GOOD, **{header: "x" * 65}).headers[header]  # over 64 characters
    assert len(odd) == 32 and odd != "x" * 65
    logs = server.logs_once(lambda text: f"request_id={odd}" in text
                            and f"[request {given}]" in text)
    access = [line for line in logs.splitlines() if "POST /invocations" in line]
    assert any(f"request_id={given}" in line and " 400 " in line for line in access)
    assert any(f"request_id={made}" in line and " 200 " in line for line in access)
    assert any(f"[request {given}]" in line and "answered 400" in line
               for line in logs.splitlines())


def test_health_checks_are_not_logged(server):
    before = server.logs().count("\n")
    for _ in range(20):
        requests.get(f"{server.url}/ping", timeout=5)
    assert server.logs().count("\n") == before


def test_listening_processes_are_not_root(server):
    from conftest import docker

    rows = docker("top", server.id, "-eo", "pid,uid,args").stdout.splitlines()[1:]
    procs = [tuple(r.split(None, 2)[1:]) for r in rows]
    assert any("nginx" in a for _, a in procs) and any("java" in a for _, a in procs)
    assert all(uid != "0" for uid, _ in procs), procs


@pytest.fixture(scope="module")
def variant_server(serve_image, trained_model):
    """JSON logs and a safe port range, in one container."""
    srv = Server(serve_image, trained_model.root / "model", "DOGBREED_LOG_FORMAT=json",
                 "SAGEMAKER_SAFE_PORT_RANGE=20000-20009")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_json_log_format_is_one_object_per_line(variant_server):
    header = "X-Amzn-SageMaker-Inference-Id"
    variant_server.invoke(GOOD, **{header: "json-ok"})
    variant_server.invoke(b"not an image", "image/png", **{header: "json-bad"})
    text = variant_server.logs_once(lambda text: text.count('"json-bad"') >= 2)
    records = [json.loads(line) for line in text.splitlines() if line]
    assert all({"level", "source", "message"} <= set(r) or r.get("source") == "access"
               for r in records), records[:5]
    access = {r["request_id"]: r for r in records if r.get("source") == "access"}
    assert access["json-ok"]["status"] == 200 and access["json-bad"]["status"] == 400
    assert access["json-ok"]["uri"] == "/invocations"
    refusal = [r for r in records if r.get("source") == "worker"
               and r.get("request_id") == "json-bad"]
    assert refusal and refusal[0]["level"] == "INFO" and "answered 400" in refusal[0]["message"]
    assert any(r.get("source") == "serve" and "ready on port" in r["message"] for r in records)


def test_internal_ports_lie_in_the_safe_port_range(variant_server):
    sockets = listening_sockets(variant_server.id)
    internal = sorted({port for addr, port in sockets if port != 8080})
    assert len(internal) >= 2, sockets  # MMS inference and management
    assert all(20000 <= port <= 20009 for port in internal), sockets


def test_bind_to_port_and_top_k_default(serve_image, trained_model):
    """SAGEMAKER_BIND_TO_PORT moves the public port; DOGBREED_TOP_K sets the default k."""

    srv = Server(serve_image, trained_model.root / "model", "SAGEMAKER_BIND_TO_PORT=9090",
                 "DOGBREED_TOP_K=2", "SAGEMAKER_MODEL_SERVER_WORKERS=2", port=9090)
    try:
        srv.wait_ready()
        check_prediction(srv.invoke(GOOD), k=2)
        assert "2 worker(s)" in srv.logs()
    finally:
        srv.stop()
