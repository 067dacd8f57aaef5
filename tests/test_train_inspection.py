"""Debugger hooks, local rule verdicts, profiling and multi-process training, in the real image."""

from __future__ import annotations

import json
import re

import pytest
from train_checks import assert_metrics_read_as_recorded

from conftest import TINY_HPS, docker, opt_ml, run_train
from dogbreed_contract import metrics

HOOK_CONFIG = {
    "LocalPath": "/opt/ml/output/tensors",
    "HookParameters": {"save_interval": "2"},
    "CollectionConfigurations": [
        {"CollectionName": "losses"}, {"CollectionName": "weights"},
        {"CollectionName": "gradients"}, {"CollectionName": "biases"},
        {"CollectionName": "relu_input", "CollectionParameters": {"include_regex": ".*relu_input"}},
    ],
}
RULES = {"VanishingGradient", "Overfit", "Overtraining", "LossNotDecreasing",
         "PoorWeightInitialization"}

# Reads the tensors back with smdebug, in the image (smdebug is not a host dependency).
READ_BACK = """
import json, logging
logging.disable(logging.INFO)
from smdebug import modes
from smdebug.trials import create_trial
t = create_trial("/opt/ml/output/tensors")
loss = t.tensor_names(collection="losses")[0]
print(json.dumps({
    "train_loss_steps": t.tensor(loss).steps(mode=modes.TRAIN),
    "eval_loss_steps": t.tensor(loss).steps(mode=modes.EVAL),
    "gradients": len(t.tensor_names(collection="gradients")),
    "weights": len(t.tensor_names(collection="weights")),
    "biases": len(t.tensor_names(collection="biases")),
    "relu_input": len(t.tensor_names(collection="relu_input")),
}))
"""


@pytest.fixture(scope="module")
def inspected_run(train_image, tmp_path_factory):
    """The trained_model fixture's job again, with the Debugger hook and a profiler window."""
    root = opt_ml(tmp_path_factory.mktemp("inspect"), {**TINY_HPS, "profile-steps": "2-4"},
                  {"train": 12, "valid": 4, "test": 4})
    (root / "input" / "config" / "debughookconfig.json").write_text(json.dumps(HOOK_CONFIG))
    run = run_train(train_image, root)
    assert run.rc == 0, run.log[-3000:]
    return run


def test_hook_saves_tensors_smdebug_can_read(inspected_run, train_image):
    out = docker("run", "--rm", "--network", "none", "-v", f"{inspected_run.root}:/opt/ml",
                 train_image, "python", "-c", READ_BACK).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert len(seen["train_loss_steps"]) >= 3 and seen["eval_loss_steps"]
    assert seen["gradients"] > 10 and seen["weights"] > 10 and seen["biases"] > 0
    assert seen["relu_input"] > 0


def test_rule_verdicts_are_reported(inspected_run, train_image):
    report = json.loads((inspected_run.root / "output" / "data" / "debugger_rules.json")
                        .read_text())
    assert {r["rule"] for r in report} == RULES
    assert all(r["status"] in ("IssuesFound", "NoIssuesFound") for r in report), report
    for r in report:  # the log shows the same verdicts as the file
        assert re.search(rf"{r['rule']}\s+{r['status']}", inspected_run.log)
    # The same verdicts from the command a user runs on their own tensors.
    cli = docker("run", "--rm", "--network", "none", "-v", f"{inspected_run.root}:/opt/ml",
                 train_image, "python", "-m", "dogbreed_train.rules",
                 "/opt/ml/output/tensors").stdout
    for r in report:
        assert re.search(rf"{r['rule']}\s+{r['status']}", cli), cli


def test_hook_and_profiler_change_nothing(inspected_run, trained_model):
    """Same seed, same data: the run with hook and profiler learns exactly the same."""
    def history(run):
        return json.loads((run.root / "output" / "data" / "metrics.json").read_text())["history"]

    plain, inspected = history(trained_model), history(inspected_run)
    assert len(plain) == len(inspected)
    for a, b in zip(plain, inspected, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-4, abs=1e-6)
    # Without a hook config smdebug is never set up.
    assert "SageMaker Debugger" not in trained_model.log
    assert "SageMaker Debugger: saving tensors" in inspected_run.log


def test_profiler_trace_and_perf_lines(inspected_run):
    traces = list((inspected_run.root / "output" / "tensorboard").glob("*.pt.trace.json"))
    assert traces, "no torch.profiler trace written"
    trace = json.loads(traces[0].read_text())
    assert any(e.get("name", "").startswith("aten::conv") for e in trace["traceEvents"])
    perf = re.findall(r"PERF epoch=(\d+)/(\d+) images/s=([\d.]+) data_wait=(\d+)% "
                      r"compute=(\d+)% (input-bound|compute-bound)", inspected_run.log)
    assert [int(p[0]) for p in perf] == [1, 2, 3]
    for _, _, rate, wait, compute, _ in perf:
        assert float(rate) > 0 and int(wait) + int(compute) in (99, 100, 101)


def test_two_processes_train_one_model(train_image, tmp_path):
    """torchrun with two CPU processes (gloo): metrics over both, one set of artifacts."""
    root = opt_ml(tmp_path, {**TINY_HPS, "epochs": "2", "bad-images": "skip"},
                  {"train": 9, "valid": 3, "test": 3})
    # A JPEG cut off mid-data (its header passes the scan): each epoch one rank or the
    # other meets it, and it is still one skipped image.
    folder = root / "input" / "data" / "train" / "002.Green_bars"
    source = folder / "000.jpg"
    (folder / "truncated.jpg").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    run = run_train(train_image, root, "-e", "DOGBREED_PROCS_PER_HOST=2")
    assert run.rc == 0, run.log[-3000:]
    assert "--nproc-per-node=2" in run.log and "2 process(es)" in run.log
    assert len(re.findall(r"METRIC epoch=\d", run.log)) == 2  # rank 0 alone logs
    # Under torchrun too, the lines start with the program's prefix the regexes anchor on.
    assert_metrics_read_as_recorded(metrics.definitions(), run.log, root)
    record = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert record["images"]["train"] == 28 and record["test"]["images"] == 9
    assert record["skipped_images"]["decode"] == 1, record["skipped_images"]
    # Each rank validated its own shard; together every image counted once.
    assert [h["valid_images"] for h in record["history"]] == [9, 9]
    meta = json.loads((root / "model" / "model.json").read_text())
    assert len(meta["labels"]) == 3 and (root / "model" / "model.onnx").stat().st_size > 0
    assert (root / "checkpoints" / "checkpoint.pt").exists()
