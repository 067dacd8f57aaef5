"""The serving handler on the host, in milliseconds: handler.Service and the stages of
stages.py with a stand-in for MMS's context and a stand-in network.

The context mirrors what handler.py uses of multi-model-server 1.1.11's
mms.context.Context (system_properties, request ids, request headers, response
status and headers); the network is a few lines of numpy whose answer follows the
image's colour, so each answer can be traced to its own image through the batch.
Decoding is the real one (Pillow, dogbreed_contract's preprocessing). The container
tests (test_serve_container.py) run the same handler inside real MMS.
"""

from __future__ import annotations

import io
import json
import logging
import uuid

import numpy as np
import pytest
from PIL import Image

from dogbreed_contract.preprocess import Spec
from dogbreed_serve import handler, stages
from dogbreed_serve.decoding import ClientError
from dogbreed_serve.logs import WorkerFormatter
from dogbreed_serve.settings import READY_FILE, Settings, threads_for

LABELS = ["red", "green", "blue", "grey"]
SETTINGS = Settings(top_k=2, intra_op_threads=2)


class FakeContext:
    """The parts of mms.context.Context the handler touches; records what it sets."""

    def __init__(self, headers: list, model_dir: str = "/opt/ml/model"):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None, "batch_size": 8,
                                  "server_name": "MMS", "server_version": "1.1.11"}
        self.headers = headers
        # MMS's own ids for the requests of the batch (UUIDs, as its frontend makes them)
        self.request_ids = {i: str(uuid.UUID(int=i)) for i in range(len(headers))}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.response_headers: dict[int, dict] = {}

    def get_all_request_header(self, idx):
        return self.headers[idx]

    def get_request_id(self, idx=0):
        return self.request_ids.get(idx)

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def get_response_status(self, idx):
        return self.statuses.get(idx, (200, None))

    def get_response_headers(self, idx):
        return self.response_headers.get(idx, {})

    def set_response_header(self, idx, key, value):
        self.response_headers.setdefault(idx, {})[key] = value

    def set_response_content_type(self, idx, value):
        self.set_response_header(idx, "content-type", value)


class FakeModel:
    """Four classes; the logits are the image's mean red, green and blue (and 0 for
    grey), so a red image answers "red" first wherever it sits in the batch."""

    labels = LABELS
    spec = Spec.for_size(32)
    device, runtime, provider = "cpu", "fake 1.0", "CPUExecutionProvider"

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.batches: list[tuple] = []
        self.warmed = False

    def warm_up(self):
        self.warmed = True

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        if self.fail:
            raise RuntimeError("the forward pass failed")
        logits = np.concatenate([batch.mean(axis=(2, 3)), np.zeros((len(batch), 1))], 1)
        exp = np.exp(10 * logits - (10 * logits).max(1, keepdims=True))
        return exp / exp.sum(1, keepdims=True)


def image(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 48), color).save(out, fmt)
    return out.getvalue()


RED, GREEN, BLUE = image((230, 20, 20)), image((20, 230, 20), "PNG"), image((20, 20, 230))


def jpeg_headers(request_id: str = "", **more) -> dict:
    headers = {"Content-Type": "image/jpeg", **more}
    if request_id:
        headers[stages.INFERENCE_ID] = request_id
    return headers


@pytest.fixture
def model():
    return FakeModel()


@pytest.fixture
def service(model):
    svc = handler.Service(SETTINGS, load_model=lambda model_dir, threads, spinning: model)
    svc.initialize(FakeContext([]))
    yield svc
    svc.pool.shutdown()


@pytest.fixture
def worker_log():
    """The worker's log lines as the JSON objects serve reads back from MMS."""
    lines: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(json.loads(WorkerFormatter().format(record)))

    collect = Collect()
    logger = logging.getLogger("dogbreed_serve")
    logger.addHandler(collect)
    yield lines
    logger.removeHandler(collect)


def labels_of(answer: str) -> list[str]:
    return [p["label"] for p in json.loads(answer)["predictions"]]


def test_a_bad_image_inside_a_batch_gets_its_own_4xx_and_the_rest_are_answered(
        service, model, worker_log):
    garbage = b"GIF89a not an image at all"
    data = [{"body": RED}, {"body": garbage}, {"body": GREEN}, {"body": b""}, {"body": BLUE}]
    context = FakeContext([jpeg_headers("r0"), jpeg_headers("r1"),
                           {"content-type": "image/png"}, jpeg_headers("r3"), jpeg_headers()])

    answers = service.handle(data, context)

    assert len(answers) == 5
    assert labels_of(answers[0])[0] == "red"
    assert labels_of(answers[2])[0] == "green"
    assert labels_of(answers[4])[0] == "blue"
    assert json.loads(answers[1]) == {"status": 400, "error": context.statuses[1][1]}
    assert "not a JPEG or PNG" in context.statuses[1][1]
    assert json.loads(answers[3])["status"] == 400 and context.statuses[3][0] == 400
    assert sorted(context.statuses) == [1, 3]  # the good ones keep MMS's default 200
    assert model.batches == [(3, 3, 32, 32)]   # one forward pass for the three good ones
    assert context.response_headers == {}      # never a per-request header (handler.py)
    refused = [line for line in worker_log if line["message"].startswith("answered 400")]
    # in the order the decode threads finished, which the machine's load decides
    assert sorted(line["request_id"] for line in refused) == ["r1", "r3"]


