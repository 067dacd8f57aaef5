"""multi-model-server handler: a whole batch of requests in, one answer per request out.

MMS hands ``handle`` up to DOGBREED_MAX_BATCH requests at once. Each is decoded on
its own (in a small thread pool: Pillow releases the GIL while it decodes and
resizes), so one bad image gets its own 4xx and the rest are still answered; the
good ones go through the network as a single batch. Nothing here raises: an
exception in a handler would make MMS answer 503 for the whole batch.

No response headers are set here, not even Content-Type (nginx sets it, see
conf/nginx.conf.template): MMS 1.1.11's frontend decodes a worker's per-request
header map without checking that all of it has arrived (CodecUtils.readMap), and a
batch answer split across two socket reads there kills the worker ("Invalid message
size: -3", docs/hardening.md). Without headers that map is empty; nginx adds the
request id header to the answer.

Each request's id (X-Amzn-SageMaker-Inference-Id, which nginx fills in when the
client sent none) goes into every log line written while it is handled, and each
stage is timed for /metrics (metrics.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import logs, metrics
from .decoding import ClientError, decode, parse_top_k
from .memory import DecodeMemory
from .model import Classifier, threads_for
from .settings import READY_FILE, RUN_DIR_ENV, Settings

log = logging.getLogger("dogbreed_serve")
logs.configure_worker_logging(log)

INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"

_service: "Service | None" = None

# At most this many images of one batch are decoded at once: each may take up to
# MAX_PIXELS x 3 bytes while it decodes (docs/hardening.md).
DECODE_THREADS = 4


def _header(context, idx: int, name: str) -> str | None:
    """A request header, case-insensitively; the body's own content type as fallback."""
    headers = context.get_all_request_header(idx) or {}
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if key.lower() == wanted and isinstance(value, (str, bytes)):
            return value.decode("latin-1") if isinstance(value, bytes) else value
    if wanted == "content-type":
        body_headers = headers.get("body")
        if isinstance(body_headers, dict):
            return body_headers.get("content-type")
    return None


class Service:
    def __init__(self, model_dir: str):
        self.settings = Settings.from_env()
        workers = int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS") or 1)
        threads = self.settings.intra_op_threads or threads_for(workers)
        start = time.perf_counter()
        self.model = Classifier(model_dir, intra_op_threads=threads)
        self.model.warm_up()
        self.pool = ThreadPoolExecutor(min(threads, DECODE_THREADS), thread_name_prefix="decode")
        self.memory = DecodeMemory.from_env()
        log.info("model loaded and warmed up in %.2f s (%d classes, %s, %d threads)",
                 time.perf_counter() - start, len(self.model.labels), self.model.device, threads)
        import onnxruntime

        metrics.MODEL_INFO.labels(str(len(self.model.labels)), str(self.model.spec.image_size),
                                  f"onnxruntime {onnxruntime.__version__}",
                                  self.model.provider).set(1)
        run_dir = os.environ.get(RUN_DIR_ENV)
        if run_dir and (Path(run_dir) / READY_FILE).exists():  # serve was already serving
            metrics.WORKER_RESTARTS.inc()
            log.warning("a new worker process (pid %d) took over from one that died",
                        os.getpid())

    def handle(self, data: list[dict], context) -> list[str]:
        n = len(data)
        metrics.IN_FLIGHT.inc(n)
        try:
            return self._handle(data, context)
        finally:
            metrics.IN_FLIGHT.dec(n)

    def _handle(self, data: list[dict], context) -> list[str]:
        n = len(data)
        answers: list[str | None] = [None] * n
        arrays, slots, ks = [], [], []
        for i, result in enumerate(self.pool.map(self._decode, data, [context] * n, range(n))):
            if isinstance(result, ClientError):
                answers[i] = self._error(context, i, result.status, result.message)
            else:
                arrays.append(result[0])
                slots.append(i)
                ks.append(result[1])
        if arrays:
            try:
                start = time.perf_counter()
                probs = self.model.probabilities(np.stack(arrays))
                metrics.FORWARD_SECONDS.observe(time.perf_counter() - start)
                metrics.BATCH_SIZE.observe(len(arrays))
                for row, i, k in zip(probs, slots, ks, strict=True):
                    answers[i] = json.dumps({"predictions": self.model.top_k(row, k)})
            except Exception:  # noqa: BLE001
                ids = ", ".join(str(_header(context, i, INFERENCE_ID)) for i in slots)
                log.exception("inference failed for a batch of %d (requests %s)",
                              len(arrays), ids)
                for i in slots:
                    answers[i] = self._error(context, i, 500, "inference failed")
        return answers  # type: ignore[return-value]

    def _decode(self, item, context, i: int) -> "tuple[np.ndarray, int] | ClientError":
        """One request to (model input, top_k), or the ClientError to answer it with."""
        token = logs.REQUEST_ID.set(_header(context, i, INFERENCE_ID))
        start = time.perf_counter()
        try:
            body = item.get("body") if isinstance(item, dict) else None
            if body is None and isinstance(item, dict):
                body = item.get("data")
            k = parse_top_k(_header(context, i, "X-Amzn-SageMaker-Custom-Attributes"),
                            self.settings.top_k)
            return decode(body, _header(context, i, "content-type"), self.model.spec,
                          self.settings.decode_timeout_s, self.memory), k
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

    @staticmethod
    def _error(context, idx: int, status: int, message: str) -> str:
        context.set_response_status(status, message, idx)
        return json.dumps({"error": message, "status": status})


def handle(data, context):
    """MMS entry point. First call (data=None) loads the model; later calls predict."""
    global _service
    if _service is None:
        _service = Service(context.system_properties.get("model_dir"))
    if data is None:
        return None
    return _service.handle(data, context)
