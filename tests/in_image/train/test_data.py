import io

import numpy as np
import pytest
import torch
from PIL import Image

from dogbreed_train import batches, data
from dogbreed_train.errors import UserError
from synthetic import CLASSES, make_dataset

CPU = batches.Feed(torch.device("cpu"))  # the cpu data path, no loader workers


def test_label_names():
    """Training's labels are the contract's label_name of each class folder."""
    from dogbreed_contract.layout import label_name

    assert label_name("001.Affenpinscher") == "Affenpinscher"
    assert label_name("120.Pembroke_welsh_corgi") == "Pembroke_welsh_corgi"
    assert label_name("cats") == "cats"


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
    from dogbreed_contract.preprocess import Spec

    spec = Spec.for_size(32)
    source = batches.make_batches(train, spec, 64, CPU, training=False)
    x, y, bad, _ = next(iter(source))
    assert len(y) == len(train.samples) - 1 and x.shape[1:] == (3, 32, 32)
    assert [b.name for b in bad] == [f"train/{CLASSES[1]}/cut.jpg"]
    tracker = data.BadImages("skip")
    tracker.add(bad)
    tracker.add(bad)  # the next epoch meets it again: still one image
    assert tracker.seen == {f"train/{CLASSES[1]}/cut.jpg"}
    with pytest.raises(UserError, match=f"train/{CLASSES[1]}/cut.jpg"):
        data.BadImages("fail").add(bad)


# ---- folders and files that are not classes or images

def test_mac_and_hidden_folders_are_not_classes(sm_base):
    root = make_dataset(sm_base / "input" / "data", {"train": 3, "valid": 1})
    for junk in (root / "train" / "__MACOSX" / CLASSES[0], root / "train" / ".Trashes",
                 root / "valid" / "__MACOSX"):
        junk.mkdir(parents=True)
        (junk / "._000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    # Hidden files inside a class folder are not images either, even with bad-images=fail.
    (root / "train" / CLASSES[1] / "._000.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / "train" / CLASSES[1] / ".DS_Store").write_bytes(b"Bud1")
    classes, train, valid, _ = data.discover(0.2, 0, "fail")
    assert classes == CLASSES
    assert (len(train.samples), len(valid.samples)) == (9, 3)


def test_empty_train_class_folder_is_refused_by_name(sm_base):
    root = make_dataset(sm_base / "input" / "data", {"train": 3})
    (root / "train" / "004.Empty").mkdir()
    (root / "train" / "005.Only_junk").mkdir()
    (root / "train" / "005.Only_junk" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError) as info:
        data.discover(0.2, 0, "skip")
    assert "class folder(s) 004.Empty, 005.Only_junk have no readable" in str(info.value)


def test_a_train_class_whose_images_are_all_unreadable_is_refused(sm_base):
    root = make_dataset(sm_base / "input" / "data", {"train": 3})
    (root / "train" / "004.Broken").mkdir()
    (root / "train" / "004.Broken" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="004.Broken have no readable"):
        data.discover(0.2, 0, "skip")


def test_an_empty_valid_class_folder_is_allowed(sm_base):
    root = make_dataset(sm_base / "input" / "data", {"train": 3, "valid": 1})
    for f in (root / "valid" / CLASSES[2]).iterdir():
        f.unlink()
    _, _, valid, _ = data.discover(0.2, 0, "skip")
    assert sorted({label for _, label in valid.samples}) == [0, 1]


def test_folders_with_the_same_label_are_refused_by_name(sm_base):
    make_dataset(sm_base / "input" / "data", {"train": 2},
                 classes=["001.Red_circle", "002.Red_circle", "003.Blue", "Blue"])
    with pytest.raises(UserError) as info:
        data.discover(0.2, 0, "skip")
    message = str(info.value)
    assert "001.Red_circle and 002.Red_circle; 003.Blue and Blue give the same label" in message


def test_other_image_formats_are_counted_and_reported(sm_base, caplog):
    root = make_dataset(sm_base / "input" / "data", {"train": 3})
    img = Image.new("RGB", (40, 40), (200, 10, 10))
    folder = root / "train" / CLASSES[0]
    for name, fmt in (("a.webp", "WEBP"), ("b.bmp", "BMP"), ("c.gif", "GIF"),
                      ("d.tif", "TIFF"), ("e.tiff", "TIFF")):
        img.save(folder / name, fmt)
    with caplog.at_level("WARNING"):
        _, train, valid, _ = data.discover(0.2, 0, "fail")
    assert len(train.samples) + len(valid.samples) == 9  # read: the JPEGs and PNGs only
    assert ("train: 5 file(s) not read, as they are not .jpg/.jpeg/.png "
            "(1 .bmp, 1 .gif, 1 .tif, 1 .tiff, 1 .webp; e.g. 001.Red_stripes/a.webp)"
            in caplog.text)


def test_a_channel_of_other_formats_only_says_so(sm_base):
    train = sm_base / "input" / "data" / "train"
    for c in CLASSES:
        (train / c).mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(train / c / "x.webp", "WEBP")
    with pytest.raises(UserError, match=r"no readable .*; 3 file\(s\) not read.*\(3 \.webp"):
        data.discover(0.2, 0, "skip")


# ---- training batches (BatchNorm cannot train on one image)

@pytest.mark.parametrize("batch_size", [1, 2, 3, 8])
def test_training_batches_never_end_with_a_single_image(batch_size):
    from torch.utils.data import SequentialSampler

    for n in range(2, 42):
        training = batches.TrainingBatches(SequentialSampler(range(n)), batch_size)
        sizes = [len(b) for b in training]
        assert sorted(i for b in training for i in b) == list(range(n))  # each once
        assert len(training) == len(sizes)
        if batch_size > 1:
            assert min(sizes) >= 2, (n, sizes)
            assert max(sizes) <= batch_size + 1


def test_training_loader_leaves_out_a_lone_decodable_image(sm_base):
    from dogbreed_contract.preprocess import Spec

    root = make_dataset(sm_base / "input" / "data", {"train": 1})
    broken = root / "train" / CLASSES[0] / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
    split = data.Split("train", [(root / "train" / CLASSES[1] / "000.jpg", 1), (broken, 0)])
    spec = Spec.for_size(32)
    training = list(batches.make_batches(split, spec, 2, CPU, training=True, augment=False))
    assert len(training) == 1
    x, y, bad, _ = training[0]
    assert len(y) == 0 and [b.name for b in bad] == [f"train/{CLASSES[0]}/broken.jpg"]
    # The evaluation loader keeps it, and so does training with batch-size 1.
    x, y, bad, _ = next(iter(batches.make_batches(split, spec, 2, CPU, training=False)))
    assert len(y) == 1
    one_by_one = batches.make_batches(split, spec, 1, CPU, training=True, augment=False)
    assert [len(y) for _, y, _, _ in one_by_one] == [1, 0]
