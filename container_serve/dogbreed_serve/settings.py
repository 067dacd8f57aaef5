"""Serving settings: the environment read once per process, into one frozen object.

``serve`` builds one ``Settings`` at start and passes it down (start-up, the MMS and
nginx configuration, the supervisor); each MMS worker builds its own once, in the
handler's ``initialize``. Both read the same environment on the same machine, so
they agree on everything, the worker count included: MMS's context does not carry
it (its system properties are model_dir, gpu_id, batch_size, server_name and
server_version), and nothing is written into the environment for the workers to
read back.

The SageMaker variables are read by the inference toolkit's ``Environment``, with its
names and defaults (SAGEMAKER_BIND_TO_PORT, SAGEMAKER_SAFE_PORT_RANGE,
SAGEMAKER_MODEL_SERVER_WORKERS, SAGEMAKER_MODEL_SERVER_TIMEOUT,
SAGEMAKER_MAX_PAYLOAD_IN_MB, SAGEMAKER_MODEL_SERVER_VMARGS, SAGEMAKER_STARTUP_TIMEOUT);
SAGEMAKER_MULTI_MODEL=true (multi_model.py) is what SageMaker sets for a multi-model
endpoint; the rest are ours (DOGBREED_*).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# serve's folder for this start (MMS's temporary files, sockets, /metrics' files, the
# decode memory budget); its workers find it here. READY_FILE appears in it once the
# model is registered: a worker that starts later replaces one that died.
RUN_DIR_ENV = "DOGBREED_RUN_DIR"
READY_FILE = "ready"
# Multi-model mode: one empty file per model (named after it) in this folder of the run
# folder, once its load has returned; a worker of that model that starts later
# replaces one that died.
LOADED_DIR = "loaded"

DEFAULT_MAX_BODY = 6 * 1024 * 1024  # SageMaker's payload limit for real-time endpoints


class SettingsError(ValueError):
    """An environment variable serve cannot use: the one line serve logs before it
    exits 2, naming the variable and what it takes."""


def shown(value: str, limit: int = 40) -> str:
    """An environment value as an error line quotes it: escaped (so it stays one line)
    and cut short."""
    text = ascii(value)
    return text if len(text) <= limit + 2 else text[:limit + 1] + "...'"


def _whole(low: int, high: int | None = None):
    """A rule: a whole number from ``low`` (to ``high``)."""
    allowed = (f"a whole number from {low} to {high}" if high is not None
               else f"a whole number, {low} or more")

    def check(value: str) -> str | None:
        try:
            number = int(value)
        except ValueError:
            return allowed
        return None if number >= low and (high is None or number <= high) else allowed
    return check


def _seconds(value: str) -> str | None:
    """A rule: a number of seconds above 0 (not nan or inf, which no deadline reaches)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    return None if math.isfinite(number) and number > 0 else "a number of seconds above 0"


def _one_of(*choices: str):
    """A rule: one of ``choices``, in any case."""
    def check(value: str) -> str | None:
        return None if value.lower() in choices else " or ".join(choices)
    return check


# What each variable this image reads as a number or a choice may hold; anything else
# is refused in one line before serve starts anything (exit 2). Unset or empty means
# the default. Free text (paths, JVM flags) takes anything; SAGEMAKER_SAFE_PORT_RANGE is
# checked where it is parsed (config_files.port_range). The toolkit's Environment
# parses SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS too, which serve does not use.
RULES = {
    "DOGBREED_TOP_K": _whole(1),
    "DOGBREED_MAX_BATCH": _whole(1),
    "DOGBREED_MAX_BATCH_DELAY_MS": _whole(0),
    "DOGBREED_THREADS_PER_WORKER": _whole(0),
    "DOGBREED_ORT_SPINNING": _one_of("0", "1"),
    "DOGBREED_DECODE_TIMEOUT_S": _seconds,
    "DOGBREED_DECODE_MEMORY_MB": _whole(0),
    "DOGBREED_UNHEALTHY_EXIT_S": _whole(1),
    "DOGBREED_LOG_FORMAT": _one_of("text", "json"),  # read by logs.json_format
    "SAGEMAKER_MODEL_SERVER_WORKERS": _whole(1),
    "SAGEMAKER_BIND_TO_PORT": _whole(1, 65535),
    # MMS keeps its request size limit (this plus 64 KiB) in a 32-bit integer.
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": _whole(1, 2047),
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": _whole(1),
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": _whole(1),
    "SAGEMAKER_STARTUP_TIMEOUT": _whole(1),
    "SAGEMAKER_MULTI_MODEL": _one_of("true", "false"),
    "DOGBREED_METRICS_MAX_MODELS": _whole(0),
}


def check_environment() -> None:
    """Raise SettingsError for the first variable of RULES whose value is not allowed."""
    for name, rule in RULES.items():
        value = os.environ.get(name, "")
        if value.strip() and (allowed := rule(value.strip())):
            raise SettingsError(f"environment variable {name}={shown(value)} is not allowed: "
                                f"it takes {allowed}, or leave it unset")


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _bool(name: str) -> bool:
    """true or false, in any case (RULES has checked it); unset or empty is false."""
    return os.environ.get(name, "").strip().lower() == "true"


def _float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


