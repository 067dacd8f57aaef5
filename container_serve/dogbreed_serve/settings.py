"""Serving settings from the environment, with the toolkit's names where it has them."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


@dataclass(frozen=True)
class Settings:
    model_dir: str
    top_k: int               # default answers per image; per request via custom attributes
    max_batch: int           # images MMS may hand one worker call
    max_batch_delay_ms: int  # how long MMS waits for more requests to fill a batch
    intra_op_threads: int    # ONNX Runtime threads per worker (0 = CPUs / workers)
    ort_spinning: bool       # ORT's idle intra-op threads busy-wait (ORT's own default)

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
            # (docs/benchmarks.md: 5 -> 1 ms and no spinning, measured side by side).
            max_batch_delay_ms=_int("DOGBREED_MAX_BATCH_DELAY_MS", 1),
            intra_op_threads=_int("DOGBREED_THREADS_PER_WORKER", 0),
            # Spinning threads burn the cores that JPEG decoding, MMS and nginx need.
            ort_spinning=_int("DOGBREED_ORT_SPINNING", 0) != 0,
        )
