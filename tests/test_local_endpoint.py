"""The local endpoint (dogbreed_scripts/local_endpoint.py: the serving image through the Docker
SDK) as SageMaker hosting runs it: model.tar.gz unpacked into /opt/ml/model, `serve`,
/ping, then raw image bytes to /invocations."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import requests
from PIL import Image

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
