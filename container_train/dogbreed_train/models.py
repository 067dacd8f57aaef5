"""The backbones (backbones.py names them), their pretrained weights, and the
classifier head we put on them.

Weights come, in this order, from: a ``weights`` channel (network-isolated jobs),
torchvision's cache under $TORCH_HOME (filled at image build time with the
PRETRAINED_MODELS build arg), or a download from torchvision's URL.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .backbones import BACKBONES
from .errors import UserError

log = logging.getLogger(__name__)


def make_head(in_features: int, hidden_units: tuple[int, ...], dropout: float,
              num_classes: int) -> nn.Sequential:
    """[Dropout, Linear, ReLU] per hidden layer, then Dropout and the output Linear."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden_units:
        layers += [nn.Dropout(dropout), nn.Linear(width, units), nn.ReLU(inplace=True)]
        width = units
    layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The final classification layer: (parent module, attribute name, layer)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name
    if found is None:
        raise ValueError("backbone has no Linear classifier")
    parent_name, _, attr = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def weights_enum(name: str):
    import torchvision.models as tvm

    return getattr(tvm, BACKBONES[name].weights).DEFAULT


def _weights_file(weights_dir: Path | None, name: str) -> Path | None:
    """A file for this backbone in the weights channel: <name>.pth or torchvision's filename."""
    if weights_dir is None or not weights_dir.is_dir():
        return None
    tv_name = Path(weights_enum(name).url).name
    for candidate in (f"{name}.pth", f"{name}.pt", tv_name):
        path = weights_dir / candidate
        if path.is_file():
            return path
    return None


def pretrained_state_dict(name: str, weights_dir: Path | None) -> dict[str, torch.Tensor]:
    """ImageNet weights for a backbone, from the weights channel, the cache, or the web."""
    path = _weights_file(weights_dir, name)
    if path is not None:
        log.info("loading %s weights from the weights channel: %s", name, path.name)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"could not read weights file {path.name} in the weights "
                            f"channel: {exc}") from None
    weights = weights_enum(name)
    try:
        # Uses $TORCH_HOME/hub/checkpoints when the file is already there.
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise UserError(
            f"could not get pretrained {name} weights ({weights.url}): {exc}. "
            f"If the job has no internet access, put {Path(weights.url).name} or {name}.pth "
            "into a 'weights' channel, bake it into the image (build arg "
            "PRETRAINED_MODELS), or set pretrained=false."
        ) from None


def build_model(name: str, num_classes: int, hidden_units: tuple[int, ...] = (),
                dropout: float = 0.0, pretrained: bool = True,
                freeze_backbone: bool = False, weights_dir: Path | None = None) -> nn.Module:
    """A torchvision backbone with a fresh head for ``num_classes`` classes."""
    import torchvision.models as tvm

    model = getattr(tvm, BACKBONES[name].builder)(weights=None)
    if pretrained:
        state = pretrained_state_dict(name, weights_dir)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"weights do not fit {name}: {str(exc).splitlines()[0]}") from None
    if freeze_backbone:
        for param in model.parameters():
            param.requires_grad_(False)
    parent, attr, old = _last_linear(model)
    setattr(parent, attr, make_head(old.in_features, hidden_units, dropout, num_classes))
    return model
