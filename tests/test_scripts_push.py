"""push.py against a real registry on loopback, with moto's ECR for repositories and login.

The registry is Debian's docker-registry (Distribution 2.8), installed on demand by
docker/harness/ensure-registry.sh and run with its own config on a free port. The
pushed image is a tiny one made here with `docker import`, not the 6 GB training
image; the code path is the same.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import tarfile
import time
import uuid

import boto3
import pytest
import requests
from aws_stand_in import (
    ACCOUNT,
    BUCKET,
    REGION,
    ROOT,
    explain,
    run_script,
    script_env,
)

from conftest import DOCKER, docker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """host:port of a registry server that this fixture starts and stops."""
    found = subprocess.run([str(ROOT / "docker" / "harness" / "ensure-registry.sh")],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    binary = found.stdout.strip().splitlines()[-1]
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root / 'storage'}
http:
  addr: 127.0.0.1:{port}
""")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "registry.log", "wb"))
    host = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://{host}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (root / "registry.log").read_text()
            time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def tiny_image():
    """A few-KB image of our own, removed afterwards with every tag push gave it."""
    name = f"dogbreed-pushtest:{uuid.uuid4().hex[:10]}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"push test {name}\n".encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run([DOCKER, "import", "-", name], input=buf.getvalue(), check=True,
                   capture_output=True)
    yield name
    image_id = docker("image", "inspect", "-f", "{{.Id}}", name, check=False).stdout.strip()
    if image_id:
        tags = json.loads(docker("image", "inspect", "-f", "{{json .RepoTags}}",
                                 image_id).stdout)
        docker("rmi", *tags, check=False)


def test_push_creates_repository_logs_in_and_pushes(registry, moto_server, tiny_image,
                                                    tmp_path):
    moto_server.reset()
    repo, tag = "dogbreed-serve-pushtest", tiny_image.split(":")[1]
    env = script_env(moto_server.url, tmp_path / "work", DOCKER=DOCKER,
                     DOCKER_CONFIG=str(tmp_path / "docker-config"))
    args = ["--only", "serve", "--no-build", "--local-serve-image", tiny_image,
            "--registry", registry, "--serve-repository", repo, "--tag", tag]
    proc = run_script("push", *args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    uri = f"{registry}/{repo}:{tag}"
    assert proc.stdout.rstrip().endswith(f"serve  {uri}")
    assert "Pushed" in proc.stdout or "digest:" in proc.stdout  # docker's own progress

    # The image is in the registry, with the digest the local engine recorded.
    tags = requests.get(f"http://{registry}/v2/{repo}/tags/list", timeout=5).json()
    assert tags == {"name": repo, "tags": [tag]}
    head = requests.head(f"http://{registry}/v2/{repo}/manifests/{tag}", timeout=5, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    digests = json.loads(docker("image", "inspect", "-f", "{{json .RepoDigests}}",
                                tiny_image).stdout)
    assert f"{registry}/{repo}@{head.headers['Docker-Content-Digest']}" in digests

    # ECR: the repository was created, and docker logged in with the ECR token.
    [created] = moto_server.calls("CreateRepository")
    assert created["repositoryName"] == repo
    assert created["imageScanningConfiguration"] == {"scanOnPush": True}
    assert len(moto_server.calls("GetAuthorizationToken")) == 1
    auth = json.loads((tmp_path / "docker-config" / "config.json").read_text())["auths"]
    assert base64.b64decode(auth[registry]["auth"]).decode() == f"AWS:{ACCOUNT}-auth-token"

    # A second push reuses the repository.
    moto_server.requests.clear()
    proc = run_script("push", *args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert f"repository {repo} exists" in proc.stdout
    assert not moto_server.calls("CreateRepository")

    # deploy serves the image push.py pushed (recorded in the state file)
    proc = run_script("deploy", "--model-data", "s3://b/model.tar.gz", "--endpoint-name",
                      "dogbreed-pushed", "--poll", "1", env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    [model] = moto_server.calls("CreateModel")
    assert model["PrimaryContainer"]["Image"] == uri


def test_push_without_the_local_image_says_so(moto_server, tmp_path):
    env = script_env(moto_server.url, tmp_path / "work", DOCKER=DOCKER)
    proc = run_script("push", "--only", "serve", "--no-build", "--local-serve-image",
                      f"dogbreed-missing:{uuid.uuid4().hex[:8]}", env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "does not exist (run `make images`)" in proc.stderr


def test_push_to_another_registry_without_ecr(registry, moto_server, tiny_image, tmp_path):
    moto_server.reset()
    env = script_env(moto_server.url, tmp_path / "work", DOCKER=DOCKER,
                     DOCKER_CONFIG=str(tmp_path / "docker-config"))
    proc = run_script("push", "--no-ecr", "--only", "train", "--no-build",
                      "--local-train-image", tiny_image, "--train-repository", "team/trainer",
                      "--tag", "no-ecr", env={**env, "DOGBREED_REGISTRY": registry},
                      cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert requests.get(f"http://{registry}/v2/team/trainer/tags/list",
                        timeout=5).json()["tags"] == ["no-ecr"]
    assert moto_server.requests == []  # no ECR, no STS
    assert json.loads((tmp_path / "work" / "state.json").read_text())["train_image_uri"] == \
        f"{registry}/team/trainer:no-ecr"

    # The next steps take the pushed URI from the state file, not from the defaults.
    boto3.client("s3", endpoint_url=moto_server.url, region_name=REGION,
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).create_bucket(Bucket=BUCKET)
    proc = run_script("train", "--detach", "--job-name", "dogbreed-train-pushed", env=env,
                      cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    [job] = moto_server.calls("CreateTrainingJob")
    assert job["AlgorithmSpecification"]["TrainingImage"] == f"{registry}/team/trainer:no-ecr"

    # Another tag, and an image push.py did not push: still that registry, not ECR.
    assert json.loads((tmp_path / "work" / "state.json").read_text())["registry"] == registry
    proc = run_script("train", "--detach", "--job-name", "dogbreed-train-other-tag",
                      "--tag", "v9", env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    job = moto_server.calls("CreateTrainingJob")[-1]
    assert job["AlgorithmSpecification"]["TrainingImage"] == f"{registry}/dogbreed-train:v9"
    proc = run_script("deploy", "--model-data", "s3://b/model.tar.gz", "--endpoint-name",
                      "dogbreed-other-registry", "--poll", "1", env=env, cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    [model] = moto_server.calls("CreateModel")
    assert model["PrimaryContainer"]["Image"] == f"{registry}/dogbreed-serve:latest"