def default_workers() -> int:
    """One worker on a GPU; on CPUs two, so that one decodes while the other computes.

    Each CPU worker gets ONNX Runtime threads for all the CPUs (threads_for).
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return 1
    return min(2, os.cpu_count() or 1)


# Workers per model on a multi-model endpoint: one worker of a ResNet-50 at 224 px
# took 251 MiB once busy, and each more worker as much again (multi_model.py), so one
# per model fits twice the models; a model busy enough to need two is one for an
# endpoint of its own.
MULTI_MODEL_WORKERS = 1


def threads_for(workers: int) -> int:
    """ONNX Runtime threads per worker: twice the CPUs shared out, at most all of them.

    A worker spends part of each call decoding JPEGs on one core, so with exactly
    CPUs/workers threads some cores would idle while it decodes. Two workers with
    all the CPUs each let one decode while the other runs the network at full width,
    and a lone request still gets every core. Idle threads sleep, not spin
    (DOGBREED_ORT_SPINNING), so the 2x oversubscription costs little
    (docs/benchmarks.md: measured on 2 CPUs).
    """
    cpus = os.cpu_count() or 1
    return max(1, min(cpus, 2 * cpus // max(1, workers)))


@dataclass(frozen=True)
class Settings:
    model_dir: str = "/opt/ml/model"
    top_k: int = 5                  # default answers per image; per request via custom attributes
    max_batch: int = 8              # images MMS may hand one worker call
    max_batch_delay_ms: int = 1     # how long MMS waits for more requests to fill a batch
    intra_op_threads: int = 0       # ONNX Runtime threads per worker (0 = threads_for)
    ort_spinning: bool = False      # ORT's idle intra-op threads busy-wait (ORT's own default)
    decode_timeout_s: float = 10.0  # a request's image decoding stops after this long (413)
    decode_memory_mb: int = 0       # decode memory for the container (0 = from its limit)
    unhealthy_exit_s: int = 30      # serve exits after MMS has had no working worker this long
    workers: int = 1                # MMS worker processes
    port: int = 8080                # the public port (nginx)
    safe_port_range: str | None = None  # where MMS's loopback ports may lie
    max_body: int = DEFAULT_MAX_BODY    # the largest request body, in bytes
    timeout_s: int = 60             # a worker's answer to one batch (MMS and nginx)
    startup_timeout_s: int = 600    # MMS's management API answers within this
    jvm_args: str | None = None     # SAGEMAKER_MODEL_SERVER_VMARGS (None: config_files.JVM_ARGS)
    run_dir: str | None = None      # serve's run folder, as the workers see it (RUN_DIR_ENV)
    multi_model: bool = False       # SAGEMAKER_MULTI_MODEL: SageMaker's multi-model API
    models_root: str = "/opt/ml/models"  # multi-model: where SageMaker unpacks the models
    metrics_max_models: int = 20    # multi-model: models named in /metrics; the rest "other"

    @property
    def threads_per_worker(self) -> int:
        return self.intra_op_threads or threads_for(self.workers)

    def ready_marker(self, model_name: str) -> Path | None:
        """The file that exists once the model ``model_name`` has been loaded (serve
        creates it): a worker that finds it at start replaces one that died. None
        outside a run folder (host tests)."""
        if not self.run_dir:
            return None
        if self.multi_model:
            return Path(self.run_dir) / LOADED_DIR / model_name
        return Path(self.run_dir) / READY_FILE

    @classmethod
    def from_env(cls) -> "Settings":
        """The one reading of the environment for this process (the inference toolkit
        is imported here, so that host tests can build Settings without it). Raises
        SettingsError for a value RULES does not allow."""
        from sagemaker_inference.environment import Environment

        check_environment()
        env = Environment()
        base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
        # What SageMaker sets for a Model created with Mode MultiModel, as the AWS
        # framework containers read it.
        multi_model = _bool("SAGEMAKER_MULTI_MODEL")
        return cls(
            model_dir=os.environ.get("DOGBREED_MODEL_DIR", os.path.join(base, "model")),
            top_k=_int("DOGBREED_TOP_K", 5),
            max_batch=_int("DOGBREED_MAX_BATCH", 8),
            # MMS waits this long for a second request even when none comes, so it is
            # added to every request at low load. Under load, requests queue while the
            # worker is busy and the next batch takes them at once: 1 ms is enough
            # (docs/benchmarks.md: 1 ms against 5 ms, measured side by side).
            max_batch_delay_ms=_int("DOGBREED_MAX_BATCH_DELAY_MS", 1),
            intra_op_threads=_int("DOGBREED_THREADS_PER_WORKER", 0),
            # Spinning threads burn the cores that JPEG decoding, MMS and nginx need.
            ort_spinning=_int("DOGBREED_ORT_SPINNING", 0) != 0,
            decode_timeout_s=_float("DOGBREED_DECODE_TIMEOUT_S", 10.0),
            decode_memory_mb=_int("DOGBREED_DECODE_MEMORY_MB", 0),
            # MMS restarts a worker whose forked child died within a second or two. When
            # the worker's parent process dies too, MMS keeps reconnecting to a socket
            # nobody listens on: requests hang and MMS's /ping answers 200 {"status":
            # "Unhealthy"}, which SageMaker counts as healthy. serve exits instead.
            unhealthy_exit_s=_int("DOGBREED_UNHEALTHY_EXIT_S", 30),
            workers=int(env.model_server_workers or (
                MULTI_MODEL_WORKERS if multi_model else default_workers())),
            port=int(env.inference_http_port),
            safe_port_range=env.safe_port_range,
            max_body=env.max_request_size or DEFAULT_MAX_BODY,
            timeout_s=int(env.model_server_timeout or 60),
            startup_timeout_s=int(env.startup_timeout),
            jvm_args=os.environ.get("SAGEMAKER_MODEL_SERVER_VMARGS") or None,
            run_dir=os.environ.get(RUN_DIR_ENV) or None,
            multi_model=multi_model,
            models_root=os.environ.get("DOGBREED_MODELS_DIR", os.path.join(base, "models")),
            metrics_max_models=_int("DOGBREED_METRICS_MAX_MODELS", 20),
        )
