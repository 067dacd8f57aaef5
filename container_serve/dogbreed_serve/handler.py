"""multi-model-server handler: a whole batch of requests in, one answer per request out.

``Service.initialize`` runs once per worker process (MMS's first call, with no data):
it builds the worker's one Settings, loads and warms up the model. ``Service.handle``
then takes up to DOGBREED_MAX_BATCH requests at once through the stages of
stages.py: read, decode, batch, predict, encode. Each request is decoded on its
own (in a small thread pool: Pillow releases the GIL while it decodes and resizes),
so one bad image gets its own 4xx and the rest are still answered; the good ones go
through the network as a single batch. Nothing here raises: an exception in a
handler would make MMS answer 503 for the whole batch.

MMS 1.1.11's frontend reads two fields of a batch's answers without checking that
they have arrived, and a socket read that ends inside one kills the worker
(docs/hardening.md). So no response headers are set here, not even Content-Type
(nginx sets it, see conf/nginx.conf.template; the header map stays empty), and
frames.padded keeps each HTTP status out of a read's end.

Each request's id (X-Amzn-SageMaker-Inference-Id, which nginx fills in when the
client sent none) goes into every log line written while it is handled, and each
stage is timed for /metrics (metrics.py).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from . import frames, logs, metrics, stages
from .decoding import ClientError
from .memory import DecodeMemory
from .settings import Settings

log = logging.getLogger("dogbreed_serve")
logs.configure_worker_logging(log)

# At most this many images of one batch are decoded at once: each may take up to
# MAX_PIXELS x 3 bytes while it decodes (docs/hardening.md).
DECODE_THREADS = 4


def load_classifier(model_dir: str, threads: int, spinning: bool):
    """The ONNX Runtime model (imported here: the host's unit tests pass a fake)."""
    from .model import Classifier

    return Classifier(model_dir, intra_op_threads=threads, spinning=spinning)


class Service:
    """One worker's model and decode pool, and what it does with each batch."""

    def __init__(self, settings: Settings | None = None, load_model=load_classifier):
        self.settings = settings  # None: read from the environment in initialize
        self.load_model = load_model
        self.initialized = False

    def initialize(self, context) -> None:
        settings = self.settings = self.settings or Settings.from_env()
        threads = settings.threads_per_worker
        start = time.perf_counter()
        self.model = self.load_model(context.system_properties.get("model_dir"), threads,
                                     settings.ort_spinning)
        self.model.warm_up()
        self.pool = ThreadPoolExecutor(min(threads, DECODE_THREADS), thread_name_prefix="decode")
        self.memory = DecodeMemory.in_run_dir(settings.run_dir)
        name = getattr(context, "model_name", None) or "model"
        log.info("model %sloaded and warmed up in %.2f s (%d classes, %s, %d threads)",
                 f"{name} " if settings.multi_model else "", time.perf_counter() - start,
                 len(self.model.labels), self.model.device, threads)
        if not settings.multi_model:  # "the model being served": one per container
            metrics.MODEL_INFO.labels(str(len(self.model.labels)),
                                      str(self.model.spec.image_size), self.model.runtime,
                                      self.model.provider).set(1)
        marker = settings.ready_marker(name)
        if marker is not None and marker.exists():
            metrics.WORKER_RESTARTS.inc()  # serve was already serving this model
            log.warning("a new worker process (pid %d) took over from one that died",
                        os.getpid())
        self.initialized = True

    def handle(self, data: list, context) -> list[str]:
        n = len(data)
        metrics.IN_FLIGHT.inc(n)
        try:
            return self._handle(data, context)
        finally:
            metrics.IN_FLIGHT.dec(n)

    def _handle(self, data: list, context) -> list[str]:
        requests = stages.read(data, context)
        answers: list[str | None] = [None] * len(requests)
        decoded: list[stages.Decoded] = []
        for request, result in zip(requests, self.pool.map(self._decode, requests),
                                   strict=True):
            if isinstance(result, ClientError):
                answers[request.index] = stages.refuse(context, request.index, result.status,
                                                       result.message)
            else:
                decoded.append(result)
        if decoded:
            try:
                probs = stages.predict(self.model, stages.batch(decoded))
                for row, d in zip(probs, decoded, strict=True):
                    answers[d.index] = stages.encode(self.model.labels, row, d.top_k)
            except Exception:  # noqa: BLE001
                ids = ", ".join(str(d.request_id) for d in decoded)
                log.exception("inference failed for a batch of %d (requests %s)",
                              len(decoded), ids)
                for d in decoded:
                    answers[d.index] = stages.refuse(context, d.index, 500, "inference failed")
        return frames.padded(frames.records_of(context, len(answers)),
                             answers)  # type: ignore[arg-type]

    def _decode(self, request: stages.Request) -> stages.Decoded | ClientError:
        return stages.decode(request, self.model.spec, self.settings.top_k,
                             self.settings.decode_timeout_s, self.memory)


_service = Service()


def handle(data, context):
    """MMS entry point. First call (data=None) loads the model; later calls predict."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
