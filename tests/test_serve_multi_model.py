"""The serving image as a SageMaker multi-model container (SAGEMAKER_MULTI_MODEL=true).

Two models the training image really produced, unlike each other (three classes at 64
px, two at 48 px), in a folder mounted at /opt/ml/models as SageMaker lays it out;
the container is driven through SageMaker's multi-model API over real HTTP: load,
list, describe, invoke from several clients at once, unload, load again, and every
refusal. What MMS itself holds is read inside the container, so "nothing
half-loaded stays behind" is checked where it would stay.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from containers import Server, StopUnderLoad, broken_model
from images import encode, photo, png_with_size

from conftest import SECOND_LABELS, docker
from synthetic import LABELS

MULTI = "SAGEMAKER_MULTI_MODEL=true"
GOOD = encode(photo(), "JPEG")
ROOT = "/opt/ml/models"


def readable(path: Path) -> Path:
    """The container's service user (uid 1000) reads the mounted folder."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


@pytest.fixture(scope="module")
def models_root(trained_model, second_model, tmp_path_factory) -> Path:
    """SageMaker's layout: /opt/ml/models/NAME/model, one per model (and broken ones)."""
    root = tmp_path_factory.mktemp("models")
    for name, run in (("three", trained_model), ("two", second_model)):
        shutil.copytree(run.root / "model", root / name / "model")
    for case in BROKEN:
        broken_model(trained_model.root / "model", root / "broken", case)
    shutil.copytree(trained_model.root / "model", root / "spare" / "model")
    (root / "a-file").write_text("not a folder")
    (root / "empty").mkdir()
    return readable(root)


BROKEN = ["corrupt model.onnx", "missing model.onnx", "model.json not JSON",
          "model.json without labels", "fewer labels than outputs",
          "model card of schema version 2", "model card without a schema version"]


def start(serve_image, models_root, *env, docker_args=()) -> Server:
    srv = Server(serve_image, models_root, MULTI, *env, docker_args=docker_args,
                 mount=ROOT, name_prefix="dogbreed-serve-mm")
    try:
        srv.wait_ready()
    except Exception:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
def server(serve_image, models_root):
    # /metrics names one model; the rest count as "other" (the label's cap).
    srv = start(serve_image, models_root, "DOGBREED_METRICS_MAX_MODELS=1")
    yield srv
    srv.stop()


def load(srv, name: str, url: str | None = None) -> requests.Response:
    return requests.post(f"{srv.url}/models", timeout=120,
                         json={"model_name": name, "url": url or f"{ROOT}/{name}/model"})


def invoke(srv, name: str, body: bytes = GOOD, content_type: str = "image/jpeg",
           **headers) -> requests.Response:
    return requests.post(f"{srv.url}/models/{name}/invoke", data=body, timeout=60,
                         headers={"Content-Type": content_type, **headers})


def invoke_file(srv, name: str, path: Path, **headers) -> requests.Response:
    """One of a training run's test images, sent with its own content type."""
    return invoke(srv, name, path.read_bytes(),
                  "image/png" if path.suffix == ".png" else "image/jpeg", **headers)


def load_both(srv) -> None:
    for name in ("three", "two"):
        if name not in listed(srv):
            assert load(srv, name).status_code == 200


def listed(srv) -> list[str]:
    resp = requests.get(f"{srv.url}/models", timeout=10)
    assert resp.status_code == 200, resp.text
    return [m["modelName"] for m in resp.json()["models"]]


def mms_holds(srv) -> list[str]:
    """The models multi-model-server itself has registered, asked on its loopback
    management port inside the container."""
    script = ("import glob, json, urllib.request\n"
              "props = open(glob.glob('/tmp/dogbreed-serve-*/mms.properties')[0]).read()\n"
              "url = [l.split('=', 1)[1] for l in props.splitlines()"
              " if l.startswith('management_address')][0]\n"
              "print(json.dumps([m['modelName'] for m in json.load("
              "urllib.request.urlopen(url + '/models'))['models']]))")
    return json.loads(docker("exec", srv.id, "python", "-c", script).stdout)


