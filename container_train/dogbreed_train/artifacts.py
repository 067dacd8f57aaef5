"""What a finished job leaves behind.

/opt/ml/model (packed into model.tar.gz, all the serving image reads):
    model.onnx   the network, batch dimension dynamic
    model.json   the model card (dogbreed_contract.model_card): labels, preprocessing,
                 input/output names, metrics summary, schema version
/opt/ml/output/data (uploaded as output.tar.gz):
    metrics.json, training_curves.png, test_predictions.json (with a test channel)
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from dogbreed_contract.model_card import FILE as MODEL_CARD_FILE
from dogbreed_contract.model_card import INPUT_NAME, MODEL_FILE, OUTPUT_NAME, ModelCard
from dogbreed_contract.preprocess import Spec

from . import __version__
from .errors import UserError
from .files import replacing, write_bytes

log = logging.getLogger(__name__)


def _writable_dir(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise UserError(f"cannot write to the {what} directory {path}: {exc.strerror or exc}. "
                        "Check that it is writable and has free space.") from None
    return path


def check_writable(model_dir: Path, output_data_dir: Path) -> None:
    """Fail at the start, not after hours of training, if results cannot be saved."""
    _writable_dir(model_dir, "model")
    _writable_dir(output_data_dir, "output data")


def export_onnx(model: nn.Module, spec: Spec, path: Path) -> None:
    """Export with a dynamic batch axis (the server batches requests)."""
    model = model.eval().to("cpu", memory_format=torch.contiguous_format).float()
    example = torch.zeros(2, 3, spec.image_size, spec.image_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},), verbose=False)
    with replacing(path) as tmp:
        program.save(str(tmp))


def save_model(model: nn.Module, model_dir: Path, *, labels: list[str],
               class_folders: list[str], spec: Spec, architecture: str,
               hyperparameters: dict, summary: dict) -> None:
    try:
        export_onnx(model, spec, model_dir / MODEL_FILE)
        ModelCard(labels=labels, spec=spec, class_folders=class_folders,
                  architecture=architecture, hyperparameters=hyperparameters, metrics=summary,
                  created_by=f"dogbreed-train {__version__}, torch {torch.__version__}",
                  model_file=MODEL_FILE, input_name=INPUT_NAME,
                  output_name=OUTPUT_NAME).save(model_dir)
    except OSError as exc:
        raise UserError(f"could not save the model to {model_dir}: {exc}. "
                        "Check free space and permissions.") from None
    log.info("saved %s and %s to %s", MODEL_FILE, MODEL_CARD_FILE, model_dir)


def save_json(path: Path, obj) -> None:
    try:
        write_bytes(path, json.dumps(obj, indent=2).encode())
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc}") from None


def save_metrics(output_data_dir: Path, record: dict) -> None:
    save_json(output_data_dir / "metrics.json", record)
    try:
        plot_curves(record["history"], output_data_dir / "training_curves.png")
    except OSError as exc:
        raise UserError(f"could not write metrics to {output_data_dir}: {exc}") from None


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train against valid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for split, style in (("train", "-o"), ("valid", "-s")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        ax_acc.plot(epochs, [h[f"{split}_acc"] for h in history], style, label=split)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
