"""A local endpoint: the serving image in one Docker container, driven by the Docker SDK.

SageMaker runs a serving image as `docker run IMAGE serve` with the unpacked model
in /opt/ml/model and sends requests to port 8080 (/ping, /invocations); this does
the same on a free loopback port. SDK v3's ModelBuilder local mode calls STS and
S3 before it starts a container, so it cannot serve without an AWS account; the
Docker SDK (docker-py) can, and it is already a dependency of SDK v3.

A multi-model endpoint (``start_multi_model``) is the same image with
SAGEMAKER_MULTI_MODEL=true and a folder of models at /opt/ml/models; where SageMaker
would unpack an archive and load it on its first invocation, ``load_model`` unpacks it
into that folder and loads it with the same request (POST /models), and ``invoke``
names the model as SageMaker does (POST /models/NAME/invoke).

Containers carry the label dogbreed.local-root=ROOT so that cleanup removes this
project's containers under ROOT and nothing else.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

LABEL = "dogbreed.local-root"
MODELS_MOUNT = "/opt/ml/models"  # where SageMaker unpacks a multi-model endpoint's models
ARCHIVE_SUFFIX = ".tar.gz"
# A model's name on a multi-model endpoint: its archive is NAME.tar.gz under the
# endpoint's S3 prefix (TargetModel), and locally its folder and the container's key.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def model_name(target: str) -> str:
    """NAME from NAME or NAME.tar.gz (the TargetModel of an invocation)."""
    return target.removesuffix(ARCHIVE_SUFFIX)


class EndpointError(Exception):
    """The container did not come up; the message has the end of its log."""


@dataclass
class LocalEndpoint:
    name: str
    container_id: str
    port: int
    models: Path | None = None  # multi-model: the folder mounted at /opt/ml/models

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def invoke(self, body: bytes, content_type: str, top_k: int | None = None,
               timeout: float = 60, target_model: str | None = None) -> requests.Response:
        return invoke(self.url, body, content_type, top_k, timeout, target_model)

    def stop(self) -> None:
        import docker

        client = docker.from_env()
        try:
            client.containers.get(self.container_id).remove(force=True)
        except docker.errors.NotFound:
            pass
        finally:
            client.close()


def unpack(tarball: Path, model_dir: Path) -> Path:
    """model.tar.gz -> model_dir, refusing members that would land outside it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(model_dir, filter="data")
    return model_dir


def invoke(url: str, body: bytes, content_type: str, top_k: int | None = None,
           timeout: float = 60, target_model: str | None = None) -> requests.Response:
    """One raw-bytes request, with the headers the SageMaker runtime forwards; to
    /invocations, or to the model target_model (NAME or NAME.tar.gz) of a
    multi-model endpoint."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if top_k:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = f"top_k={top_k}"
    path = "/invocations"
    if target_model:
        path = f"/models/{model_name(target_model)}/invoke"
        headers["X-Amzn-SageMaker-Target-Model"] = target_model
    return requests.post(f"{url}{path}", data=body, headers=headers, timeout=timeout)


def start(image: str, tarball: Path, root: Path, name: str, timeout: float = 600,
          environment: dict[str, str] | None = None) -> LocalEndpoint:
    """Unpack the model under root/name, start the container, and return once /ping
    answers 200 (as SageMaker's own health check does)."""
    model_dir = unpack(tarball, root.resolve() / name / "model")
    return _run(image, root, name, model_dir, "/opt/ml/model", environment or {}, timeout)


def start_multi_model(image: str, root: Path, name: str, timeout: float = 600,
                      environment: dict[str, str] | None = None) -> LocalEndpoint:
    """A multi-model endpoint with no model loaded yet (load_model adds them): its
    models live in root/name/models."""
    models = root.resolve() / name / "models"
    models.mkdir(parents=True, exist_ok=True)
    models.chmod(0o755)  # the container's service user reads it
    endpoint = _run(image, root, name, models, MODELS_MOUNT,
                    {"SAGEMAKER_MULTI_MODEL": "true", **(environment or {})}, timeout)
    endpoint.models = models
    return endpoint


def load_model(url: str, models: Path, name: str, tarball: Path,
               timeout: float = 600) -> dict:
    """Unpack tarball into models/NAME/model and load it as SageMaker does; the
    container's answer. A model the container refuses is removed again
    (EndpointError with the container's reason)."""
    if requests.get(f"{url}/models/{name}", timeout=30).status_code == 200:
        raise EndpointError(f"model {name} is already loaded: remove it first with "
                            f"scripts/cleanup.py --local --remove-model {name}")
    folder = models / name
    shutil.rmtree(folder, ignore_errors=True)
    unpack(tarball, folder / "model")
    for path in [folder, *folder.rglob("*")]:  # readable to the container's service user
        path.chmod(0o755 if path.is_dir() else 0o644)
    answer = requests.post(f"{url}/models", timeout=timeout, json={
        "model_name": name, "url": f"{MODELS_MOUNT}/{name}/model"})
    if answer.status_code != 200:
        shutil.rmtree(folder, ignore_errors=True)
        raise EndpointError(f"model {name} was not loaded ({answer.status_code}): "
                            f"{_reason(answer)}")
    return answer.json()


def unload_model(url: str, models: Path, name: str) -> None:
    """Unload a model of a multi-model endpoint and remove its folder."""
    answer = requests.delete(f"{url}/models/{name}", timeout=120)
    if answer.status_code not in (200, 404):
        raise EndpointError(f"model {name} was not unloaded ({answer.status_code}): "
                            f"{_reason(answer)}")
    shutil.rmtree(models / name, ignore_errors=True)


def _reason(answer: requests.Response) -> str:
    try:
        return str(answer.json()["error"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:300]


def _run(image: str, root: Path, name: str, mounted: Path, target: str,
         environment: dict[str, str], timeout: float) -> LocalEndpoint:
    import docker

    client = docker.from_env()
    try:
        container = client.containers.create(
            image, "serve", name=name, labels={LABEL: str(root.resolve())},
            volumes={str(mounted): {"bind": target, "mode": "ro"}},
            ports={"8080/tcp": ("127.0.0.1", None)}, environment=environment)
        try:
            container.start()
            return _wait_until_ready(container, name, timeout)
        except BaseException:  # it did not start, did not answer, or Ctrl-C/SIGTERM came
            container.remove(force=True)
            raise
    finally:
        client.close()


def _wait_until_ready(container, name: str, timeout: float) -> LocalEndpoint:
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=5).decode(errors="replace").strip()
            raise EndpointError(f"the serving container exited: {tail}")
        bindings = (container.ports or {}).get("8080/tcp") or []
        port = port or (int(bindings[0]["HostPort"]) if bindings else None)
        if port and _ready(port):
            return LocalEndpoint(name, container.id, port)
        time.sleep(0.5)
    raise EndpointError(f"the serving container did not answer within {timeout:.0f} s")


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def remove_all(root: Path, prefix: bool = False) -> int:
    """Remove every local endpoint container started with root (with prefix: with root
    or a folder under it); returns how many."""
    import docker

    root = str(Path(root).resolve())
    client = docker.from_env()
    try:
        found = [c for c in client.containers.list(all=True, filters={"label": LABEL})
                 if c.labels[LABEL] == root or (prefix and c.labels[LABEL].startswith(root))]
        for container in found:
            container.remove(force=True)
        return len(found)
    finally:
        client.close()
