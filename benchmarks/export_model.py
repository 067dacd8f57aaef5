"""Inside dogbreed-train: write the benchmark model with the training image's own code.

    docker run --rm -v $PWD/benchmarks:/bench:ro -v OUT:/out dogbreed-train:latest \
        python /bench/export_model.py --model resnet50 --image-size 224 --out /out

OUT/model/        model.onnx + model.json (dogbreed_train.artifacts.save_model: what a
                  training job leaves for dogbreed-serve)
OUT/model-torch/  model.pth, the same weights as a state_dict (for the baseline)

Random initialisation (no pretrained weights can be downloaded here): speed does not
depend on the weights' values.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dogbreed_contract.preprocess import Spec
from dogbreed_train import artifacts
from dogbreed_train.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, pretrained=False).eval()
    labels = [f"breed_{i:03d}" for i in range(args.classes)]
    spec = Spec() if args.image_size == 224 else Spec.for_size(args.image_size)
    (args.out / "model").mkdir(parents=True, exist_ok=True)
    (args.out / "model-torch").mkdir(parents=True, exist_ok=True)
    artifacts.save_model(model, args.out / "model", labels=labels,
                         class_folders=[f"{i + 1:03d}.{n}" for i, n in enumerate(labels)],
                         spec=spec, architecture=args.model,
                         hyperparameters={"model": args.model, "pretrained": False,
                                          "note": "benchmark model, random init"},
                         summary={})
    torch.save(model.state_dict(), args.out / "model-torch" / "model.pth")
    print(f"wrote {args.out}/model (ONNX) and {args.out}/model-torch/model.pth")


if __name__ == "__main__":
    main()
