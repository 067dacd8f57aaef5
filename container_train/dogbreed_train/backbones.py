"""The backbones the image trains: names, torchvision builders and weights.

No torch here: the hyperparameter schema (config.py) takes its choice of models
from this table, and the job is validated before torch is imported (job_config.py).
models.py builds them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    builder: str  # torchvision.models function name
    weights: str  # torchvision weights enum, DEFAULT member is used


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("resnet18", "ResNet18_Weights"),
    "resnet34": Backbone("resnet34", "ResNet34_Weights"),
    "resnet50": Backbone("resnet50", "ResNet50_Weights"),
    "vgg16": Backbone("vgg16", "VGG16_Weights"),
    "alexnet": Backbone("alexnet", "AlexNet_Weights"),
    "efficientnet_b0": Backbone("efficientnet_b0", "EfficientNet_B0_Weights"),
    "efficientnet_v2_s": Backbone("efficientnet_v2_s", "EfficientNet_V2_S_Weights"),
    "convnext_tiny": Backbone("convnext_tiny", "ConvNeXt_Tiny_Weights"),
    "mobilenet_v3_large": Backbone("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
}
