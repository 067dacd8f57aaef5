import io

import numpy as np
import pytest
from PIL import Image

from dogbreed_train import data
from dogbreed_train.errors import UserError
from synthetic import CLASSES, make_dataset


def test_label_names():
    assert data.label_name("001.Affenpinscher") == "Affenpinscher"
    assert data.label_name("120.Pembroke_welsh_corgi") == "Pembroke_welsh_corgi"
    assert data.label_name("cats") == "cats"


def test_discover_all_channels(sm_base):
    make_dataset(sm_base / "input" / "data", {"train": 4, "valid": 2, "test": 2})
    classes, train, valid, test = data.discover(0.2, 0, "skip")
    assert classes == CLASSES
    assert (len(train.samples), len(valid.samples), len(test.samples)) == (12, 6, 6)
    assert {label for _, label in train.samples} == {0, 1, 2}


def test_valid_split_is_seeded_and_per_class(sm_base):
    make_dataset(sm_base / "input" / "data", {"train": 10})
    _, train_a, valid_a, test = data.discover(0.2, 7, "skip")
    _, train_b, valid_b, _ = data.discover(0.2, 7, "skip")
    assert test is None
    assert valid_a.samples == valid_b.samples
    assert sorted(label for _, label in valid_a.samples) == [0, 0, 1, 1, 2, 2]
    assert not set(valid_a.samples) & set(train_a.samples)


def test_missing_train_channel(sm_base):
    with pytest.raises(UserError, match="'train' channel is missing"):
        data.discover(0.1, 0, "skip")


def test_train_channel_without_classes(sm_base):
    (sm_base / "input" / "data" / "train").mkdir(parents=True)
    (sm_base / "input" / "data" / "train" / "loose.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="no class folders"):
        data.discover(0.1, 0, "skip")


def test_class_folders_without_images(sm_base):
    for c in CLASSES:
        (sm_base / "input" / "data" / "train" / c).mkdir(parents=True)
    with pytest.raises(UserError, match="no readable"):
        data.discover(0.1, 0, "skip")


def test_valid_class_unknown_to_train(sm_base):
    root = make_dataset(sm_base / "input" / "data", {"train": 2, "valid": 1})
    (root / "valid" / "999.Stranger").mkdir()
    with pytest.raises(UserError, match="999.Stranger"):
        data.discover(0.1, 0, "skip")


def test_bad_images_skip_or_fail(sm_base):
    root = make_dataset(sm_base / "input" / "data", {"train": 3})
    (root / "train" / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg at all")
    _, train, valid, _ = data.discover(0.2, 0, "skip")
    assert len(train.skipped) == 1 and "broken.jpg" in train.skipped[0]
    assert len(train.samples) + len(valid.samples) == 9
    with pytest.raises(UserError, match="broken.jpg"):
        data.discover(0.2, 0, "fail")


def test_truncated_image_is_dropped_at_decode_time(sm_base, tmp_path):
    root = make_dataset(sm_base / "input" / "data", {"train": 3, "valid": 1})
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    blob = buf.getvalue()
    (root / "train" / CLASSES[1] / "cut.jpg").write_bytes(blob[: len(blob) * 2 // 3])
    _, train, valid, _ = data.discover(0.01, 0, "skip")
    from dogbreed_train.preprocess import Spec

    spec = Spec.for_size(32)
    loader = data.loader(train, data.EvalTransform(spec), 64, False, 0, 0)
    x, y, bad = next(iter(loader))
    assert len(y) == len(train.samples) - 1 and x.shape[1:] == (3, 32, 32)
    assert [b.name for b in bad] == [f"train/{CLASSES[1]}/cut.jpg"]
    tracker = data.BadImages("skip")
    tracker.add(bad)
    tracker.add(bad)  # the next epoch meets it again: still one image
    assert tracker.seen == {f"train/{CLASSES[1]}/cut.jpg"}
    with pytest.raises(UserError, match=f"train/{CLASSES[1]}/cut.jpg"):
        data.BadImages("fail").add(bad)
