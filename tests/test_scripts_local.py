"""The scripts with the real images: invoke against the serving container, and the local
mode path (train, deploy, invoke with raw bytes, cleanup) end to end, no AWS account.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
import requests
from aws_stand_in import BUCKET, REGION, explain, put_images, run_script, script_env
from containers import Server

from conftest import SECOND_LABELS, TINY_HPS, docker
from dogbreed_scripts import cleanup as cleanup_script
from synthetic import LABELS, make_dataset


class RuntimeFrontDoor:
    """Stands in for SageMaker's runtime front end: POST /endpoints/NAME/invocations is
    passed on to a real serving container's /invocations, and recorded."""

    FORWARDED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")

    def __init__(self, backend: str):
        self.backend = backend
        self.requests: list[dict] = []
        door = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                door.requests.append({"path": self.path, "body": body, "headers": headers})
                name = self.path.split("/")[2] if self.path.startswith("/endpoints/") else ""
                if not name or not self.path.endswith("/invocations"):
                    self.send_error(404)
                    return
                forward = {k: self.headers[k] for k in door.FORWARDED if self.headers.get(k)}
                answer = door.forward(name, forward, body)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, endpoint: str, headers: dict, body: bytes) -> requests.Response:
        return requests.post(f"{self.backend}/invocations", data=body, headers=headers,
                             timeout=60)

    def close(self):
        self.server.shutdown()


def test_invoke_sends_raw_bytes_through_boto3_and_sdk_v3(serve_image, trained_model,
                                                           tmp_path):
    server = Server(serve_image, trained_model.root / "model")
    door = None
    try:
        server.wait_ready()
        door = RuntimeFrontDoor(server.url)
        photos = make_dataset(tmp_path / "photos", {"test": 1}, seed=7) / "test"
        files = sorted(p for p in photos.rglob("*") if p.is_file())
        env = script_env("http://127.0.0.1:9", tmp_path / "work",
                         AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=door.url)
        proc = run_script("invoke", str(photos), "--endpoint", "dogbreed-ep", "--via", "both",
                          "--top-k", "2", "--json", str(tmp_path / "answers.json"), env=env,
                          cwd=tmp_path)
        assert proc.returncode == 0, explain(proc)
        direct = {p: server.invoke(p.read_bytes(), "image/jpeg",
                                   **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}).json()
                  for p in files}
    finally:
        if door:
            door.close()
        server.stop()

    # Each image was sent twice (boto3, then the SDK), as the file's own bytes.
    assert len(door.requests) == 2 * len(files)
    for i, path in enumerate(files):
        for sent in door.requests[2 * i: 2 * i + 2]:
            assert sent["path"] == "/endpoints/dogbreed-ep/invocations"
            assert sent["body"] == path.read_bytes()
            assert sent["headers"]["content-type"] == (
                "image/png" if path.suffix == ".png" else "image/jpeg")
            assert sent["headers"]["x-amzn-sagemaker-custom-attributes"] == "top_k=2"
            assert sent["headers"]["accept"] == "application/json"
    answers = json.loads((tmp_path / "answers.json").read_text())["results"]
    assert [(Path(a["image"]).name, a["client"]) for a in answers] == [
        (p.name, c) for p in files for c in ("boto3", "sdk")]
    for a in answers:
        assert a["predictions"] == direct[Path(a["image"])]["predictions"]
        assert len(a["predictions"]) == 2 and a["predictions"][0]["label"] in LABELS
    top = direct[files[0]]["predictions"][0]
    assert f"  1. {top['label']:<32} {top['probability']:.3f}" in proc.stdout


def local_containers(workdir: Path) -> list[str]:
    """Local endpoints (by their label) and local training containers (by docker
    compose's label) that the scripts started under workdir."""
    root = str(workdir.resolve())
    out = docker("ps", "-a", "--format", '{{.ID}} {{.Label "dogbreed.local-root"}} '
                 '{{.Label "com.docker.compose.project.working_dir"}}').stdout.splitlines()
    return [line.split()[0] for line in out if any(
        label.startswith(root) for label in line.split()[1:])]


