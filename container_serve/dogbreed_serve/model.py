"""The exported network, run by ONNX Runtime, with its labels and preprocessing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .preprocess import Spec
from .settings import Settings

METADATA_FILE = "model.json"


class ModelError(Exception):
    """The model directory is not what dogbreed-train writes."""


class Classifier:
    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        meta_path = model_dir / METADATA_FILE
        if not meta_path.is_file():
            raise ModelError(f"{meta_path} is missing: /opt/ml/model must hold what "
                             "dogbreed-train writes (model.onnx and model.json)")
        meta = json.loads(meta_path.read_text())
        self.labels: list[str] = list(meta["labels"])
        self.spec = Spec.from_dict(meta["preprocess"])
        self.input_name = meta["input_name"]
        if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(
                ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels (GPU variant)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        if not Settings.from_env().ort_spinning:
            # Idle intra-op threads sleep instead of busy-waiting, leaving the cores to
            # the request decoding, MMS and nginx (DOGBREED_ORT_SPINNING=1 restores it).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(model_dir / meta["model_file"]), options,
                                            providers=providers)
        self.device = "gpu" if self.session.get_providers()[0].startswith("CUDA") else "cpu"

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, classes) softmax probabilities."""
        logits = self.session.run(None, {self.input_name: batch})[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def top_k(self, probs: np.ndarray, k: int) -> list[dict]:
        k = max(1, min(k, len(self.labels)))
        order = np.argsort(-probs, kind="stable")[:k]
        return [{"label": self.labels[i], "index": int(i), "probability": float(probs[i])}
                for i in order]

    def warm_up(self) -> None:
        """One batch-1 inference at start-up, so the first request does not pay for it."""
        size = self.spec.image_size
        self.probabilities(np.zeros((1, 3, size, size), np.float32))


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
