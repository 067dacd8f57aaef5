"""dogbreed_contract on the host: the model card, image types, the channel layout, metric
lines, and preprocess's hooks for serving (formats, an open image, check, strips).

The same package is installed in both images; these tests pin what each side relies on.
"""

from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from images import encode, photo, png_with_size, turned_16_bit_png
from PIL import Image

from dogbreed_contract import (
    LayoutError,
    ModelCardError,
    SchemaVersionError,
    layout,
    media,
    preprocess,
)
from dogbreed_contract import metrics as metric_lines
from dogbreed_contract.errors import DecodeStopped, ImageTooLarge, UnreadableImage
from dogbreed_contract.model_card import FILE, SCHEMA_VERSION, ModelCard
from dogbreed_contract.preprocess import Spec


def card(**changes) -> ModelCard:
    values = dict(labels=["Affenpinscher", "Afghan_hound"], spec=Spec.for_size(64),
                  class_folders=["001.Affenpinscher", "002.Afghan_hound"],
                  architecture="resnet18", hyperparameters={"lr": 0.001},
                  metrics={"test_acc": 0.5}, created_by="test")
    values.update(changes)
    return ModelCard(**values)


def test_model_card_round_trips_through_model_json(tmp_path):
    written = card()
    path = written.save(tmp_path)
    assert path == tmp_path / FILE
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert ModelCard.load(tmp_path) == written
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


@pytest.mark.parametrize("version,says", [
    (2, "has schema version 2, but this image reads model cards of schema version 1"),
    ("1", "has schema version '1', but"),
    (None, "has no schema version, but"),
])
def test_model_card_of_another_schema_version_is_refused(tmp_path, version, says):
    data = card().to_dict()
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    (tmp_path / FILE).write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError, match=re.escape(says)) as info:
        ModelCard.load(tmp_path)
    assert "another release of dogbreed-train" in str(info.value)
    assert isinstance(info.value, ModelCardError)


@pytest.mark.parametrize("text,says", [
    ("{labels: [", "is not valid JSON (line 1, column 2"),
    ("[1, 2]", "holds a JSON list, not an object"),
    (json.dumps({**card().to_dict(), "labels": []}), "labels must be a non-empty list"),
    (json.dumps({k: v for k, v in card().to_dict().items() if k != "preprocess"}),
     "lacks preprocess"),
    (json.dumps({**card().to_dict(), "preprocess": {"image_size": 300, "resize_size": 256,
                                                    "mean": [0, 0, 0], "std": [1, 1, 1]}}),
     "preprocess has impossible values"),
])
def test_broken_model_card_says_what_is_wrong(text, says):
    with pytest.raises(ModelCardError, match=re.escape(says)) as info:
        ModelCard.parse(text, where="model.tar.gz")
    assert str(info.value).startswith("model.tar.gz")
    assert "train again" in str(info.value)


def test_missing_model_card_names_its_path(tmp_path):
    with pytest.raises(ModelCardError, match=re.escape(f"{tmp_path / FILE} is missing")):
        ModelCard.load(tmp_path)


