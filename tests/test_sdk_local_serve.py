"""SDK v2 local mode as the real client of the serving image: deploy, predict raw bytes."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from sdk import ROLE, local_session, opt_out_of_telemetry


@pytest.fixture(scope="module")
def tarball(trained_model, tmp_path_factory):
    """The training job's /opt/ml/model packed as SageMaker packs it."""
    path = tmp_path_factory.mktemp("model") / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted((trained_model.root / "model").iterdir()):
            tar.add(item, arcname=item.name)
    return path


def test_model_deploy_and_predict_raw_bytes(serve_image, tarball, tmp_path):
    opt_out_of_telemetry(tmp_path)
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    session = local_session(tmp_path / "containers")
    model = Model(image_uri=serve_image, model_data=f"file://{tarball}", role=ROLE,
                  sagemaker_session=session, predictor_cls=Predictor)
    predictor = model.deploy(initial_instance_count=1, instance_type="local")
    assert predictor is not None
    try:
        img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 80, 3),
                                                                 dtype=np.uint8))
        for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
            buf = io.BytesIO()
            img.save(buf, fmt)
            predictor.serializer = IdentitySerializer(content_type=content_type)
            predictor.deserializer = JSONDeserializer()
            answer = predictor.predict(buf.getvalue())
            top = answer["predictions"]
            assert len(top) == 3 and top[0]["label"] in {"Red_stripes", "Green_bars",
                                                          "Blue_checks"}
    finally:
        predictor.delete_endpoint()


def test_batch_transform_one_image_per_record(serve_image, tarball, tmp_path):
    """SDK local batch transform over a folder of images, one image per record."""
    opt_out_of_telemetry(tmp_path)
    import json

    from sagemaker.model import Model

    inputs = tmp_path / "images"
    inputs.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(
            inputs / f"photo{i}.jpg")
    model = Model(image_uri=serve_image, model_data=f"file://{tarball}", role=ROLE,
                  sagemaker_session=local_session(tmp_path / "containers"))
    transformer = model.transformer(instance_count=1, instance_type="local",
                                    strategy="SingleRecord",
                                    output_path=f"file://{tmp_path / 'out'}",
                                    accept="application/json")
    transformer.transform(f"file://{inputs}", content_type="image/jpeg", wait=True,
                          logs=False)
    outputs = sorted((tmp_path / "out").glob("*.out"))
    assert [p.name for p in outputs] == ["photo0.jpg.out", "photo1.jpg.out", "photo2.jpg.out"]
    for path in outputs:
        assert len(json.loads(path.read_text())["predictions"]) == 3
