"""The local endpoint (dogbreed_scripts/local_endpoint.py: the serving image through the Docker
SDK) as SageMaker hosting runs it: model.tar.gz unpacked into /opt/ml/model, `serve`,
/ping, then raw image bytes to /invocations."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import docker
from sdk import local_endpoint


@pytest.fixture(scope="module")
def tarball(trained_model, tmp_path_factory):
    """The training job's /opt/ml/model packed as SageMaker packs it."""
    path = tmp_path_factory.mktemp("model") / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted((trained_model.root / "model").iterdir()):
            tar.add(item, arcname=item.name)
    return path


def test_start_invoke_raw_jpeg_and_png_then_stop(serve_image, tarball, tmp_path):
    root = tmp_path / "containers"
    endpoint = local_endpoint.start(serve_image, tarball, root, f"dogbreed-le-{tmp_path.name}")
    try:
        assert endpoint.url.startswith("http://127.0.0.1:")
        img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 80, 3),
                                                                 dtype=np.uint8))
        for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
            buf = io.BytesIO()
            img.save(buf, fmt)
            answer = endpoint.invoke(buf.getvalue(), content_type, top_k=2)
            assert answer.status_code == 200, answer.text
            top = answer.json()["predictions"]
            assert len(top) == 2 and top[0]["label"] in {"Red_stripes", "Green_bars",
                                                          "Blue_checks"}
        bad = endpoint.invoke(b"not an image", "image/jpeg")
        assert 400 <= bad.status_code < 500 and "not a JPEG or PNG" in bad.json()["error"]
    finally:
        endpoint.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{endpoint.url}/ping", timeout=5)
    assert local_endpoint.remove_all(root) == 0  # stop() removed the container


def test_a_container_that_exits_says_why(serve_image, tmp_path):
    """A model.tar.gz without a model: the server exits; the error has its last lines."""
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(local_endpoint.EndpointError, match="exited|did not answer"):
        local_endpoint.start(serve_image, empty, tmp_path / "c", f"dogbreed-le-x-{tmp_path.name}",
                             timeout=120)
    assert local_endpoint.remove_all(tmp_path / "c") == 0


# A server that never answers /ping (only _ready is replaced: the container is real), so
# that the signal lands while start() waits, whatever this machine's speed.
STARTING = """
import pathlib, sys
from dogbreed_scripts import local_endpoint, settings
local_endpoint._ready = lambda port: False
image, tarball, root, name = sys.argv[1:]
settings.run(lambda argv: local_endpoint.start(image, pathlib.Path(tarball),
                                               pathlib.Path(root), name))
"""


def test_sigterm_while_the_endpoint_starts_removes_its_container(serve_image, tarball,
                                                                 tmp_path):
    """deploy.py --local and demo.py stopped by `timeout`, systemd or a CI runner."""
    root = tmp_path / "containers"
    label = f"label={local_endpoint.LABEL}={root.resolve()}"
    proc = subprocess.Popen([sys.executable, "-c", STARTING, serve_image, str(tarball),
                             str(root), f"dogbreed-le-term-{tmp_path.name}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not docker("ps", "-q", "--filter", label, "--filter", "status=running").stdout:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated (SIGTERM)" in out, out
    assert docker("ps", "-aq", "--filter", label).stdout.split() == []