@pytest.mark.parametrize("fmt,kind", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_content_type_comes_from_the_bytes_before_the_suffix(tmp_path, fmt, kind):
    body = encode(photo(32, 24), fmt)
    assert media.sniff(body) == fmt
    assert media.content_type_for(tmp_path / "misnamed.jpg", body[:16]) == kind
    assert media.content_type_for(tmp_path / "x.PNG") == "image/png"
    assert media.content_type_for(tmp_path / "x.gif", b"GIF89a") is None


def test_nginx_pattern_accepts_exactly_the_accepted_types():
    """nginx's map uses PCRE; Python's re reads the same pattern once (?<name> is (?P<name>."""
    pattern = media.nginx_type_pattern()
    assert pattern.startswith("~*")
    regex = re.compile(pattern[2:].replace("(?<type>", "(?P<type>"), re.IGNORECASE)
    for kind in media.ACCEPTED_TYPES:
        for header in (kind, kind.upper(), f" {kind} ; charset=binary"):
            assert regex.match(header).group("type").lower() == kind
    for header in ("text/plain", "image/gif", "image/jpegx", "multipart/form-data",
                   "application/json", ""):
        assert regex.match(header) is None, header


def make_channel(root, classes: dict[str, list[str]]):
    for folder, files in classes.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            (root / folder / name).write_bytes(b"x")
    return root


def test_layout_ignores_hidden_folders_macosx_and_other_suffixes(tmp_path):
    root = make_channel(tmp_path / "train", {
        "001.Red": ["a.jpg", "b.PNG", "notes.txt", ".DS_Store"], "002.Blue": ["c.jpeg"],
        ".git": ["d.jpg"], "__MACOSX": ["e.jpg"], "003.Empty": ["f.gif"]})
    (root / "loose.jpg").write_bytes(b"x")
    assert layout.class_folders(root) == ["001.Red", "002.Blue", "003.Empty"]
    assert [p.name for p in layout.image_files(root / "001.Red")] == ["a.jpg", "b.PNG"]
    images = layout.images_by_class(root, layout.class_folders(root))
    assert layout.empty_classes(images) == ["003.Empty"]
    assert layout.loose_files(root) == ["loose.jpg"]
    assert layout.label_name("001.Red") == "Red" and layout.label_name("Blue") == "Blue"
    assert layout.unknown_classes(["001.Red", "009.Green"], ["001.Red", "002.Blue"]) == [
        "009.Green"]


@pytest.mark.parametrize("classes,says", [
    ([], "has no class folders"),
    (["001.Red"], "has only one class (001.Red)"),
    (["001.Red", "002.Red", "003.Blue"], "001.Red and 002.Red give the same label ('Red')"),
])
def test_train_classes_that_would_make_a_wrong_model_are_refused(classes, says):
    with pytest.raises(LayoutError, match=re.escape(says)):
        layout.check_train_classes(classes)


def logged(message: str, *args, name: str = "dogbreed_train", level: int = logging.INFO,
           exc_info=None) -> str:
    """What the training program prints for one log call (its formatter, its prefix)."""
    record = logging.LogRecord(name, level, __file__, 1, message, args, exc_info)
    return metric_lines.LineFormatter().format(record)


def test_metric_lines_are_read_by_their_own_definitions():
    defs = {d["Name"]: re.compile(d["Regex"]) for d in metric_lines.definitions()}
    line = logged(metric_lines.epoch_line(3, 10, {"loss": 1.25, "acc": 0.5},
                                          {"loss": float("nan"), "acc": 0.625}, 1e-3, 12.3))
    assert defs["train:loss"].search(line).group(1) == "1.2500"
    assert defs["valid:accuracy"].search(line).group(1) == "0.6250"
    assert defs["epoch"].search(line).group(1) == "3"
    assert defs["valid:loss"].search(line) is None  # nan is shown, never parsed
    test = logged(metric_lines.test_line({"loss": 0.75, "acc": 0.875}))
    assert defs["test:accuracy"].search(test).group(1) == "0.8750"


# A name a data supplier chose: a newline, then a whole line in the program's own form.
FORGED_LINE = ("2026-01-01 00:00:00,000 INFO dogbreed_train: METRIC test_loss=0.0001 "
               "test_acc=0.9999")
HOSTILE = [f"002.x\n{FORGED_LINE}", f"x\r{FORGED_LINE}", f"x\u2028{FORGED_LINE}",
           f"x\x85{FORGED_LINE}", "valid_acc=0.9999 test_acc=0.9999.png",
           "002.x\n2026-01-01 00:00:00,000 WARNING dogbreed_train.rules: RULE Overfit "
           "status=1 IssuesFound: forged"]


@pytest.mark.parametrize("name", HOSTILE, ids=["newline", "cr", "u2028", "nel", "mid-line",
                                               "rule"])
def test_a_name_in_a_log_line_never_makes_or_changes_a_metric(name):
    """Names reach the log as arguments, inside a message already built (an f-string,
    an exception's text) and in a traceback; SageMaker reads every line with every regex."""
    real = logged(metric_lines.test_line({"loss": 0.5, "acc": 0.25}))
    try:
        raise ValueError(f"cannot decode {name}")
    except ValueError as exc:
        error = exc
    log = "\n".join([
        logged("skipping unreadable image %s: %s", f"test/{name}/1.jpg", "truncated",
               name="dogbreed_train.data", level=logging.WARNING),
        logged(f"class folder(s) {name} have no images"),
        logged("%s", f"RULE ClassImbalance status=0 NoIssuesFound: under-represented {name}",
               name="dogbreed_train.rules"),
        logged("%r", {"labels": [name]}),
        logged("%s", "InternalError", level=logging.ERROR, exc_info=(
            type(error), error, error.__traceback__)),
        real])
    for d in metric_lines.definitions():
        read = metric_lines.values(d["Regex"], log)
        expected = {"test:loss": ["0.5000"], "test:accuracy": ["0.2500"],
                    "rule:ClassImbalance": ["0"]}.get(d["Name"], [])
        assert read == expected, (d["Name"], log)
    # Each record is one line that starts with the prefix; what follows it is indented.
    prefix = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
    lines = log.split("\n")
    assert sum(bool(prefix.match(line)) for line in lines) == 6
    assert all(prefix.match(line) or line.startswith(metric_lines.CONTINUATION)
               for line in lines), log


def test_log_lines_escape_control_characters_and_keep_their_own_layout():
    assert logged("%s", "a\nb\tc\x1b[31md").endswith(": a\\nb\tc\\x1b[31md")  # tabs stay
    assert logged("%d images, %.2f s, %r", 3, 0.5, "x\ny").endswith(
        ": 3 images, 0.50 s, 'x\\ny'")
    table = logged("rule verdicts:\n  Overfit  NoIssuesFound")
    assert table.split("\n")[1] == metric_lines.CONTINUATION + "  Overfit  NoIssuesFound"
    assert logged("%(name)s", {"name": "a\nb"}).endswith(": a\\nb")
    undecodable = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    assert logged("%s", undecodable).endswith(": caf\\udce9.jpg")


def test_final_values_come_from_the_job_record():
    record = {"history": [{"epoch": 1, "valid_acc": 0.25, "train_loss": 2.0},
                          {"epoch": 2, "valid_acc": 0.5, "train_loss": float("nan")}],
              "test": {"loss": 0.75, "acc": 0.875}}
    assert metric_lines.final_value("valid:accuracy", record) == 0.5
    assert metric_lines.final_value("epoch", record) == 2
    assert metric_lines.final_value("test:accuracy", record) == 0.875
    assert metric_lines.final_value("train:loss", record) is None  # not finite
    assert metric_lines.final_value("rule:Overfit", record) is None  # only the log has it
    assert metric_lines.final_value("valid:accuracy", {"history": []}) is None
    assert metric_lines.final_value("test:loss", {"test": None}) is None
    assert set(metric_lines.RECORDED) < {d["Name"] for d in metric_lines.definitions()}


# --- preprocess: the hooks serving decodes with, and the conversion both images run

def float64_8bit(img: Image.Image) -> np.ndarray:
    """A wide image (16/32-bit grey) to 8 bits in one float64 array: the arithmetic
    preprocess.to_8bit must reproduce strip by strip."""
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        return np.clip(arr * 255.0, 0, 255).astype(np.uint8)
    arr = np.asarray(img, dtype=np.float64)
    peak = 65535.0 if arr.max() > 255 else 255.0
    return np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)


