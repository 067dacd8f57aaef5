"""What a finished training job says about itself: verdicts, report, TensorBoard.

Every job leaves output.tar.gz (its /opt/ml/output/data) next to model.tar.gz,
locally or in S3. show() fetches and unpacks it, then prints the rule verdicts
from rules.json, where report.html is, and the `tensorboard --logdir` command
for the event files under tensorboard/.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path


def output_archive(model_data: str | Path) -> str:
    """output.tar.gz sits beside model.tar.gz (SageMaker and local mode alike); local
    training names model.tar.gz by its Path, SageMaker by an s3:// URI."""
    return str(model_data).rsplit("/", 1)[0] + "/output.tar.gz"


def fetch(source: str, dest: Path, s3_client=None) -> Path:
    """Unpack a local path or an s3:// URI of output.tar.gz into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = Path(source.removeprefix("file://"))
    if source.startswith("s3://"):
        if s3_client is None:
            raise ValueError("an s3:// output needs an S3 client")
        bucket, key = source[5:].split("/", 1)
        archive = dest / "output.tar.gz"
        s3_client.download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        safe_extract(tar, dest)
    # SageMaker packs output/data; local mode packs all of output/ (data/ inside).
    return dest / "data" if (dest / "data").is_dir() else dest


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract plain files and folders that stay inside dest (older Pythons have no
    extractall(filter=...))."""
    root = dest.resolve()
    members = [m for m in tar.getmembers()
               if (m.isfile() or m.isdir()) and (root / m.name).resolve().is_relative_to(root)]
    # Bandit cannot see that the members were checked above.
    tar.extractall(root, members=members)  # nosec B202


def summary(folder: Path) -> str:
    lines = []
    rules_file = folder / "rules.json"
    if rules_file.exists():
        rules = json.loads(rules_file.read_text())
        width = max((len(r["rule"]) for r in rules), default=0)
        lines.append("  rule verdicts (evaluated in the job):")
        for r in rules:
            where = ""
            if r.get("first"):
                where = " at " + ", ".join(f"{k} {v}" for k, v in r["first"].items()
                                           if v is not None)
            lines.append(f"    {r['rule']:<{width}}  {r['status']:<13}{where}  {r['reason']}")
    else:
        lines.append("  no rules.json in the job's output")
    report = folder / "report.html"
    lines.append(f"  report:      {report}" if report.exists() else "  report:      (none)")
    events = folder / "tensorboard"
    if events.is_dir():
        lines.append(f"  tensorboard: tensorboard --logdir {events}")
    return "\n".join(lines)


def show(source: str, dest: Path, s3_client=None) -> None:
    """Print the summary of the job whose output.tar.gz is `source`; never raises."""
    try:
        folder = fetch(source, dest, s3_client)
    except Exception as exc:  # noqa: BLE001 - the job itself is done; say why and go on
        print(f"  (job output {source} not read: {type(exc).__name__}: {exc})")
        return
    print(summary(folder), flush=True)
