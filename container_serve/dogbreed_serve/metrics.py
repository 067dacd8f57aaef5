"""GET /metrics: Prometheus text format, added up across serve and the MMS workers.

prometheus_client's multiprocess mode: each process (serve and every worker) keeps
its samples in memory-mapped files in PROMETHEUS_MULTIPROC_DIR, which serve sets
before anything imports this module, and a scrape adds the files up. What comes from
where:

- serve counts each request from nginx's access line (logs.py), which carries the
  status and nginx's own end-to-end time: ``dogbreed_requests_total``,
  ``dogbreed_request_duration_seconds``. /ping and /metrics are not logged, so
  neither is counted;
- the workers time each stage (handler.py): ``dogbreed_decode_duration_seconds`` per
  image, ``dogbreed_forward_duration_seconds`` and ``dogbreed_batch_size`` per call
  of the network, ``dogbreed_requests_in_flight``, ``dogbreed_worker_restarts_total``
  and ``dogbreed_model_info``;
- in multi-model mode serve also counts each model's invocations, with a ``model``
  label of bounded cardinality, and its loads and unloads (multi_model.py).

serve answers scrapes on a Unix socket in its run folder; nginx proxies /metrics on
the public port to it (conf/nginx.conf.template).
"""

from __future__ import annotations

import os
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)

REQUESTS = Counter("dogbreed_requests", "Requests answered on the serving port, by endpoint "
                   "(invocations or other) and status code; /ping and /metrics are not "
                   "counted", ["endpoint", "status"])
REQUEST_SECONDS = Histogram("dogbreed_request_duration_seconds", "End-to-end time of an "
                            "invocation in nginx, from its first byte read to its last byte "
                            "sent", buckets=SECONDS)
DECODE_SECONDS = Histogram("dogbreed_decode_duration_seconds", "Time to decode one request "
                           "body to model input, refused ones included", buckets=SECONDS)
FORWARD_SECONDS = Histogram("dogbreed_forward_duration_seconds", "Time of one forward pass "
                            "of the network over a batch", buckets=SECONDS)
BATCH_SIZE = Histogram("dogbreed_batch_size", "Images in one forward pass",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
IN_FLIGHT = Gauge("dogbreed_requests_in_flight", "Requests a worker has taken and not yet "
                  "answered (decoding or in the network); requests still queued in "
                  "multi-model-server are not counted", multiprocess_mode="livesum")
WORKER_RESTARTS = Counter("dogbreed_worker_restarts", "Worker processes that loaded the "
                          "model after start-up: multi-model-server replaced a worker that died")
MODEL_INFO = Gauge("dogbreed_model_info", "The model being served (always 1)",
                   ["classes", "input_size", "runtime", "execution_provider"],
                   multiprocess_mode="max")

# Multi-model mode (multi_model.py). The model label is capped: names past
# DOGBREED_METRICS_MAX_MODELS count as "other" (multi_model.ModelLabels).
MODEL_REQUESTS = Counter("dogbreed_model_requests", "Invocations of each model (multi-model "
                         "mode), by status code", ["model", "status"])
MODEL_REQUEST_SECONDS = Histogram("dogbreed_model_request_duration_seconds", "End-to-end "
                                  "time of an invocation of each model in nginx", ["model"],
                                  buckets=SECONDS)
MODELS_LOADED = Gauge("dogbreed_models_loaded", "Models loaded (multi-model mode)",
                      multiprocess_mode="livesum")
MODEL_LOADS = Counter("dogbreed_model_loads", "POST /models, by outcome: loaded, conflict "
                      "(409), no_memory (507), refused (other 4xx), failed (5xx)", ["outcome"])
MODEL_LOAD_SECONDS = Histogram("dogbreed_model_load_duration_seconds", "Time to check, "
                               "register and warm up a model", buckets=SECONDS)
MODEL_UNLOADS = Counter("dogbreed_model_unloads", "Models unloaded (DELETE /models/NAME)")

_LIVE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def forget_dead_processes(directory: Path) -> None:
    """Drop the in-flight gauges of worker processes that have died (MMS replaced them):
    their files would keep counting what they held. Counters and histograms stay."""
    for entry in directory.iterdir():
        match = _LIVE_FILE.match(entry.name)
        if match and not Path(f"/proc/{match[1]}").exists():
            multiprocess.mark_process_dead(int(match[1]), str(directory))


def exposition() -> bytes:
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    forget_dead_processes(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(directory))
    return generate_latest(registry)


class _Scrape(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self._answer(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        body = exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def address_string(self) -> str:  # a Unix socket has no client address
        return "nginx"

    def log_message(self, *args) -> None:  # scrapes are not logged
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve_scrapes(socket_path: Path) -> _Server:
    """Answer GET on a Unix socket (nginx's /metrics upstream) in a thread."""
    server = _Server(str(socket_path), _Scrape)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server


_INVOKE = re.compile(r"^/models/([^/]+)/invoke$")


def count_access(record: dict, model_label=None) -> None:
    """One nginx access line (logs.access_record) into the request metrics.

    Endpoints: invocations, other; in multi-model mode (``model_label`` maps a model
    name to its label value) also invoke (POST /models/NAME/invoke) and models (the
    other paths of the multi-model API)."""
    path = str(record.get("uri") or "").split("?", 1)[0]
    status = str(record.get("status", "0"))[:3]
    invoke = _INVOKE.match(path) if model_label is not None else None
    endpoint = ("invocations" if path == "/invocations" else "invoke" if invoke else
                "models" if model_label is not None and path.split("/")[1:2] == ["models"]
                else "other")
    REQUESTS.labels(endpoint, status).inc()
    if endpoint not in ("invocations", "invoke"):
        return
    try:
        seconds = float(record.get("duration_s", 0))
    except (TypeError, ValueError):
        return
    REQUEST_SECONDS.observe(seconds)
    if invoke:
        model = model_label(invoke[1])
        MODEL_REQUESTS.labels(model, status).inc()
        MODEL_REQUEST_SECONDS.labels(model).observe(seconds)
