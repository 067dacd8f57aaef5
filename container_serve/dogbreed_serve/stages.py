"""The handler's stages, one function each: read, decode, batch, predict, encode.

    MMS's (data, context) --read--> Request per item --decode--> Decoded | ClientError
    Decoded... --batch--> one (N, 3, S, S) array --predict--> (N, classes) probabilities
    each row --encode--> the JSON answer of its request; each ClientError --refuse--> its 4xx

Each stage takes plain values and returns plain values, so each can be tested on its
own (tests/test_serve_handler.py); handler.Service strings them together and decides
what a failure costs: a request that cannot be decoded gets its own 4xx, a forward
pass that fails answers 500 to the requests of that batch only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from dogbreed_contract.preprocess import Spec

from . import logs, metrics
from .decoding import ClientError, parse_top_k
from .decoding import decode as decode_body
from .memory import DecodeMemory

log = logging.getLogger("dogbreed_serve")

INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


@dataclass(frozen=True)
class Request:
    """One item of an MMS batch with the headers the later stages need."""
    index: int                      # its place in MMS's list: the answer goes there
    body: bytes | bytearray | None
    content_type: str | None
    custom_attributes: str | None   # top_k=N
    request_id: str | None          # nginx fills it in when the client sent none


@dataclass(frozen=True)
class Decoded:
    """A request turned into model input."""
    index: int
    request_id: str | None
    array: np.ndarray               # (3, S, S) float32
    top_k: int


def header(context, idx: int, name: str) -> str | None:
    """A request header, case-insensitively; the body's own content type as fallback.

    Keys and values may come as bytes (MMS hands them over as it read them); values
    of any other type, and a header map that is not a dict, count as missing.
    """
    headers = context.get_all_request_header(idx)
    if not isinstance(headers, dict):
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(key, str) and key.lower() == wanted and isinstance(value, (str, bytes)):
            return value.decode("latin-1") if isinstance(value, bytes) else value
    if wanted == "content-type":
        body_headers = headers.get("body")
        if isinstance(body_headers, dict):
            return body_headers.get("content-type")
    return None


def read(data: list, context) -> list[Request]:
    """Stage 1: MMS's list of items and its context to one Request per item."""
    requests = []
    for i, item in enumerate(data):
        body = item.get("body") if isinstance(item, dict) else None
        if body is None and isinstance(item, dict):
            body = item.get("data")
        requests.append(Request(i, body, header(context, i, "content-type"),
                                header(context, i, CUSTOM_ATTRIBUTES),
                                header(context, i, INFERENCE_ID)))
    return requests


def decode(request: Request, spec: Spec, default_top_k: int, timeout_s: float,
           memory: DecodeMemory | None) -> Decoded | ClientError:
    """Stage 2, per request (in the handler's thread pool): model input and top_k,
    or the ClientError to answer with. Never raises: one bad request must not cost
    the others of its batch their answers."""
    token = logs.REQUEST_ID.set(request.request_id)
    start = time.perf_counter()
    try:
        k = parse_top_k(request.custom_attributes, default_top_k)
        array = decode_body(request.body, request.content_type, spec, timeout_s, memory)
        return Decoded(request.index, request.request_id, array, k)
    except ClientError as exc:
        # The reason, with the request id, for whoever reads the log (the answer
        # and nginx's access line carry only the status).
        log.info("answered %d: %s", exc.status, exc.message)
        return exc
    except Exception:  # noqa: BLE001 - a bad request must never kill the batch
        log.exception("unexpected error decoding the request")
        return ClientError(400, "the image could not be decoded")
    finally:
        metrics.DECODE_SECONDS.observe(time.perf_counter() - start)
        logs.REQUEST_ID.reset(token)


def batch(decoded: list[Decoded]) -> np.ndarray:
    """Stage 3: the decoded requests as one (N, 3, S, S) input, in their order."""
    return np.stack([d.array for d in decoded])


def predict(model, inputs: np.ndarray) -> np.ndarray:
    """Stage 4: one forward pass over the batch, timed for /metrics."""
    start = time.perf_counter()
    probs = model.probabilities(inputs)
    metrics.FORWARD_SECONDS.observe(time.perf_counter() - start)
    metrics.BATCH_SIZE.observe(len(inputs))
    return probs


def ranked(labels: list[str], probs: np.ndarray, k: int) -> list[dict]:
    """The k most probable labels, most probable first (ties by index); k is clipped
    to 1..len(labels)."""
    k = max(1, min(k, len(labels)))
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": labels[i], "index": int(i), "probability": float(probs[i])}
            for i in order]


def encode(labels: list[str], probs: np.ndarray, k: int) -> str:
    """Stage 5: one request's row of probabilities as its JSON answer."""
    return json.dumps({"predictions": ranked(labels, probs, k)})


def refuse(context, idx: int, status: int, message: str) -> str:
    """An error answer: the status goes to MMS through the context, the body says why.

    Only the status is set on the context, no header (handler.py says why)."""
    context.set_response_status(status, message, idx)
    return json.dumps({"error": message, "status": status})