def test_local_mode_train_deploy_invoke_cleanup(train_image, serve_image, tmp_path):
    work = tmp_path / "work"
    data = make_dataset(tmp_path / "dogImages", {"train": 8, "valid": 2, "test": 2})
    env = script_env(None, work, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                     TRAIN_IMAGE=train_image, SERVE_IMAGE=serve_image)
    hps = [f"--hp={k}={v}" for k, v in {**TINY_HPS, "epochs": "1"}.items()]

    def step(name, *args, timeout=900):
        start = time.monotonic()
        proc = run_script(name, "--local", *args, env=env, cwd=tmp_path, timeout=timeout)
        assert proc.returncode == 0, explain(proc)
        print(f"{name} --local: {time.monotonic() - start:.1f} s")
        return proc

    proc = step("train", "--data", str(data), "--quiet", *hps)
    state = json.loads((work / "state.json").read_text())
    assert Path(state["local_model"]).is_file() and "test_acc" in proc.stdout
    assert local_containers(work) == []  # the finished job's container is removed

    step("deploy", "--detach", timeout=300)
    endpoint = json.loads((work / "state.json").read_text())["local_endpoint"]
    try:
        assert requests.get(f"http://127.0.0.1:{endpoint['port']}/ping", timeout=5).ok
        assert len(local_containers(work)) == 1  # what cleanup must remove, found by label
        proc = step("invoke", str(data / "test"), "--top-k", "3",
                    "--json", str(tmp_path / "answers.json"), timeout=120)
        answers = json.loads((tmp_path / "answers.json").read_text())["results"]
        assert len(answers) == 6 and {a["client"] for a in answers} == {"http"}
        assert {a["content_type"] for a in answers} == {"image/jpeg", "image/png"}
        for a in answers:
            assert len(a["predictions"]) == 3
            assert {p["label"] for p in a["predictions"]} == set(LABELS)
    finally:
        step("cleanup", timeout=240)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{endpoint['port']}/ping", timeout=5)
    assert not cleanup_script.alive(endpoint["pid"])
    assert local_containers(work) == []
    assert json.loads((work / "state.json").read_text())["local_endpoint"] is None


# --- multi-model endpoints ------------------------------------------------------------

def pack(model_dir: Path, path: Path) -> Path:
    """A training job's /opt/ml/model as SageMaker packs it: model.tar.gz."""
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return path


def labels_of(answers_file: Path) -> set[str]:
    results = json.loads(answers_file.read_text())["results"]
    return {p["label"] for a in results for p in a["predictions"]}


