"""SDK v2 local mode as the real client of the serving image: deploy, predict raw bytes."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image

from sdk import ROLE, local_session, opt_out_of_telemetry


def test_model_deploy_and_predict_raw_bytes(serve_image, trained_model, tmp_path):
    opt_out_of_telemetry(tmp_path)
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted((trained_model.root / "model").iterdir()):
            tar.add(path, arcname=path.name)
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
