"""model.json: the card a training job writes next to model.onnx, and the server reads.

    card = ModelCard(labels=[...], spec=Spec.for_size(224), architecture="resnet50", ...)
    card.save(model_dir)             # training, at the end of a job
    card = ModelCard.load(model_dir) # serving at start-up, the scripts, the benchmarks

``load`` checks everything the server relies on and raises ``ModelCardError`` with
a message that says what to do. A card carries ``schema_version``; one written by a
dogbreed-train with another schema (or none) is refused with ``SchemaVersionError``
rather than half-read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelCardError, SchemaVersionError
from .preprocess import Spec

FILE = "model.json"
MODEL_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# Raised whenever a field is added, removed or changes meaning.
SCHEMA_VERSION = 1

# What to do about any broken model directory.
REDO = ("deploy the model.tar.gz that a dogbreed-train job wrote (model.onnx and "
        "model.json), or train again")


@dataclass(frozen=True)
class ModelCard:
    labels: list[str]
    spec: Spec
    class_folders: list[str] = field(default_factory=list)
    architecture: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    model_file: str = MODEL_FILE
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "format": "onnx",
            "model_file": self.model_file,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "output": "logits",
            "labels": list(self.labels),
            "class_folders": list(self.class_folders),
            "preprocess": self.spec.to_dict(),
            "architecture": self.architecture,
            "hyperparameters": self.hyperparameters,
            "metrics": self.metrics,
            "created_by": self.created_by,
        }

    def save(self, model_dir: str | Path) -> Path:
        """Write model.json atomically (a reader never sees half a card); return its path."""
        path = Path(model_dir) / FILE
        tmp = path.with_name(f".{FILE}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(self.to_dict(), indent=2).encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk leaves no temporary file in the model
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> "ModelCard":
        path = Path(model_dir) / FILE
        if not path.is_file():
            raise ModelCardError(f"{path} is missing: {REDO}")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelCardError(f"{path} cannot be read ({exc.__class__.__name__}): "
                                 f"{REDO}") from None
        return cls.parse(text, where=str(path))

    @classmethod
    def parse(cls, text: str | bytes, where: str = FILE) -> "ModelCard":
        """A card from model.json's text (``where`` names it in messages: a path, a tar member)."""
        try:
            meta = json.loads(text)
        except UnicodeDecodeError as exc:
            raise ModelCardError(f"{where} cannot be read ({exc.__class__.__name__}): "
                                 f"{REDO}") from None
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{where} is not valid JSON (line {exc.lineno}, column "
                                 f"{exc.colno}: {exc.msg}): {REDO}") from None
        if not isinstance(meta, dict):
            raise ModelCardError(f"{where} holds a JSON {type(meta).__name__}, not an "
                                 f"object: {REDO}")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            written = (f"schema version {version!r}" if version is not None
                       else "no schema version")
            raise SchemaVersionError(
                f"{where} has {written}, but this image reads model cards of schema "
                f"version {SCHEMA_VERSION}: the model comes from another release of "
                f"dogbreed-train. Serve it with the dogbreed-serve of that release, or "
                f"train it again with this release's dogbreed-train.")
        missing = [k for k in ("labels", "preprocess", "input_name", "model_file")
                   if k not in meta]
        if missing:
            raise ModelCardError(f"{where} lacks {', '.join(missing)}: {REDO}")
        labels = meta["labels"]
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(label, str) for label in labels)):
            raise ModelCardError(f"{where}: labels must be a non-empty list of names: {REDO}")
        try:
            spec = Spec.from_dict(meta["preprocess"])
        except (KeyError, TypeError, ValueError):
            raise ModelCardError(f"{where}: preprocess must have image_size, resize_size, "
                                 f"mean and std: {REDO}") from None
        if not (0 < spec.image_size <= spec.resize_size) or len(spec.mean) != 3 or len(
                spec.std) != 3:
            raise ModelCardError(f"{where}: preprocess has impossible values "
                                 f"{meta['preprocess']}: {REDO}")
        for key in ("model_file", "input_name"):
            if not isinstance(meta[key], str):
                raise ModelCardError(f"{where}: model_file and input_name must be strings: "
                                     f"{REDO}")
        return cls(
            labels=list(labels), spec=spec,
            class_folders=list(meta.get("class_folders") or []),
            architecture=str(meta.get("architecture") or ""),
            hyperparameters=dict(meta.get("hyperparameters") or {}),
            metrics=dict(meta.get("metrics") or {}),
            created_by=str(meta.get("created_by") or ""),
            model_file=meta["model_file"], input_name=meta["input_name"],
            output_name=str(meta.get("output_name") or OUTPUT_NAME),
            schema_version=version)
