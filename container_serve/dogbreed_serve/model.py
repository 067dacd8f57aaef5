"""The exported network, run by ONNX Runtime, with its model card (labels, preprocessing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dogbreed_contract import ModelCardError
from dogbreed_contract.model_card import FILE as MODEL_CARD_FILE
from dogbreed_contract.model_card import REDO, ModelCard

# benchmarks/forward.py runs in old and new images alike and imports it from here.


def session_options(intra_op_threads: int, spinning: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    if not spinning:
        # Idle intra-op threads sleep instead of busy-waiting, leaving the cores to
        # the request decoding, MMS and nginx (DOGBREED_ORT_SPINNING=1 restores it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model_dir: Path, card: ModelCard, intra_op_threads: int,
                 spinning: bool = False):
    """An ONNX Runtime session, or ModelCardError saying why the file cannot be one."""
    import onnxruntime as ort

    path = model_dir / card.model_file
    if not path.is_file():
        raise ModelCardError(f"{path} is missing (model.json names it as the model file): {REDO}")
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(
            ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels (GPU variant)
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), session_options(intra_op_threads, spinning),
                                    providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise ModelCardError(f"{path} is not an ONNX model ONNX Runtime can load "
                         f"({type(exc).__name__}{': ' + first if first else ''}): {REDO}") from None


def validate(model_dir: str | Path, card: ModelCard, spinning: bool = False) -> dict:
    """Everything serve checks before MMS starts, given the card it loaded; returns what
    /metrics shows of the model.

    The ONNX session, its input, and its output width against the card's labels: a
    model with more outputs than labels would fail every request.
    """
    import onnxruntime as ort

    model_dir = Path(model_dir)
    session = open_session(model_dir, card, intra_op_threads=1, spinning=spinning)
    inputs = {i.name: i for i in session.get_inputs()}
    if card.input_name not in inputs:
        raise ModelCardError(f"{model_dir / card.model_file} has no input named "
                         f"'{card.input_name}' (it has {', '.join(inputs)}): {REDO}")
    width = session.get_outputs()[0].shape[-1]
    if not isinstance(width, int):  # a symbolic axis: run one image to see
        size = card.spec.image_size
        try:
            width = session.run(None, {card.input_name: np.zeros((1, 3, size, size),
                                                                 np.float32)})[0].shape[-1]
        except Exception as exc:  # noqa: BLE001
            raise ModelCardError(f"{model_dir / card.model_file} fails on a 1x3x{size}x{size} "
                             f"input ({type(exc).__name__}): {REDO}") from None
    if width != len(card.labels):
        raise ModelCardError(f"{model_dir / card.model_file} has {width} outputs but "
                         f"{model_dir / MODEL_CARD_FILE} has {len(card.labels)} labels: the two "
                         f"files come from different models: {REDO}")
    return {"classes": len(card.labels), "input_size": card.spec.image_size,
            "runtime": f"onnxruntime {ort.__version__}",
            "execution_provider": session.get_providers()[0]}


class Classifier:
    """What the handler's predict and encode stages need of a model (tests pass a fake
    with the same attributes: labels, spec, device, runtime, provider)."""

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0,
                 spinning: bool = False):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        card = ModelCard.load(model_dir)
        self.labels = card.labels
        self.spec = card.spec
        self.input_name = card.input_name
        self.session = open_session(model_dir, card, intra_op_threads, spinning)
        self.runtime = f"onnxruntime {ort.__version__}"
        self.provider = self.session.get_providers()[0]
        self.device = "gpu" if self.provider.startswith("CUDA") else "cpu"

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, classes) softmax probabilities."""
        logits = self.session.run(None, {self.input_name: batch})[0].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def warm_up(self) -> None:
        """One batch-1 inference at start-up, so the first request does not pay for it."""
        size = self.spec.image_size
        self.probabilities(np.zeros((1, 3, size, size), np.float32))

