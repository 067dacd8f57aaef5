"""The scripts with the real images: invoke against the serving container, and the local
mode path (train, deploy, invoke with raw bytes, cleanup) end to end, no AWS account.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from aws_stand_in import explain, run_script, script_env
from containers import Server

from conftest import TINY_HPS, docker
from dogbreed_scripts import cleanup as cleanup_script
from synthetic import LABELS, make_dataset


class RuntimeFrontDoor:
    """Stands in for SageMaker's runtime front end: POST /endpoints/NAME/invocations is
    passed on to a real serving container's /invocations, and recorded."""

    def __init__(self, backend: str):
        self.requests: list[dict] = []
        door = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                door.requests.append({"path": self.path, "body": body,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                forward = {k: self.headers[k] for k in (
                    "Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
                    if self.headers.get(k)}
                name = self.path.split("/")[2] if self.path.startswith("/endpoints/") else ""
                if not name or not self.path.endswith("/invocations"):
                    self.send_error(404)
                    return
                answer = requests.post(f"{backend}/invocations", data=body, headers=forward,
                                       timeout=60)
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