def test_top_k_is_read_per_request(service):
    data = [{"body": RED}] * 6
    attrs = ["top_k=1", "k=3;other=x", None, "top_k=99", "top_k=0", "top_k=three"]
    context = FakeContext([jpeg_headers(**({stages.CUSTOM_ATTRIBUTES: a} if a else {}))
                           for a in attrs])

    answers = service.handle(data, context)

    assert [len(labels_of(a)) for a in answers[:4]] == [1, 3, SETTINGS.top_k, len(LABELS)]
    assert all(labels_of(a)[0] == "red" for a in answers[:4])
    probabilities = [p["probability"] for p in json.loads(answers[3])["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-9
    assert context.statuses == {4: (400, "top_k must be at least 1"),
                                5: (400, "top_k must be an integer, got 'three'")}


def test_missing_and_odd_headers(service, worker_log):
    cases = [
        ({b"Content-Type": b"image/jpeg", b"X-Amzn-SageMaker-Inference-Id": b"bytes-id"}, 200),
        ({"CONTENT-TYPE": "Image/JPEG; charset=binary"}, 200),
        ({"body": {"content-type": "image/jpeg"}}, 200),    # the body part's own type
        ({"content-type": "application/octet-stream"}, 200),  # sniffed
        ({"content-type": 7, "x-amzn-sagemaker-inference-id": ["not", "text"]}, 415),
        ({}, 415),
        (None, 415),
        (["not", "a", "dict"], 415),
        ({"content-type": "text/plain"}, 415),
    ]
    context = FakeContext([headers for headers, _ in cases])

    answers = service.handle([{"body": RED}] * len(cases), context)

    got = [context.statuses.get(i, (200, ""))[0] for i in range(len(cases))]
    assert got == [status for _, status in cases]
    for i, (_, status) in enumerate(cases):
        if status == 200:
            assert labels_of(answers[i])[0] == "red"
        else:
            assert json.loads(answers[i])["status"] == status
    assert "unsupported Content-Type '(none)'" in context.statuses[5][1]
    assert "unsupported Content-Type 'text/plain'" in context.statuses[8][1]
    assert not any("request_id" in line for line in worker_log
                   if "Content-Type '(none)'" in line["message"])
    assert stages.read([{"body": RED}], context)[0].request_id == "bytes-id"


def test_a_failing_forward_answers_500_for_its_batch_only(model, service, worker_log):
    model.fail = True
    data = [{"body": RED}, {"body": b"junk"}, {"body": BLUE}]
    context = FakeContext([jpeg_headers("a"), jpeg_headers("b"), jpeg_headers("c")])

    answers = service.handle(data, context)

    assert context.statuses == {0: (500, "inference failed"), 2: (500, "inference failed"),
                                1: (400, context.statuses[1][1])}
    assert json.loads(answers[0]) == {"error": "inference failed", "status": 500}
    failed = [line for line in worker_log if line["message"].startswith("inference failed")]
    assert len(failed) == 1 and "batch of 2 (requests a, c)" in failed[0]["message"]
    assert "the forward pass failed" in failed[0]["exception"]

    model.fail = False  # the worker goes on with the next batch
    context = FakeContext([jpeg_headers("d")])
    assert labels_of(service.handle([{"body": RED}], context)[0])[0] == "red"
    assert context.statuses == {}


def test_mms_entry_point_initializes_once_then_handles(monkeypatch, tmp_path, model):
    loaded = []

    def load(model_dir, threads, spinning):
        loaded.append((model_dir, threads, spinning))
        return model

    (tmp_path / READY_FILE).touch()  # serve was already serving: a replacement worker
    settings = Settings(intra_op_threads=0, workers=2, run_dir=str(tmp_path), top_k=1)
    monkeypatch.setattr(handler, "_service", handler.Service(settings, load_model=load))
    from dogbreed_serve import metrics

    restarts = metrics.WORKER_RESTARTS._value.get()
    context = FakeContext([jpeg_headers()], model_dir="/models/m1")

    assert handler.handle(None, context) is None
    answer = handler.handle([{"data": bytearray(RED)}], context)  # MMS's other key
    handler.handle([{"body": BLUE}], context)

    assert loaded == [("/models/m1", threads_for(2), False)]
    assert model.warmed and labels_of(answer[0]) == ["red"]
    assert metrics.WORKER_RESTARTS._value.get() == restarts + 1
    handler._service.pool.shutdown()


def test_stages_one_by_one(model):
    context = FakeContext([jpeg_headers("x"), {}, {"Content-Type": "image/png"}])
    requests = stages.read([{"body": RED}, "not a dict", {"data": GREEN}], context)
    assert [(r.index, r.body is not None, r.content_type, r.request_id) for r in requests] == [
        (0, True, "image/jpeg", "x"), (1, False, None, None), (2, True, "image/png", None)]

    decoded = [stages.decode(r, model.spec, 5, 10.0, None) for r in requests]
    assert isinstance(decoded[1], ClientError) and decoded[1].status == 415
    good = [d for d in decoded if isinstance(d, stages.Decoded)]
    assert [d.array.shape for d in good] == [(3, 32, 32)] * 2

    inputs = stages.batch(good)
    assert inputs.shape == (2, 3, 32, 32) and np.array_equal(inputs[1], good[1].array)
    probs = stages.predict(model, inputs)
    assert probs.shape == (2, len(LABELS))

    assert labels_of(stages.encode(LABELS, probs[1], 2)) == ["green", "grey"]
    tied = np.array([0.25, 0.25, 0.25, 0.25])
    assert [p["index"] for p in stages.ranked(LABELS, tied, 0)] == [0]  # clipped to 1
    assert [p["index"] for p in stages.ranked(LABELS, tied, 9)] == [0, 1, 2, 3]


def test_settings_give_each_worker_its_threads():
    assert Settings(workers=2, intra_op_threads=3).threads_per_worker == 3
    assert Settings(workers=2).threads_per_worker == threads_for(2)
    assert threads_for(1) >= threads_for(2) >= threads_for(64) == 1
