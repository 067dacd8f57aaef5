"""SageMaker's multi-model API (SAGEMAKER_MULTI_MODEL=true): many models, loaded on demand.

    POST   /models               {"model_name": NAME, "url": DIR}: load (200, 409, 507)
    GET    /models               ?next_page_token=T&limit=N: {"models": [...], "nextPageToken"}
    GET    /models/NAME          {"modelName": NAME, "modelUrl": DIR}
    DELETE /models/NAME          unload
    POST   /models/NAME/invoke   the image, as /invocations takes it (nginx -> MMS)

SageMaker unpacks each model of the endpoint's S3 prefix under /opt/ml/models when
it is first invoked, loads it here, and when the container answers 507 (no memory for
another model) unloads the least recently used ones and tries again. MMS 1.1.11 can
register models at run time itself, but it would take any folder and let its workers
fail on it, it has no 507, and its answers carry its internals; so serve answers
these paths (an HTTP server on a Unix socket in its run folder, behind nginx) and
registers with MMS only a model it has checked whole:

  1. the name (SageMaker's opaque key: letters, digits, ``.``, ``_``, ``-``) and the
     url, a folder under /opt/ml/models (DOGBREED_MODELS_DIR);
  2. the model card;
  3. memory: what the model's processes will take (``cost``) against what the
     container has left once the decode budget and the loads in flight are set aside;
     507 when it does not fit (before the ONNX session of step 4 takes memory too);
  4. the ONNX session and its output width against the labels (``model.validate``:
     with step 2, the checks of a single-model start);
  5. MMS registration with batching, synchronous: 200 once its workers have loaded
     and warmed it up. A model MMS could not start is unregistered again, so nothing
     half-loaded stays behind.

Invocations go from nginx straight to MMS (/predictions/NAME), each model in its own
worker processes with its own labels and preprocessing; a load in progress holds no
lock the invocations of the other models need.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socketserver
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from dogbreed_contract import ModelCardError
from dogbreed_contract.model_card import ModelCard

from . import config_files, memory, metrics
from .settings import LOADED_DIR, Settings
from .supervisor import MmsHealth

log = logging.getLogger("dogbreed_serve.models")

# SageMaker's model_name is an opaque key it makes up (a hex id); names that reach
# MMS and nginx must be safe in a URL path and a JSON string.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
MODEL_PATH = re.compile(r"^/models/([^/]+)$")
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
MAX_LOAD_BODY = 64 * 1024
MIB = memory.MIB

# What one model's processes take (container memory without page cache), measured on
# 2026-12-04 on the 2-CPU machine (docs/serving.md): MMS starts a backend process per
# model (16 MiB) and forks its workers from it; each worker holds the interpreter and
# libraries (32-34 MiB), its ONNX Runtime session (about the model file's size), and,
# once it has run full batches, their activations and decode buffers (batches of 8 at
# 224 px: ResNet-18 65 MiB, ResNet-50 112 MiB, i.e. 170 and 293 bytes per input pixel).
# Rounded up.
BACKEND_BYTES = 16 * MIB
WORKER_BYTES = 40 * MIB
WEIGHTS_FACTOR = 1.1
ACTIVATION_BYTES_PER_PIXEL = 300  # per input pixel of a full batch
# Kept free besides the decode budget: the JVM's heap growth under load and nginx's
# request bodies (docs/hardening.md).
HEADROOM_BYTES = 256 * MIB


def decode_budget(settings: Settings) -> int:
    """The decode budget (memory.py) of a multi-model container, in bytes: as a
    single model's, but at most what two of the largest images the decoder accepts
    take at once, since what the budget sets aside no model can use (check_memory)."""
    from .decoding import MAX_PIXELS, PEAK_BYTES_PER_PIXEL

    budget = memory.budget_bytes(settings.decode_memory_mb)
    if settings.decode_memory_mb:
        return budget
    return min(budget, 2 * MAX_PIXELS * max(PEAK_BYTES_PER_PIXEL.values()))


class ApiError(Exception):
    """A refusal: its status and the message the JSON answer carries."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Loaded:
    name: str
    url: str
    classes: int
    image_size: int
    cost: int  # bytes, as estimated at load


