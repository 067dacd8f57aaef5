"""Hyperparameters: names, types, defaults and ranges in one place.

SageMaker writes every hyperparameter as a string into hyperparameters.json;
pydantic turns them into typed values and says exactly which one is wrong. The
SDK's framework estimators and its tuners JSON-encode each value first
(``"\"resnet18\""``, ``"\"8\""``), and the training toolkit decodes them: both
forms are accepted.
Keys SageMaker adds itself (``sagemaker_*``, ``_tuning_*``) are ignored; any
other unknown key fails the job, so a typo never trains with a silent default.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .backbones import BACKBONES
from .errors import UserError

ModelName = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]


class Hyperparameters(BaseModel):
    """Every hyperparameter the training image understands (docs/training.md has the table)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True,
                              protected_namespaces=())

    model: ModelName = Field("resnet50", description="torchvision backbone")
    pretrained: bool = Field(True, description="start from torchvision's ImageNet weights")
    hidden_units: tuple[int, ...] = Field(
        (), alias="hidden-units",
        description="classifier head layer sizes, e.g. [750,500,250]; empty = one linear layer")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before each head layer")
    freeze_backbone: bool = Field(
        False, alias="freeze-backbone", description="train only the classifier head")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimizer")
    lr: float = Field(3e-4, gt=0.0, le=10.0, description="peak learning rate")
    eps: float = Field(1e-8, gt=0.0, le=1e-2, description="Adam/AdamW epsilon")
    weight_decay: float = Field(0.01, alias="weight-decay", ge=0.0, le=1.0,
                                description="weight decay")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    lr_scheduler: Literal["cosine", "step", "none"] = Field(
        "cosine", alias="lr-scheduler", description="learning-rate schedule over the epochs")
    label_smoothing: float = Field(0.0, alias="label-smoothing", ge=0.0, lt=1.0,
                                   description="cross-entropy label smoothing")
    batch_size: int = Field(64, alias="batch-size", ge=1, le=4096,
                            description="training batch size (per process)")
    test_batch_size: int = Field(128, alias="test-batch-size", ge=1, le=4096,
                                 description="evaluation batch size")
    epochs: int = Field(10, ge=1, le=1000, description="passes over the training data")
    max_steps_per_epoch: int = Field(
        0, alias="max-steps-per-epoch", ge=0,
        description="cap on training steps per epoch (0 = no cap); for smoke tests")
    image_size: int = Field(224, alias="image-size", ge=32, le=1024,
                            description="square input size in pixels")
    augment: bool = Field(True, description="random resized crop + horizontal flip")
    valid_fraction: float = Field(
        0.1, alias="valid-fraction", gt=0.0, lt=1.0,
        description="share of train held out when there is no valid channel")
    bad_images: Literal["skip", "fail"] = Field(
        "skip", alias="bad-images", description="what to do with unreadable images")
    workers: int = Field(-1, ge=-1, le=64,
                         description="data-loader workers per process; -1 = from the CPU count")
    data_path: Literal["auto", "cpu", "gpu"] = Field(
        "auto", alias="data-path",
        description="where training images are decoded and augmented: gpu = JPEGs decoded, "
                    "cropped and flipped in batches on the training device, cpu = in the "
                    "loader workers; auto = gpu where training runs on CUDA")
    loader_timeout: float = Field(
        300.0, alias="loader-timeout", gt=0.0, le=86400.0,
        description="seconds any one wait for a batch may last before the job stops with "
                    "a LoaderStalled failure (stalled or dead workers, a read that never "
                    "returns)")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="random seed")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="mixed precision on GPU; auto = bf16 where supported, else fp16; "
                            "never on CPU")
    compile: bool = Field(False, description="torch.compile the training model (its "
                                            "first steps then take longer)")
    profile_steps: str = Field(
        "", alias="profile-steps", pattern=r"^(\d+-\d+)?$",
        description="torch.profiler trace of training steps START-END, e.g. 20-30; "
                    "written to the TensorBoard folder")

    record: bool = Field(True, description="record statistics, evaluate the rules, write "
                                           "TensorBoard events and report.html; false only "
                                           "to measure what recording costs")
    debug_interval: int = Field(100, alias="debug-interval", ge=1, le=100000,
                                description="steps between per-layer gradient and weight "
                                            "statistics (also the first 10 steps)")
    nan_loss: Literal["stop", "continue"] = Field(
        "stop", alias="nan-loss", description="a NaN or infinite training loss stops the job "
                                              "(stop) or is only reported (continue)")

    @field_validator("hidden_units", mode="before")
    @classmethod
    def _parse_units(cls, value: Any) -> Any:
        """Accept '[750,500,250]', '750,500,250', '750 500 250', '' and lists."""
        if isinstance(value, str):
            text = value.strip()
            if text in ("", "[]", "none", "None"):
                return ()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list of integers: {value!r}") from exc
            return [part for part in text.replace(",", " ").split()]
        return value

    @field_validator("profile_steps")
    @classmethod
    def _check_window(cls, value: str) -> str:
        if value:
            start, end = (int(v) for v in value.split("-"))
            if end <= start:
                raise ValueError("END must be greater than START, e.g. 20-30")
        return value

    @field_validator("hidden_units")
    @classmethod
    def _check_units(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(u < 1 or u > 65536 for u in value):
            raise ValueError("each hidden layer needs between 1 and 65536 units")
        return value


def field_help() -> list[tuple[str, str, Any]]:
    """(name, description, default) for each hyperparameter, for --help and docs."""
    return [
        (f.alias or name, f.description or "", f.default)
        for name, f in Hyperparameters.model_fields.items()
    ]


def is_sagemaker_key(key: str) -> bool:
    """Keys SageMaker, the SDK and tuning jobs add on their own."""
    return key.startswith(("sagemaker_", "_"))


def unquote(value: Any) -> Any:
    """'"resnet18"' -> 'resnet18': a JSON-encoded string means the string itself."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def parse(raw: dict[str, Any]) -> Hyperparameters:
    """Validate raw hyperparameters (strings or values); raise UserError on any problem."""
    user = {k.replace("_", "-"): unquote(v) for k, v in raw.items() if not is_sagemaker_key(k)}
    try:
        return Hyperparameters.model_validate(user)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "hyperparameters"
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(n for n, _, _ in field_help()))
                problems.append(f"unknown hyperparameter '{key}' (known: {known})")
            else:
                got = err.get("input")
                problems.append(f"'{key}'={got!r}: {err['msg']}")
        raise UserError("invalid hyperparameters: " + "; ".join(problems)) from None


def to_dict(hps: Hyperparameters) -> dict[str, Any]:
    """Hyperparameters by their public (hyphenated) names, JSON-ready."""
    return hps.model_dump(by_alias=True, mode="json")