def scrape(srv) -> dict[str, float]:
    samples = {}
    for line in requests.get(f"{srv.url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def expected(run, image: str) -> tuple[str, float]:
    """The training job's own evaluation of one of its test images: label, probability."""
    rows = json.loads((run.root / "output/data/test_predictions.json").read_text())
    row = next(r for r in rows if r["image"] == image)
    return row["predicted"], row["probability"]


def test_the_image_declares_the_capability_sagemaker_reads(serve_image):
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}",
                               serve_image).stdout)
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"


def test_ping_answers_with_no_model_loaded(serve_image, models_root):
    srv = start(serve_image, models_root)
    try:
        assert requests.get(f"{srv.url}/ping", timeout=5).status_code == 200
        assert listed(srv) == [] and mms_holds(srv) == []
        assert "multi-model mode" in srv.logs()
    finally:
        srv.stop()


def test_two_models_side_by_side_from_several_clients(server, trained_model, second_model):
    """Each model answers with its own labels and its own preprocessing: the endpoint
    agrees with each training job's evaluation of its own test images, while both
    models are invoked at once, bad images among the good."""
    for name, labels in (("three", 3), ("two", 2)):
        resp = load(server, name)
        assert resp.status_code == 200, resp.text
        assert f"{labels} classes" in resp.json()["message"]
    assert listed(server) == ["three", "two"]
    assert sorted(mms_holds(server)) == ["three", "two"]
    assert requests.get(f"{server.url}/models/two", timeout=10).json() == {
        "modelName": "two", "modelUrl": f"{ROOT}/two/model"}

    jobs = []  # (model, training run, image path relative to its test folder)
    for name, run in (("three", trained_model), ("two", second_model)):
        test_dir = run.root / "input" / "data" / "test"
        for path in sorted(p for p in test_dir.rglob("*") if p.is_file()):
            jobs.append((name, run, str(path.relative_to(test_dir))))
    jobs = jobs * 2 + [("three", None, "bad"), ("two", None, "bad")] * 4

    def send(job):
        name, run, image = job
        if run is None:
            return job, invoke(server, name, b"not an image")
        return job, invoke_file(server, name, run.root / "input" / "data" / "test" / image,
                                **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"})

    before = scrape(server)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(send, jobs))
    for (name, run, image), resp in answers:
        if run is None:
            assert resp.status_code == 400 and resp.json()["status"] == 400, resp.text
            continue
        assert resp.status_code == 200, (name, resp.text)
        preds = resp.json()["predictions"]
        assert {p["label"] for p in preds} <= set(LABELS if name == "three" else SECOND_LABELS)
        assert len(preds) == 2
        label, probability = expected(run, image)
        assert preds[0]["label"] == label, (name, image, preds)
        assert preds[0]["probability"] == pytest.approx(probability, abs=1e-4), (name, image)

    after = scrape(server)
    good = sum(1 for (n, run, _), _r in answers if run is not None and n == "three")
    # DOGBREED_METRICS_MAX_MODELS=1: the first model loaded has its own label value.
    assert after['dogbreed_model_requests_total{model="three",status="200"}'] - before.get(
        'dogbreed_model_requests_total{model="three",status="200"}', 0) == good
    assert not any('model="two"' in key for key in after)
    assert after['dogbreed_model_requests_total{model="other",status="200"}'] >= 1
    assert after["dogbreed_models_loaded"] >= 2
    assert after["dogbreed_worker_restarts_total"] == 0, server.deaths()


def test_unload_then_load_again(server):
    load_both(server)
    resp = requests.delete(f"{server.url}/models/two", timeout=60)
    assert resp.status_code == 200, resp.text
    assert listed(server) == ["three"] and mms_holds(server) == ["three"]
    gone = invoke(server, "two")
    assert gone.status_code == 404 and gone.json() == {
        "error": "model two is not loaded: load it with POST /models", "status": 404}
    assert invoke(server, "three").status_code == 200  # the other one is untouched
    assert requests.delete(f"{server.url}/models/two", timeout=10).status_code == 404
    assert load(server, "two").status_code == 200
    assert invoke(server, "two").json()["predictions"][0]["label"] in SECOND_LABELS
    assert scrape(server)["dogbreed_worker_restarts_total"] == 0, server.deaths()


