"""A source-project-style SageMaker inference script (the benchmark baseline).

model_fn / input_fn / predict_fn / output_fn, PIL + torchvision transforms, one image
per call, eager PyTorch: what the course projects deployed. The weights are the same
ResNet-50 (133 classes) the ONNX model was exported from, saved as a state_dict.
"""
import io
import json
import logging
import os

import torch
import torchvision.models as models
import torchvision.transforms as transforms
from PIL import Image

logger = logging.getLogger(__name__)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def net(num_classes=133):
    model = models.resnet50(weights=None)
    num_features = model.fc.in_features
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.2),
                                   torch.nn.Linear(num_features, num_classes))
    return model


def model_fn(model_dir):
    model = net()
    with open(os.path.join(model_dir, "model.pth"), "rb") as f:
        model.load_state_dict(torch.load(f, map_location=device))
    model.to(device).eval()
    logger.info("model loaded")
    return model


def input_fn(request_body, content_type="image/jpeg"):
    if content_type in ("image/jpeg", "image/png", "application/x-image"):
        return Image.open(io.BytesIO(request_body)).convert("RGB")
    raise Exception(f"Requested unsupported ContentType: {content_type}")


def predict_fn(input_object, model):
    transform = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    input_object = transform(input_object).unsqueeze(0).to(device)
    with torch.no_grad():
        prediction = model(input_object)
    return prediction


def output_fn(prediction, accept="application/json"):
    probs = torch.softmax(prediction, dim=1)[0]
    top = torch.topk(probs, 5)
    return json.dumps({"predictions": [
        {"index": int(i), "probability": float(p)} for p, i in zip(top.values, top.indices, strict=True)]})