@st.composite
def wide_images(draw) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale images, with values outside 0-255
    (and NaN and infinities for floats)."""
    mode = draw(st.sampled_from(["I;16", "I", "F"]))
    h, w = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "I;16":
        peak = draw(st.sampled_from([255, 65535]))
        return Image.fromarray(rng.integers(0, peak + 1, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-70000, 70000, (h, w), dtype=np.int32))
    arr = rng.uniform(-0.5, 1.5, (h, w)).astype(np.float32)
    arr.flat[rng.integers(0, arr.size, 3)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return Image.fromarray(arr)


@settings(max_examples=200, deadline=None, database=None)
@given(img=wide_images(), strip_pixels=st.integers(1, 4000))
def test_wide_images_convert_in_strips_exactly_as_in_one_float64_array(img, strip_pixels):
    """to_8bit (training's and serving's, strip by strip) against the whole image in
    float64: the same pixels, bit for bit, wherever the strips end."""
    checks = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocess, "STRIP_PIXELS", strip_pixels)
        out = preprocess.to_8bit(img, check=lambda: checks.append(1))
    assert out.mode == "L"
    assert np.array_equal(np.asarray(out), float64_8bit(img))
    rows = max(1, strip_pixels // img.width)
    assert len(checks) == -(-img.height // rows)  # once per strip


def test_an_open_image_decodes_as_its_bytes_do_with_check_between_steps():
    """Serving's way in: open_image, then load_rgb of the open image with a check,
    gives training's pixels; the check runs after the load, the rotation, each strip
    of the 16-bit conversion, the conversion and the mode conversion."""
    body = turned_16_bit_png()
    checks = []
    img = preprocess.open_image(io.BytesIO(body), formats=("PNG",))
    rgb = preprocess.load_rgb(img, check=lambda: checks.append(1))
    assert rgb.mode == "RGB" and rgb.size == (200, 300)
    assert np.array_equal(np.asarray(rgb), np.asarray(preprocess.load_rgb(body)))
    assert len(checks) == 5


@pytest.mark.parametrize("stop_at", [1, 2, 3, 4, 5])
def test_a_check_that_stops_the_decode_is_not_an_image_error(stop_at):
    """What check() raises to stop a decode (serving's deadline) reaches the caller as
    itself, whichever step it stops: never as UnreadableImage."""
    calls = []

    def check():
        calls.append(1)
        if len(calls) == stop_at:
            raise DecodeStopped
    img = preprocess.open_image(turned_16_bit_png())
    with pytest.raises(DecodeStopped) as info:
        preprocess.load_rgb(img, check=check)
    assert not isinstance(info.value, ValueError)


def test_open_image_tries_only_the_given_formats_and_refuses_too_many_pixels():
    png = encode(photo(32, 24), "PNG")
    assert preprocess.open_image(png, formats=("PNG",)).format == "PNG"
    with pytest.raises(UnreadableImage):
        preprocess.open_image(png, formats=("JPEG",))
    with pytest.raises(ImageTooLarge, match=re.escape(
            "image too large: 7000x7000 pixels, the limit is 40,000,000 pixels")):
        preprocess.open_image(png_with_size(7000, 7000))