def test_local_multi_model_deploy_invoke_add_remove_cleanup(serve_image, trained_model,
                                                            second_model, tmp_path):
    """Two trained models in one local container, each answering with its own labels;
    one more added to the running endpoint, a broken one refused, one removed."""
    work = tmp_path / "work"
    three = pack(trained_model.root / "model", tmp_path / "three.tar.gz")
    two = pack(second_model.root / "model", tmp_path / "two.tar.gz")
    photos = make_dataset(tmp_path / "photos", {"test": 1}, seed=3) / "test"
    env = script_env(None, work, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                     SERVE_IMAGE=serve_image)

    def step(name, *args, ok=True, timeout=300):
        proc = run_script(name, "--local", *args, env=env, cwd=tmp_path, timeout=timeout)
        assert (proc.returncode == 0) == ok, explain(proc)
        return proc

    step("deploy", "--multi-model", "--detach", "--add-model", f"three={three}",
         "--add-model", f"two={two}")
    endpoint = json.loads((work / "state.json").read_text())["local_endpoint"]
    try:
        assert endpoint["multi_model"] is True
        for name, labels in (("three", LABELS), ("two", SECOND_LABELS)):
            out = tmp_path / f"{name}.json"
            step("invoke", str(photos), "--target-model", name, "--top-k", "5",
                 "--json", str(out))
            assert labels_of(out) == set(labels)
        missing = step("invoke", str(photos), ok=False)
        assert "pass --target-model NAME" in missing.stderr

        step("deploy", "--add-model", f"spare={three}")
        step("invoke", str(photos), "--target-model", "spare.tar.gz", "--json",
             str(tmp_path / "spare.json"))
        assert labels_of(tmp_path / "spare.json") <= set(LABELS)
        damaged = tmp_path / "damaged.tar.gz"
        with tarfile.open(damaged, "w:gz") as tar:
            data = b'{"labels": ['
            info = tarfile.TarInfo("model.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        refused = step("deploy", "--add-model", f"damaged={damaged}", ok=False)
        assert "model damaged was not loaded (400)" in refused.stderr
        assert "is not valid JSON" in refused.stderr
        models = Path(endpoint["model"])
        assert sorted(p.name for p in models.iterdir()) == ["spare", "three", "two"]

        step("cleanup", "--remove-model", "two")
        gone = step("invoke", str(photos), "--target-model", "two", ok=False)
        assert "HTTP 404" in gone.stderr and "model two is not loaded" in gone.stderr
        assert not (models / "two").exists()
    finally:
        step("cleanup", timeout=240)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{endpoint['port']}/ping", timeout=5)
    assert local_containers(work) == []


class MultiModelFrontDoor(RuntimeFrontDoor):
    """Stands in for SageMaker's runtime in front of a multi-model endpoint: an
    invocation with X-Amzn-SageMaker-Target-Model T has the archive T under the
    endpoint's prefix (read from moto: endpoint -> config -> model -> ModelDataUrl)
    unpacked into /opt/ml/models/KEY/model of a real container on first use, where
    KEY is an opaque id as SageMaker makes up, loaded with POST /models, then invoked
    with POST /models/KEY/invoke."""

    FORWARDED = (*RuntimeFrontDoor.FORWARDED, "X-Amzn-SageMaker-Target-Model")

    def __init__(self, backend: str, models: Path, moto_url: str):
        self.models = models
        self.sm, self.s3 = (boto3.client(
            service, endpoint_url=moto_url, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing")
            for service in ("sagemaker", "s3"))
        self.lock = threading.Lock()
        super().__init__(backend)

    def forward(self, endpoint: str, headers: dict, body: bytes) -> requests.Response:
        key = self.ensure_loaded(endpoint, headers["X-Amzn-SageMaker-Target-Model"])
        return requests.post(f"{self.backend}/models/{key}/invoke", data=body,
                             headers=headers, timeout=60)

    def prefix_of(self, endpoint: str) -> str:
        config = self.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        [variant] = self.sm.describe_endpoint_config(EndpointConfigName=config)[
            "ProductionVariants"]
        container = self.sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
        assert container["Mode"] == "MultiModel"
        return container["ModelDataUrl"]

    def ensure_loaded(self, endpoint: str, target: str) -> str:
        key = hashlib.sha256(f"{endpoint}/{target}".encode()).hexdigest()[:32]
        with self.lock:
            if requests.get(f"{self.backend}/models/{key}", timeout=10).status_code == 200:
                return key
            bucket, _, prefix = self.prefix_of(endpoint).removeprefix("s3://").partition("/")
            archive = self.s3.get_object(Bucket=bucket, Key=prefix + target)["Body"].read()
            folder = self.models / key / "model"
            folder.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(folder, filter="data")
            for path in [folder.parent, folder, *folder.iterdir()]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            answer = requests.post(f"{self.backend}/models", timeout=120, json={
                "model_name": key, "url": f"/opt/ml/models/{key}/model"})
            assert answer.status_code == 200, answer.text
            return key


def test_deploy_multi_model_then_invoke_each_model_through_a_sagemaker_stand_in(
        serve_image, trained_model, second_model, moto_server, tmp_path):
    """deploy.py --multi-model lays out the archives, invoke.py --target-model names
    them; a stand-in for SageMaker's runtime (moto's S3 and SageMaker API, a real
    multi-model container) loads each on its first invocation, as SageMaker does."""
    moto_server.reset()
    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name=REGION,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    put_images(boto3.client("ecr", endpoint_url=moto_server.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing"),
               ["dogbreed-serve"], ["latest"])
    work = tmp_path / "work"
    env = script_env(moto_server.url, work)
    three = pack(trained_model.root / "model", tmp_path / "three.tar.gz")
    two = pack(second_model.root / "model", tmp_path / "two.tar.gz")
    proc = run_script("deploy", "--multi-model", "--endpoint-name", "dogbreed-mme", "--poll",
                      "1", "--add-model", f"shelter-three={three}", "--add-model",
                      f"shelter-two={two}", env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)

    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o755)
    server = Server(serve_image, models, "SAGEMAKER_MULTI_MODEL=true", mount="/opt/ml/models")
    door = None
    try:
        server.wait_ready()
        door = MultiModelFrontDoor(server.url, models, moto_server.url)
        photos = make_dataset(tmp_path / "photos", {"test": 1}, seed=5) / "test"
        invoke_env = {**env, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": door.url}
        for name, labels in (("shelter-three", LABELS), ("shelter-two", SECOND_LABELS)):
            out = tmp_path / f"{name}.json"
            proc = run_script("invoke", str(photos), "--target-model", name, "--via", "both",
                              "--top-k", "5", "--json", str(out), env=invoke_env,
                              cwd=tmp_path)
            assert proc.returncode == 0, explain(proc)
            assert labels_of(out) == set(labels)
        targets = [r["headers"]["x-amzn-sagemaker-target-model"] for r in door.requests]
        assert sorted(set(targets)) == ["shelter-three.tar.gz", "shelter-two.tar.gz"]
        assert len(targets) == 2 * 2 * 3  # two models, two clients, three photos
        assert len(requests.get(f"{server.url}/models", timeout=10).json()["models"]) == 2
    finally:
        if door:
            door.close()
        server.stop()
