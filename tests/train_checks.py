"""What the training tests check in a finished or failed job, shared by the tests of
interrupted jobs (test_train_kills_and_faults.py) and of odd inputs (test_train_odd_inputs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from synthetic import LABELS

# Small and quick on 2 CPU cores: ResNet-18 from scratch at 32 px, two short epochs.
HPS = {"model": "resnet18", "pretrained": "false", "epochs": "2", "batch-size": "8",
       "test-batch-size": "16", "image-size": "32", "lr": "0.003", "workers": "0",
       "max-steps-per-epoch": "2"}
SAVED = re.compile(r"checkpoint saved to (\S+) \(resumes at epoch (\d+)(?:, step (\d+))?\)")
METRIC_EPOCH = re.compile(r"METRIC epoch=(\d+)/(\d+)")


def onnx_top_level(data: bytes) -> dict[int, list]:
    """The top-level fields of an ONNX ModelProto, read from the protobuf wire format."""
    fields: dict[int, list] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.setdefault(number, []).append(varint())
        elif wire == 2:
            size = varint()
            fields.setdefault(number, []).append(data[pos:pos + size])
            pos += size
        else:
            raise AssertionError(f"unexpected wire type {wire} for field {number}")
        assert pos <= len(data), "truncated protobuf"
    return fields


def assert_valid_model(root: Path, image_size: int) -> None:
    """model.json labels + a structurally complete model.onnx (no onnxruntime on the host)."""
    meta = json.loads((root / "model" / "model.json").read_text())
    assert meta["labels"] == LABELS
    assert meta["preprocess"]["image_size"] == image_size
    data = (root / "model" / "model.onnx").read_bytes()
    assert data[:1] == b"\x08", "model.onnx does not start with a ModelProto ir_version"
    top = onnx_top_level(data)  # the whole file parses: nothing cut off
    assert 3 <= top[1][0] <= 20, f"implausible ONNX ir_version {top[1]}"
    assert len(top.get(7, [])) == 1, "no graph in model.onnx"
    graph = top[7][0]
    assert meta["input_name"].encode() in graph and meta["output_name"].encode() in graph
    assert len(data) > 10_000_000, f"model.onnx is only {len(data)} bytes (resnet18: ~45 MB)"


def assert_complete_history(root: Path, epochs: int) -> dict:
    record = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert [h["epoch"] for h in record["history"]] == list(range(1, epochs + 1))
    assert record["summary"]["epochs"] == epochs
    assert record["summary"]["valid_acc"] == record["history"][-1]["valid_acc"]
    return record


def epochs_trained(log: str) -> list[int]:
    return [int(e) for e, _ in METRIC_EPOCH.findall(log)]


def failure_of(root: Path) -> str:
    path = root / "output" / "failure"
    assert path.exists(), "no failure file"
    return path.read_text()


RULE_CODES = {"IssuesFound": 1, "NoIssuesFound": 0, "NotEvaluated": 2}


def assert_metrics_read_as_recorded(definitions: list[dict], log: str, root: Path) -> None:
    """Each regex, applied to each log line as SageMaker applies it, reads exactly the
    values the job recorded: metrics.json's per epoch and test ones, and for each rule
    a last value that is its verdict in rules.json."""
    from dogbreed_contract.metrics import values

    out = root / "output" / "data"
    record = json.loads((out / "metrics.json").read_text())
    history, test = record["history"], record["test"]
    expected = {name: [f"{h[key]:.4f}" for h in history] for name, key in (
        ("train:loss", "train_loss"), ("train:accuracy", "train_acc"),
        ("valid:loss", "valid_loss"), ("valid:accuracy", "valid_acc"))}
    expected["epoch"] = [str(h["epoch"]) for h in history]
    expected["test:loss"] = [f"{test['loss']:.4f}"]
    expected["test:accuracy"] = [f"{test['acc']:.4f}"]
    verdicts = {r["rule"]: r["status"] for r in json.loads((out / "rules.json").read_text())}
    for d in definitions:
        read = values(d["Regex"], log)
        name = d["Name"]
        if name.startswith("rule:"):
            assert read and int(read[-1]) == RULE_CODES[verdicts[name[5:]]], (name, read)
        else:
            assert read == expected[name], (name, read)