def test_mixed_batches_of_answers_and_refusals_never_kill_a_worker(server, trained_model,
                                                                  second_model):
    """MMS 1.1.11's frontend reads each answer's HTTP status without checking that it
    has arrived (frames.py). Batches that mix answers and refusals, from 6 clients over
    two models, cost no worker: 1,440 invocations (8 worker deaths were expected in
    them before frames.padded, 16 were seen in 2,880)."""
    load_both(server)
    jobs = []
    for name, run in (("three", trained_model), ("two", second_model)):
        test_dir = run.root / "input" / "data" / "test"
        jobs += [(name, p) for p in sorted(test_dir.rglob("*")) if p.is_file()]
    jobs = (jobs * 2 + [("three", None), ("two", None)] * 4) * 30

    def send(job) -> int:
        name, path = job
        if path is None:
            return invoke(server, name, b"not an image").status_code
        return invoke_file(server, name, path,
                           **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}).status_code

    before = scrape(server)["dogbreed_worker_restarts_total"]
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses == [200 if path else 400 for _name, path in jobs]
    assert scrape(server)["dogbreed_worker_restarts_total"] == before, server.deaths()


@pytest.mark.parametrize("case,status,says", [
    ("corrupt model.onnx", 400, "is not an ONNX model"),
    ("missing model.onnx", 400, "model.onnx is missing"),
    ("model.json not JSON", 400, "is not valid JSON"),
    ("model.json without labels", 400, "lacks labels"),
    ("fewer labels than outputs", 400, "has 3 outputs but"),
    ("model card of schema version 2", 400, "has schema version 2, but this image reads"),
    ("model card without a schema version", 400, "has no schema version"),
    ("empty", 400, "model.json is missing"),
    ("a-file", 400, "is a file, not a model folder"),
    ("nowhere", 404, "nothing at /opt/ml/models/nowhere"),
    ("outside", 400, "is not a folder under /opt/ml/models"),
])
def test_a_folder_that_is_no_model_is_refused_and_nothing_stays(server, case, status, says):
    url = {"empty": f"{ROOT}/empty", "a-file": f"{ROOT}/a-file", "nowhere": f"{ROOT}/nowhere",
           "outside": "/opt/program"}.get(case, f"{ROOT}/broken/{case}")
    before = sorted(mms_holds(server))
    resp = load(server, "refused", url)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert says in resp.json()["error"] and resp.json()["status"] == status
    for leak in ("Traceback", "site-packages", ".py"):
        assert leak not in resp.text
    assert "refused" not in listed(server)
    assert sorted(mms_holds(server)) == before
    assert invoke(server, "refused").status_code == 404


