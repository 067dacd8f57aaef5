"""report.html: one self-contained page about a training job (charts and thumbnails inlined).

Written at the end of every job into /opt/ml/output/data from the files the job
left there (metrics.json, statistics.json, rules.json, test_ or
valid_predictions.json, misclassified/). Rebuild it from a job's output with

    python -m dogbreed_train.report DIR_OR_OUTPUT_TAR_GZ [--out report.html]

matplotlib draws the charts (PNG, base64 in the page), jinja2 fills the template
report.html.j2 next to this file; the page fetches nothing from the network.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

from .files import replacing

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
THUMB_DIR, PAIRS_FILE = "misclassified", "misclassified.json"
PAIRS, THUMBS_PER_PAIR, THUMB_PX = 6, 4, 96


def write_safely(out_dir: Path) -> Path | None:
    """build(), but a failure is one warning: the report must never fail training."""
    try:
        path = build(out_dir)
    except Exception as exc:  # noqa: BLE001
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
        return None
    log.info("report: %s", path)
    return path


def thumbnails_safely(out_dir: Path, predictions: list[dict], evaluated) -> None:
    try:
        thumbnails(out_dir, predictions, evaluated)
    except Exception as exc:  # noqa: BLE001
        log.warning("thumbnails of misclassified images not written: %s: %s",
                    type(exc).__name__, exc)


def confused_pairs(predictions: list[dict], top: int = PAIRS) -> list[tuple[tuple, int]]:
    counts = Counter((r["label"], r["predicted"]) for r in predictions
                     if r["label"] != r["predicted"])
    return counts.most_common(top)


def thumbnails(out_dir: Path, predictions: list[dict], evaluated) -> None:
    """Small JPEGs of the most confused pairs' images, so the report can be rebuilt
    from the job's output alone (the data channels are gone by then)."""
    from PIL import Image

    split, root = evaluated or (None, None)
    pairs = []
    folder = out_dir / THUMB_DIR
    for n, ((label, predicted), count) in enumerate(confused_pairs(predictions)):
        images = []
        rows = [r for r in predictions if r["label"] == label and r["predicted"] == predicted]
        for i, r in enumerate(rows[:THUMBS_PER_PAIR]):
            name = f"{n:02d}-{i}.jpg"
            if root is not None:
                folder.mkdir(parents=True, exist_ok=True)
                with Image.open(Path(root) / r["image"]) as img:
                    img = img.convert("RGB")
                    img.thumbnail((THUMB_PX, THUMB_PX))
                    img.save(folder / name, quality=85)
            images.append({"file": name, "image": r["image"], "probability": r["probability"]})
        pairs.append({"label": label, "predicted": predicted, "count": count,
                      "images": images})
    (out_dir / PAIRS_FILE).write_text(json.dumps({"split": split, "pairs": pairs}, indent=1))


# ---- charts ----------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epoch_ticks(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _finite(values):
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else float("nan")
            for v in values]


def chart_curves(epochs: list[dict], steps: list) -> str:
    plt = _plt()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 3.8))
    if steps and epochs:
        per = max(1, len(steps) // max(1, len(epochs)))
        xs = [(i + 1) / per for i in range(len(steps))]
        ax_l.plot(xs, _finite([s[2] for s in steps]), color="#bbbbbb", lw=0.8,
                  label="train (each step)")
    e = [h["epoch"] for h in epochs]
    for split, style in (("train", "-o"), ("valid", "-s")):
        ax_l.plot(e, _finite([h[f"{split}_loss"] for h in epochs]), style, label=split)
        ax_a.plot(e, _finite([h[f"{split}_acc"] for h in epochs]), style, label=split)
    ax_l.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_a.set(title="Accuracy", xlabel="epoch", ylim=(0, 1))
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    _epoch_ticks(ax_l, ax_a)
    fig.tight_layout()
    return _png(fig)


def chart_time_split(epochs: list[dict]) -> str:
    plt = _plt()
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 3.4))
    e = [h["epoch"] for h in epochs]
    wait = [100 * h.get("data_wait", 0) for h in epochs]
    ax_t.bar(e, wait, color="#e4572e", label="waiting for data")
    ax_t.bar(e, [100 - w for w in wait], bottom=wait, color="#4c72b0", label="computing")
    ax_t.axhline(20, color="k", ls=":", lw=1, label="input-bound above 20%")
    ax_t.set(title="Training time: data wait vs compute", xlabel="epoch", ylabel="%",
             ylim=(0, 100))
    ax_t.legend(loc="lower right", fontsize=8)
    ax_r.plot(e, [h.get("images_per_s", 0) for h in epochs], "-o", color="#2a9d8f")
    ax_r.set(title="Throughput", xlabel="epoch", ylabel="images/s", ylim=(0, None))
    for ax in (ax_t, ax_r):
        ax.grid(alpha=0.3)
    _epoch_ticks(ax_t, ax_r)
    fig.tight_layout()
    return _png(fig)