def cost(model_file: Path, image_size: int, settings: Settings) -> int:
    """Bytes the model's MMS processes will take once loaded and busy (see above)."""
    weights = model_file.stat().st_size
    activations = ACTIVATION_BYTES_PER_PIXEL * settings.max_batch * image_size ** 2
    per_worker = WORKER_BYTES + int(WEIGHTS_FACTOR * weights) + activations
    return BACKEND_BYTES + settings.workers * per_worker


class ModelLabels:
    """The ``model`` label of /metrics. Model names are chosen by whoever deploys (one
    per model ever loaded, thousands on an endpoint), so only the first ``limit``
    names loaded get their own label value; the rest count as "other"."""

    OTHER = "other"

    def __init__(self, limit: int):
        self.limit = max(0, limit)
        self.named: set[str] = set()
        self.lock = threading.Lock()

    def assign(self, name: str) -> None:
        with self.lock:
            if len(self.named) < self.limit:
                self.named.add(name)

    def __call__(self, name: str) -> str:
        return name if name in self.named else self.OTHER


class Mms:
    """MMS's management API on its loopback port, for one model at a time."""

    def __init__(self, management_port: int, settings: Settings):
        self.base = f"http://127.0.0.1:{management_port}"
        self.settings = settings

    def _call(self, method: str, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, method=method)
        try:
            # loopback (bandit B310)
            with urllib.request.urlopen(  # nosec B310
                    request, timeout=self.settings.startup_timeout_s) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def register(self, name: str, model_dir: str) -> tuple[int, str]:
        query = config_files.registration_query(self.settings, name, model_dir)
        return self._call("POST", f"/models?{query}")

    def unregister(self, name: str) -> tuple[int, str]:
        return self._call("DELETE", f"/models/{name}")


