"""dogbreed_scripts/job_report.py: a job's output archive, unpacked and summarized."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from dogbreed_scripts import job_report

RULES = [{"rule": "Overfit", "status": "IssuesFound", "first": {"epoch": 2, "step": None},
          "reason": "validation loss 2.0 exceeds training loss 1.0 by 100%"},
         {"rule": "LossNotDecreasing", "status": "NoIssuesFound", "first": None,
          "reason": "training loss fell at each of 3 checks"}]


def archive(path, prefix: str) -> None:
    """An output.tar.gz as SageMaker (prefix '') or local mode ('data/') writes it."""
    with tarfile.open(path, "w:gz") as tar:
        for name, body in ((f"{prefix}rules.json", json.dumps(RULES)),
                           (f"{prefix}report.html", "<html></html>"),
                           (f"{prefix}tensorboard/events.out.tfevents.1", "x"),
                           ("../outside.txt", "must not be written")):
            data = body.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("prefix", ["", "data/"])
def test_summary_of_an_output_archive(tmp_path, capsys, prefix):
    archive(tmp_path / "output.tar.gz", prefix)
    dest = tmp_path / "job"
    job_report.show(str(tmp_path / "output.tar.gz"), dest)
    out = capsys.readouterr().out
    folder = dest / prefix.rstrip("/") if prefix else dest
    assert "Overfit" in out and "IssuesFound   at epoch 2" in out
    assert f"report:      {folder / 'report.html'}" in out
    assert f"tensorboard --logdir {folder / 'tensorboard'}" in out
    assert not (tmp_path / "outside.txt").exists()


def test_output_archive_sits_beside_the_model():
    assert job_report.output_archive("s3://b/p/job/output/model.tar.gz") == \
        "s3://b/p/job/output/output.tar.gz"


def test_a_missing_archive_is_one_line_not_an_error(tmp_path, capsys):
    job_report.show(str(tmp_path / "nope.tar.gz"), tmp_path / "job")
    assert capsys.readouterr().out.startswith("  (job output ")
