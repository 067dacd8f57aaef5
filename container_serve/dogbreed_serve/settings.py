"""Serving settings from the environment, with the toolkit's names where it has them."""

from __future__ import annotations

import os
from dataclasses import dataclass

# serve's folder for this start (MMS's temporary files, sockets, /metrics' files, the
# decode memory budget); its workers find it here. READY_FILE appears in it once the
# model is registered: a worker that starts later replaces one that died.
RUN_DIR_ENV = "DOGBREED_RUN_DIR"
READY_FILE = "ready"


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


@dataclass(frozen=True)
class Settings:
    model_dir: str
    top_k: int               # default answers per image; per request via custom attributes
    max_batch: int           # images MMS may hand one worker call
    max_batch_delay_ms: int  # how long MMS waits for more requests to fill a batch
    intra_op_threads: int    # ONNX Runtime threads per worker (0 = CPUs / workers)
    ort_spinning: bool       # ORT's idle intra-op threads busy-wait (ORT's own default)
    decode_timeout_s: float  # a request's image decoding stops after this long (413)

    @classmethod
    def from_env(cls) -> "Settings":
        base = os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")
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
        )
