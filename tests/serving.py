"""Run the serving container on a free loopback port and talk to it over real HTTP."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import requests

from conftest import docker


class Server:
    def __init__(self, image: str, model_dir: Path, *env: str):
        self.name = f"dogbreed-serve-test-{uuid.uuid4().hex[:8]}"
        args = ["run", "-d", "--name", self.name, "-p", "127.0.0.1:0:8080",
                "-v", f"{model_dir}:/opt/ml/model:ro"]
        for item in env:
            args += ["-e", item]
        self.id = docker(*args, image, "serve").stdout.strip()
        port = docker("port", self.id, "8080").stdout.splitlines()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 90) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except requests.ConnectionError:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", self.id).stdout.strip() != "true":
                raise RuntimeError(f"server exited:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"no /ping 200 within {timeout} s:\n{self.logs()[-3000:]}")

    def invoke(self, body: bytes, content_type: str | None = "image/jpeg", **headers):
        if content_type is not None:
            headers["Content-Type"] = content_type
        return requests.post(f"{self.url}/invocations", data=body, headers=headers, timeout=60)

    def logs(self) -> str:
        out = docker("logs", self.id, check=False)
        return out.stdout + out.stderr

    def stop(self) -> None:
        docker("rm", "-f", self.id, check=False)
