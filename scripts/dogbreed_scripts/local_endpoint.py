"""A local endpoint: the serving image in one Docker container, driven by the Docker SDK.

SageMaker runs a serving image as `docker run IMAGE serve` with the unpacked model
in /opt/ml/model and sends requests to port 8080 (/ping, /invocations); this does
the same on a free loopback port. SDK v3's ModelBuilder local mode calls STS and
S3 before it starts a container, so it cannot serve without an AWS account; the
Docker SDK (docker-py) can, and it is already a dependency of SDK v3.

Containers carry the label dogbreed.local-root=ROOT so that cleanup removes this
project's containers under ROOT and nothing else.
"""

from __future__ import annotations

import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

LABEL = "dogbreed.local-root"


class EndpointError(Exception):
    """The container did not come up; the message has the end of its log."""


@dataclass
class LocalEndpoint:
    name: str
    container_id: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def invoke(self, body: bytes, content_type: str, top_k: int | None = None,
               timeout: float = 60) -> requests.Response:
        """One raw-bytes request, with the headers the SageMaker runtime forwards."""
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if top_k:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = f"top_k={top_k}"
        return requests.post(f"{self.url}/invocations", data=body, headers=headers,
                             timeout=timeout)

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


def start(image: str, tarball: Path, root: Path, name: str, timeout: float = 600,
          environment: dict[str, str] | None = None) -> LocalEndpoint:
    """Unpack the model under root/name, start the container, and return once /ping
    answers 200 (as SageMaker's own health check does)."""
    import docker

    model_dir = unpack(tarball, root.resolve() / name / "model")
    client = docker.from_env()
    try:
        container = client.containers.create(
            image, "serve", name=name, labels={LABEL: str(root.resolve())},
            volumes={str(model_dir): {"bind": "/opt/ml/model", "mode": "ro"}},
            ports={"8080/tcp": ("127.0.0.1", None)}, environment=environment or {})
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