class Models:
    """The models serve has loaded into MMS, and the loads and unloads in progress."""

    def __init__(self, settings: Settings, mms: Mms, decode_budget: int, run_dir: Path):
        self.settings = settings
        self.mms = mms
        self.decode_budget = decode_budget
        self.markers = run_dir / LOADED_DIR
        self.markers.mkdir(exist_ok=True)
        self.root = Path(os.path.realpath(settings.models_root))
        self.lock = threading.Lock()
        self.loaded: dict[str, Loaded] = {}
        self.busy: dict[str, int] = {}  # loading or unloading: name -> bytes set aside
        self.labels = ModelLabels(settings.metrics_max_models)

    def has_models(self) -> bool:
        return bool(self.loaded)

    # --- load
    def load(self, name: object, url: object) -> Loaded:
        name, model_dir = self.check_request(name, url)
        with self.lock:
            if name in self.loaded:
                raise ApiError(409, f"model {name} is already loaded")
            if name in self.busy:
                raise ApiError(409, f"model {name} is being loaded or unloaded")
            self.busy[name] = 0
        start = time.monotonic()
        try:
            loaded = self._load(name, url, model_dir)
            (self.markers / name).touch()
            self.labels.assign(name)
            with self.lock:
                self.loaded[name] = loaded
                metrics.MODELS_LOADED.set(len(self.loaded))
        finally:
            with self.lock:
                self.busy.pop(name, None)
        metrics.MODEL_LOAD_SECONDS.observe(time.monotonic() - start)
        log.info("model %s loaded from %s in %.1f s (%d classes, %d px, about %d MiB)",
                 name, url, time.monotonic() - start, loaded.classes, loaded.image_size,
                 loaded.cost // MIB)
        return loaded

    def check_request(self, name: object, url: object) -> tuple[str, Path]:
        """400/404 for a request that names no loadable folder; the folder."""
        if not isinstance(name, str) or not isinstance(url, str):
            raise ApiError(400, 'the body must be a JSON object with the strings '
                                '"model_name" and "url"')
        if not NAME.match(name):
            raise ApiError(400, f"model_name {name[:80]!r}: use 1 to 255 letters, digits, "
                                "'.', '_' or '-', starting with a letter or digit")
        path = Path(os.path.realpath(url)) if url.startswith("/") else None
        if path is None or not path.is_relative_to(self.root) or path == self.root:
            raise ApiError(400, f"url {url[:200]!r} is not a folder under {self.root}, "
                                "where SageMaker unpacks the models")
        if not path.exists():
            raise ApiError(404, f"nothing at {url}: unpack the model.tar.gz there first")
        if not path.is_dir():
            raise ApiError(400, f"{url} is a file, not a model folder (model.onnx and "
                                "model.json)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ApiError(400, f"{url} cannot be read by the model server (uid "
                                f"{os.getuid()}): pack model.tar.gz with files and folders "
                                "readable to all, as dogbreed-train writes it")
        return name, path

    def _load(self, name: str, url: str, model_dir: Path) -> Loaded:
        from .model import validate

        try:
            card = ModelCard.load(model_dir)
            model_file = model_dir / card.model_file
            if model_file.is_file():  # else validate says what is missing
                # Before the ONNX session is opened: that takes memory too.
                need = cost(model_file, card.spec.image_size, self.settings)
                with self.lock:
                    self.check_memory(name, need)
                    self.busy[name] = need
            validate(model_dir, card, self.settings.ort_spinning)
        except ModelCardError as exc:
            raise ApiError(400, f"model {name} cannot be served: {exc}") from None
        status, answer = self.mms.register(name, str(model_dir))
        if status == 409:  # left behind by a load whose answer never came: replace it
            self.mms.unregister(name)
            status, answer = self.mms.register(name, str(model_dir))
        if status != 200:
            self.mms.unregister(name)  # whatever MMS kept of it
            log.error("model %s: multi-model-server could not start its workers (%d: %s)",
                      name, status, answer.strip()[:300])
            raise ApiError(500, f"model {name} passed its checks but its workers did not "
                                "start: see the container's log")
        return Loaded(name, url, len(card.labels), card.spec.image_size, need)

    def check_memory(self, name: str, need: int) -> None:
        """507 when ``need`` bytes do not fit (called under the lock)."""
        limit, used = memory.container_memory()
        pending = sum(self.busy.values())
        spare = limit - used - self.decode_budget - HEADROOM_BYTES - pending
        if need > spare:
            raise ApiError(507, f"not enough memory for model {name}: it needs about "
                                f"{need // MIB} MiB, {max(0, spare) // MIB} MiB are free "
                                f"(limit {limit // MIB} MiB, {used // MIB} in use, "
                                f"{self.decode_budget // MIB} set aside for decoding, "
                                f"{pending // MIB} for loads in progress): unload a model")

    # --- unload, list, describe
    def unload(self, name: str) -> None:
        with self.lock:
            if name in self.busy:
                raise ApiError(409, f"model {name} is being loaded or unloaded")
            loaded = self.loaded.pop(name, None)
            if loaded is None:
                raise ApiError(404, f"model {name} is not loaded")
            self.busy[name] = 0
        try:
            (self.markers / name).unlink(missing_ok=True)
            status, answer = self.mms.unregister(name)
            if status not in (200, 404):
                log.error("model %s: multi-model-server did not unload it (%d: %s)", name,
                          status, answer.strip()[:300])
                with self.lock:
                    self.loaded[name] = loaded
                (self.markers / name).touch()
                raise ApiError(500, f"model {name} could not be unloaded: retry")
        finally:
            with self.lock:
                self.busy.pop(name, None)
                metrics.MODELS_LOADED.set(len(self.loaded))
        metrics.MODEL_UNLOADS.inc()
        log.info("model %s unloaded", name)

    def page(self, token: str | None, limit: int) -> dict:
        """Loaded models in name order after ``token`` (the last name of the page
        before), at most ``limit``; nextPageToken when more follow."""
        with self.lock:
            names = sorted(self.loaded)
            rows = [self.loaded[n] for n in names if token is None or n > token]
        answer: dict = {"models": [{"modelName": m.name, "modelUrl": m.url}
                                   for m in rows[:limit]]}
        if len(rows) > limit:
            answer["nextPageToken"] = rows[limit - 1].name
        return answer

    def describe(self, name: str) -> dict:
        loaded = self.loaded.get(name)
        if loaded is None:
            raise ApiError(404, f"model {name} is not loaded")
        return {"modelName": loaded.name, "modelUrl": loaded.url}


class ModelsHealth(MmsHealth):
    """MMS's health, as in single-model mode, once a model is loaded; before that MMS
    has nothing to run, and serve is ready to load. (A model whose worker processes are
    gone leaves MMS "Partial Healthy": serve keeps answering for the others, and
    replaces the container after DOGBREED_UNHEALTHY_EXIT_S, as for one model.)"""

    def __init__(self, mms_port: int, models: Models, group: int | None = None):
        super().__init__(mms_port, group)
        self.models = models

    def healthy(self) -> bool:
        if not self.models.has_models():
            self.status = "Healthy"
            return True
        return super().healthy()


# --- the HTTP side --------------------------------------------------------------------

def outcome(status: int) -> str:
    return {200: "loaded", 409: "conflict", 507: "no_memory"}.get(
        status, "refused" if status < 500 else "failed")


class _Api(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self):  # noqa: N802 - http.server's naming
        path, query = self._target()
        if path == "/models":
            try:
                token = (query.get("next_page_token") or [None])[0]
                limit = int((query.get("limit") or [PAGE_SIZE])[0])
            except ValueError:
                return self._error(ApiError(400, "limit must be a whole number"))
            if token is not None and not NAME.match(token):
                return self._error(ApiError(400, "next_page_token is not one this "
                                                 "container gave"))
            if not 1 <= limit <= MAX_PAGE_SIZE:
                return self._error(ApiError(400, f"limit must be 1 to {MAX_PAGE_SIZE}"))
            return self._json(200, self.server.models.page(token, limit))
        if match := MODEL_PATH.match(path):
            return self._run(lambda: self.server.models.describe(match[1]))
        return self._error(ApiError(404, "not found"))

    def do_POST(self):  # noqa: N802
        path, _ = self._target()
        if path != "/models":
            return self._error(ApiError(405, "method not allowed"))
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_LOAD_BODY:
            return self._error(ApiError(413, f"the body is over {MAX_LOAD_BODY} bytes"))
        try:
            request = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            request = None
        name, url = (request.get("model_name"), request.get("url")) if isinstance(
            request, dict) else (None, None)
        try:
            loaded = self.server.models.load(name, url)
        except ApiError as exc:
            metrics.MODEL_LOADS.labels(outcome(exc.status)).inc()
            level = logging.WARNING if exc.status >= 500 else logging.INFO
            log.log(level, "model %s not loaded (%d): %s", str(name)[:80], exc.status,
                    exc.message)
            return self._error(exc)
        metrics.MODEL_LOADS.labels("loaded").inc()
        self._json(200, {"modelName": loaded.name, "modelUrl": loaded.url,
                         "message": f"model {loaded.name} loaded: {loaded.classes} classes, "
                                    f"{loaded.image_size} px"})

    def do_DELETE(self):  # noqa: N802
        path, _ = self._target()
        match = MODEL_PATH.match(path)
        if not match:
            return self._error(ApiError(405, "method not allowed"))
        name = match[1]

        def unload():
            self.server.models.unload(name)
            return {"modelName": name, "message": f"model {name} unloaded"}
        self._run(unload)

    def _target(self) -> tuple[str, dict]:
        parts = urllib.parse.urlsplit(self.path)
        return urllib.parse.unquote(parts.path), urllib.parse.parse_qs(parts.query)

    def _run(self, call) -> None:
        try:
            self._json(200, call())
        except ApiError as exc:
            self._error(exc)

    def _error(self, exc: ApiError) -> None:
        self._json(exc.status, {"error": exc.message, "status": exc.status})

    def _json(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:  # a Unix socket has no client address
        return "nginx"

    def log_message(self, *args) -> None:  # nginx's access line has each request
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    models: Models


def serve_api(socket_path: Path, models: Models) -> _Server:
    """Answer the management paths on a Unix socket (nginx's ``models`` upstream), one
    thread per request: a load does not hold up a list, an unload or another load."""
    server = _Server(str(socket_path), _Api)
    server.models = models
    threading.Thread(target=server.serve_forever, daemon=True, name="models-api").start()
    return server
