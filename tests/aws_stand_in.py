"""A moto server on a free loopback port that records every request it is sent.

The scripts run as real subprocesses with AWS_ENDPOINT_URL pointing here, so the
tests can check what they SENT (image URIs, hyperparameters, ranges, rules, ...)
and read back what moto stored. Also: the environment such a subprocess gets.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/DogbreedSageMaker"
BUCKET = "dogbreed-test-bucket"
ECR = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise


@dataclass
class Request:
    method: str
    path: str
    target: str          # X-Amz-Target of JSON APIs, e.g. "SageMaker.CreateTrainingJob"
    body: bytes          # JSON APIs' and the runtime's invocations' bodies, as sent
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case

    @property
    def operation(self) -> str:
        return self.target.rsplit(".", 1)[-1] if self.target else f"{self.method} {self.path}"

    def json(self) -> dict:
        return json.loads(self.body or b"{}")


class RecordingMotoServer(ThreadedMotoServer):
    def __init__(self):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.requests: list[Request] = []

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def recording_app(environ, start_response):
            stream = environ["wsgi.input"]
            length = environ.get("CONTENT_LENGTH")
            body = stream.read(int(length)) if length else (
                stream.read() if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "") else b"")
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if environ["PATH_INFO"].startswith("/moto-api"):
                return app(environ, start_response)
            invocation = environ["PATH_INFO"].endswith("/invocations")
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                       if k.startswith("HTTP_")}
            headers["content-type"] = environ.get("CONTENT_TYPE", "")
            self.requests.append(Request(environ["REQUEST_METHOD"], environ["PATH_INFO"],
                                         target, body if target or invocation else body[:0],
                                         headers))
            if invocation:
                # moto decodes every body as UTF-8 and fails on image bytes: it gets
                # their base64 (it only hashes the body), the record keeps the bytes.
                body = base64.b64encode(body)
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
            return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, recording_app, True,
                                   request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every resource and every recorded request."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset",
                                                      method="POST")).read()
        self.requests.clear()

    def calls(self, operation: str) -> list[dict]:
        """Parsed bodies of every request for a JSON-API operation, in order."""
        return [r.json() for r in self.requests if r.target.endswith("." + operation)]

    def operations(self) -> list[str]:
        return [r.operation for r in self.requests]


def put_images(ecr, repositories: list[str], tags: list[str]) -> None:
    """Images in moto's ECR, so that the scripts' registry check finds them."""
    manifest = json.dumps({"schemaVersion": 2, "mediaType":
                           "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"digest": "sha256:" + "0" * 64, "size": 1,
                                      "mediaType": "application/vnd.docker.container.image.v1+json"},
                           "layers": []})
    for repo in repositories:
        ecr.create_repository(repositoryName=repo)
        for tag in tags:
            ecr.put_image(repositoryName=repo, imageManifest=manifest, imageTag=tag)


def script_env(moto_url: str | None, workdir: Path, **extra: str) -> dict[str, str]:
    """An environment with fake credentials for moto and nothing from the real user."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "DOGBREED_", "SAGEMAKER_ROLE"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"),
               DOGBREED_WORKDIR=str(workdir), DOGBREED_ROLE=ROLE, DOGBREED_BUCKET=BUCKET,
               PYTHONUNBUFFERED="1",
               # SDK v3 checks a ModelTrainer's role with iam:SimulatePrincipalPolicy,
               # which moto does not implement.
               SAGEMAKER_VALIDATE_ROLE="false")
    if moto_url:
        env["AWS_ENDPOINT_URL"] = moto_url
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run_script(name: str, *args: str, env: dict[str, str], cwd: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