@pytest.mark.parametrize("body,says", [
    (b"not json", '"model_name" and "url"'),
    (b'["model_name", "url"]', '"model_name" and "url"'),
    (b'{"model_name": "x"}', '"model_name" and "url"'),
    (b'{"model_name": "a/b", "url": "/opt/ml/models/spare/model"}', "model_name 'a/b'"),
    (b'{"model_name": "' + b"x" * 300 + b'", "url": "/opt/ml/models/spare/model"}',
     "use 1 to 255 letters"),
])
def test_a_malformed_load_request_is_refused(server, body, says):
    resp = requests.post(f"{server.url}/models", data=body, timeout=30,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["error"]


def test_a_name_already_loaded_is_a_409_and_unknown_names_404(server):
    if "three" not in listed(server):
        assert load(server, "three").status_code == 200
    again = load(server, "three", f"{ROOT}/spare/model")
    assert again.status_code == 409 and again.json()["error"] == "model three is already loaded"
    for method, path in (("GET", "/models/nope"), ("DELETE", "/models/nope"),
                         ("POST", "/models/nope/invoke")):
        resp = requests.request(method, f"{server.url}{path}", data=GOOD, timeout=10,
                                headers={"Content-Type": "image/jpeg"})
        assert resp.status_code == 404, (method, path, resp.text)
        assert "nope" in resp.json()["error"] and resp.json()["status"] == 404
    odd = requests.post(f"{server.url}/models/a%20b/invoke", data=GOOD, timeout=10,
                        headers={"Content-Type": "image/jpeg"})
    assert odd.status_code == 404 and odd.json()["status"] == 404


@pytest.mark.parametrize("body,content_type,headers,status", [
    (GOOD, "text/plain", {}, 415),
    (GOOD, "image/jpeg", {"X-Amzn-SageMaker-Custom-Attributes": "top_k=" + "9" * 5000}, 400),
    (png_with_size(30000, 30000), "image/png", {}, 413),
    (b"\xff\xd8\xff" + b"\0" * (7 * 1024 * 1024), "image/jpeg", {}, 413),
    (b"", "image/jpeg", {}, 400),
])
def test_invocations_of_a_model_get_the_checks_of_invocations(server, body, content_type,
                                                              headers, status):
    if "three" not in listed(server):
        assert load(server, "three").status_code == 200
    resp = invoke(server, "three", body, content_type, **headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["status"] == status and resp.json()["error"]


def test_request_ids_target_model_and_single_model_paths(server):
    if "three" not in listed(server):
        assert load(server, "three").status_code == 200
    resp = invoke(server, "three", **{"X-Amzn-SageMaker-Inference-Id": "mm-request-1",
                                      "X-Amzn-SageMaker-Target-Model": "shelter-3.tar.gz"})
    assert resp.status_code == 200 and resp.headers["X-Amzn-SageMaker-Inference-Id"] == \
        "mm-request-1"
    single = requests.post(f"{server.url}/invocations", data=GOOD, timeout=10,
                           headers={"Content-Type": "image/jpeg"})
    assert single.status_code == 404 and "POST /models/NAME/invoke" in single.json()["error"]
    time.sleep(1)
    [line] = [line for line in server.logs().splitlines() if "request_id=mm-request-1" in line]
    assert "POST /models/three/invoke" in line and "target_model=shelter-3.tar.gz" in line


def test_list_pages_through_many_models(server):
    names = [f"page-{i}" for i in range(5)]
    for name in names:
        assert load(server, name, f"{ROOT}/spare/model").status_code == 200
    try:
        seen, token, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"next_page_token": token} if token else {})}
            page = requests.get(f"{server.url}/models", params=params, timeout=10).json()
            seen += [m["modelName"] for m in page["models"]]
            pages += 1
            token = page.get("nextPageToken")
            if not token:
                break
        assert seen == sorted(seen) and set(names) <= set(seen) and len(seen) == len(set(seen))
        assert pages == -(-len(seen) // 2)
        assert requests.get(f"{server.url}/models", params={"limit": 0},
                            timeout=10).status_code == 400
    finally:
        for name in names:
            requests.delete(f"{server.url}/models/{name}", timeout=60)


def test_loading_a_model_does_not_hold_up_the_others(server):
    """Invocations of a loaded model are answered while another model is loading."""
    if "three" not in listed(server):
        assert load(server, "three").status_code == 200
    loading, done = threading.Event(), threading.Event()
    answered_while_loading: list[int] = []

    def client():
        while not done.is_set():
            resp = invoke(server, "three")
            if loading.is_set() and not done.is_set():
                answered_while_loading.append(resp.status_code)
    clients = [threading.Thread(target=client) for _ in range(3)]
    for c in clients:
        c.start()
    try:
        loading.set()
        resp = load(server, "slow-loader", f"{ROOT}/spare/model")
        done.set()
        assert resp.status_code == 200, resp.text
    finally:
        done.set()
        for c in clients:
            c.join(timeout=60)
        requests.delete(f"{server.url}/models/slow-loader", timeout=60)
    assert answered_while_loading and set(answered_while_loading) == {200}


KILL_MODEL = """
import os, signal, sys
wanted = b"--model-name\\0" + sys.argv[1].encode() + b"\\0"
killed = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if wanted in open(f"/proc/{pid}/cmdline", "rb").read():
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
    except OSError:
        pass  # gone meanwhile
print(killed)
"""


def kill_model_processes(srv, name: str) -> list[int]:
    """SIGKILL every MMS process of one model (its backend and its workers: their
    command lines name it), so that MMS cannot start a worker for it again."""
    return json.loads(docker("exec", srv.id, "python", "-c", KILL_MODEL, name).stdout)


def wait_for_ping(srv, status: int, timeout: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout
    while (ping := requests.get(f"{srv.url}/ping", timeout=5)).status_code != status:
        assert time.monotonic() < deadline, srv.logs()[-2000:]
        time.sleep(0.2)
    return ping


def test_ping_and_invocations_answer_503_while_no_model_can_be_answered(serve_image,
                                                                        models_root):
    """The only model's processes are killed: /ping answers 503 and its invocations a
    JSON 503 at once, as in single-model mode."""
    srv = start(serve_image, models_root, "DOGBREED_UNHEALTHY_EXIT_S=600")
    try:
        assert load(srv, "three").status_code == 200
        assert kill_model_processes(srv, "three")
        assert wait_for_ping(srv, 503).json() == {"status": "Unhealthy"}
        resp = invoke(srv, "three")
        assert resp.status_code == 503 and "retry" in resp.json()["error"], resp.text
        assert srv.state()["status"] == "running"
    finally:
        srv.stop()


def test_a_model_that_lost_its_processes_leaves_the_others_answered_then_is_replaced(
        serve_image, models_root):
    """One of two models loses every process: the other is still answered and /ping
    says 200, and after DOGBREED_UNHEALTHY_EXIT_S serve exits 3, so that SageMaker
    replaces the container (and loads both again on the new one)."""
    srv = start(serve_image, models_root, "DOGBREED_UNHEALTHY_EXIT_S=20")
    try:
        assert load(srv, "three").status_code == 200 and load(srv, "two").status_code == 200
        assert kill_model_processes(srv, "two")
        assert invoke(srv, "three").status_code == 200
        assert requests.get(f"{srv.url}/ping", timeout=5).status_code == 200
        state = srv.state_once_stopped(timeout=120)
        assert state["status"] == "exited" and state["exit_code"] == 3, state
        assert "fewer working workers" in srv.logs()
    finally:
        srv.stop()


def test_memory_for_another_model_runs_out_with_a_507(serve_image, models_root):
    """In a container limited to 1.2 GB, models load until the next one would not fit:
    507 with a message that says so, nothing killed, and once one is unloaded the
    refused model loads."""
    srv = start(serve_image, models_root, docker_args=("--memory", "1200m"))
    try:
        loaded, refused = [], None
        for i in range(12):
            resp = load(srv, f"copy-{i}", f"{ROOT}/spare/model")
            if resp.status_code == 507:
                refused = (f"copy-{i}", resp.json())
                break
            assert resp.status_code == 200, resp.text
            loaded.append(f"copy-{i}")
        assert refused, f"no 507 after {len(loaded)} models"
        name, answer = refused
        assert answer["status"] == 507 and "not enough memory for model" in answer["error"]
        assert loaded and sorted(mms_holds(srv)) == sorted(loaded)
        assert all(invoke(srv, n).status_code == 200 for n in loaded)
        assert requests.delete(f"{srv.url}/models/{loaded[0]}", timeout=60).status_code == 200
        assert load(srv, name, f"{ROOT}/spare/model").status_code == 200
        assert invoke(srv, name).status_code == 200
        assert not srv.state()["oom_killed"] and "Killed" not in srv.logs()
    finally:
        srv.stop()


def test_docker_stop_drains_invocations_of_every_model(serve_image, models_root):
    """`docker stop` while two models are invoked: what was sent before the stop is
    answered, serve exits 0 and says it drained."""
    srv = start(serve_image, models_root)
    try:
        assert load(srv, "three").status_code == 200 and load(srv, "two").status_code == 200
        posts = [(f"{srv.url}/models/{name}/invoke", GOOD, "image/jpeg")
                 for name in ("three", "two") * 2]
        with StopUnderLoad(posts) as clients:
            clients.answered(20)
            clients.stop(srv.id)
        before = clients.sent_before_stop()
        assert all(outcome == 200 for outcome in before), [o for o in before if o != 200]
        status = srv.state()
        assert (status["status"], status["exit_code"]) == ("exited", 0), srv.logs()[-2000:]
        assert "drained and stopped" in srv.logs()
    finally:
        srv.stop()