def chart_system(system: dict) -> str | None:
    if not system or not system.get("t"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.2))
    t = system["t"]
    if system.get("gpu_util"):
        ax.plot(t, system["gpu_util"], label="GPU utilization %", color="#2a9d8f")
        ax.plot(t, system["gpu_mem"], label="GPU memory % of the GPU", color="#e9c46a")
    ax.plot(t, system.get("cpu", []), label="CPU utilization %", color="#4c72b0", alpha=0.6)
    title = "GPU utilization and memory" if system.get("gpu_util") else \
        "CPU utilization (no GPU in this job)"
    ax.set(title=title + " during training epochs", xlabel="seconds", ylim=(0, 105))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def chart_gradients(stats: dict) -> str | None:
    grads = stats.get("gradients") or []
    if not grads:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 3.0))
    steps = [g["step"] for g in grads]
    total = [math.sqrt(sum(v * v for v in g["l2"] if v is not None and math.isfinite(v)))
             for g in grads]
    small = [min((v for v in g["mean_abs"] if v is not None and math.isfinite(v)),
                 default=float("nan")) for g in grads]
    ax.semilogy(steps, total, "-o", ms=3, label="global gradient L2 norm")
    ax.semilogy(steps, small, "-s", ms=3, label="smallest layer mean |gradient|")
    ax.set(title="Gradients at the recorded steps", xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def per_class(predictions: list[dict], labels: list[str]):
    index = {lab: i for i, lab in enumerate(labels)}
    n = len(labels)
    matrix = [[0] * n for _ in range(n)]
    for r in predictions:
        if r["label"] in index and r["predicted"] in index:
            matrix[index[r["label"]]][index[r["predicted"]]] += 1
    acc = [(row[i] / sum(row)) if sum(row) else float("nan") for i, row in enumerate(matrix)]
    return matrix, acc


def chart_per_class(labels: list[str], acc: list[float]) -> str:
    plt = _plt()
    height = max(2.5, min(0.22 * len(labels) + 1, 30))
    fig, ax = plt.subplots(figsize=(11, height))
    ax.barh(range(len(labels)), acc, color="#4c72b0")
    ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 30 else 9)
    ax.invert_yaxis()
    ax.set(title="Accuracy per class", xlim=(0, 1))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _png(fig)


def chart_confusion(labels: list[str], matrix: list[list[int]]) -> str:
    plt = _plt()
    side = max(4.5, min(0.12 * len(labels) + 3, 16))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=7,
                            color="white" if v > max(map(max, matrix)) / 2 else "black")
    ax.set(title="Confusion matrix", xlabel="predicted", ylabel="true")
    fig.tight_layout()
    return _png(fig)


# ---- the page --------------------------------------------------------------------------

def _load(path: Path, default=None):
    if not path.exists():
        return default
    return json.loads(path.read_text())


def build(out_dir: Path, target: Path | None = None) -> Path:
    """Render report.html from the files in `out_dir` (a job's output/data)."""
    import jinja2

    out_dir = Path(out_dir)
    stats = _load(out_dir / "statistics.json", {})
    record = _load(out_dir / "metrics.json", {})
    rules = _load(out_dir / "rules.json", [])
    epochs = record.get("history") or stats.get("epochs") or []
    split = "test" if (out_dir / "test_predictions.json").exists() else "valid"
    predictions = _load(out_dir / f"{split}_predictions.json", [])
    labels = record.get("labels") or list((stats.get("class_counts") or {}).keys())
    pairs = _load(out_dir / PAIRS_FILE, {"pairs": []})["pairs"]
    for pair in pairs:
        for img in pair["images"]:
            thumb = out_dir / THUMB_DIR / img["file"]
            img["data"] = base64.b64encode(thumb.read_bytes()).decode() if thumb.exists() \
                else None

    charts = {}
    if epochs:
        charts["curves"] = chart_curves(epochs, stats.get("steps") or [])
        charts["time"] = chart_time_split(epochs)
    charts["system"] = chart_system(stats.get("system") or {})
    charts["gradients"] = chart_gradients(stats)
    matrix, acc = per_class(predictions, labels) if predictions and labels else (None, None)
    if matrix:
        charts["per_class"] = chart_per_class(labels, acc)
        charts["confusion"] = chart_confusion(labels, matrix)

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent),
                             autoescape=True)
    env.filters["num"] = lambda v, f="%.4f": (f % v) if isinstance(v, (int, float)) and \
        math.isfinite(v) else str(v)
    html = env.get_template("report.html.j2").render(
        stats=stats, record=record, rules=rules, epochs=epochs, charts=charts,
        split=split, pairs=pairs, labels=labels,
        issues=[r for r in rules if r["status"] == "IssuesFound"],
        hyperparameters=stats.get("hyperparameters") or {},
        class_counts=stats.get("class_counts") or {},
        evaluated=len(predictions), accuracy=(sum(r["label"] == r["predicted"]
                                                  for r in predictions) / len(predictions)
                                              if predictions else None))
    target = Path(target) if target else out_dir / REPORT_FILE
    with replacing(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target


def safe_extract(tar: tarfile.TarFile, dest) -> None:
    """Extract plain files and folders that stay inside dest (Python 3.11.2, the
    image's, has no extractall(filter=...))."""
    root = Path(dest).resolve()
    members = []
    for m in tar.getmembers():
        target = (root / m.name).resolve()
        if not (m.isfile() or m.isdir()) or not target.is_relative_to(root):
            continue
        members.append(m)
    # Bandit cannot see that the members were checked above.
    tar.extractall(root, members=members)  # nosec B202


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dogbreed_train.report",
        description="Rebuild report.html from a training job's output/data folder or its "
                    "output.tar.gz.")
    parser.add_argument("source", type=Path, help="output/data folder or output.tar.gz")
    parser.add_argument("--out", type=Path, help="where to write (default: "
                                                 "SOURCE/report.html, or beside the archive)")
    args = parser.parse_args(argv)
    if args.source.is_dir():
        print(build(args.source, args.out))
        return 0
    if not args.source.is_file():
        parser.error(f"no such folder or file: {args.source}")
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(args.source) as tar:
        safe_extract(tar, tmp)
        out = args.out or args.source.with_name(REPORT_FILE)
        # SageMaker packs output/data; local mode packs all of output/ (data/ inside).
        folder = Path(tmp) / "data" if (Path(tmp) / "data").is_dir() else Path(tmp)
        print(build(folder, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
