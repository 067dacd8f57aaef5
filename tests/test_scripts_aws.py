"""The AWS scripts against a moto server: what each one sends, over real HTTP.

Every script runs as a subprocess, as a user runs it, with AWS_ENDPOINT_URL pointing
at a moto server that records each request. The tests assert on the requests'
content (image URIs, hyperparameters and ranges, metric definitions, objective,
Debugger rules and profiler settings, spot and checkpoints, instance types,
deletion order) and on what the scripts print.
"""

from __future__ import annotations

import json
import re
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from aws_stand_in import (
    BUCKET,
    ECR,
    REGION,
    ROLE,
    explain,
    put_images,
    run_script,
    script_env,
)
from train_checks import assert_metrics_read_as_recorded

from dogbreed_contract import metrics as contract_metrics
from dogbreed_scripts import settings
from dogbreed_scripts import tune as tune_script
from synthetic import make_dataset

METRIC_DEFS = contract_metrics.definitions()
STEPS = ["push", "data", "tune", "train", "deploy", "invoke", "cleanup"]


@pytest.fixture
def aws(moto_server, tmp_path):
    """A clean moto with the bucket, and a runner for scripts pointed at it."""
    moto_server.reset()
    boto3.client("s3", endpoint_url=moto_server.url, region_name=REGION,
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).create_bucket(Bucket=BUCKET)
    put_images(boto3.client("ecr", endpoint_url=moto_server.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing"),
               ["dogbreed-train", "dogbreed-serve"], ["latest", "v2", "v7"])
    moto_server.requests.clear()
    work = tmp_path / "work"
    env = script_env(moto_server.url, work)

    class Runner:
        server = moto_server
        workdir = work

        @staticmethod
        def run(name, *args, ok=True, **extra_env):
            proc = run_script(name, *args, env={**env, **extra_env}, cwd=tmp_path)
            if ok:
                assert proc.returncode == 0, explain(proc)
            return proc

        @staticmethod
        def client(service):
            return boto3.client(service, endpoint_url=moto_server.url, region_name=REGION,
                                aws_access_key_id="testing", aws_secret_access_key="testing")

        @staticmethod
        def state():
            return json.loads((work / "state.json").read_text())

    return Runner


# --- every step: --help and readable errors ----------------------------------------

@pytest.mark.parametrize("step", STEPS)
def test_every_step_has_help(step, tmp_path):
    proc = run_script(step, "--help", env=script_env(None, tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.startswith("usage:") and "--config" in proc.stdout
    assert f"scripts/{step}.py" in proc.stdout  # the examples


def one_error_line(proc) -> str:
    assert proc.returncode != 0, explain(proc)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("step,args", [("train", []), ("tune", []), ("deploy", [
    "--model-data", "s3://b/m.tar.gz"]), ("push", ["--no-build", "--local-serve-image", "no-such-image:x"]), ("cleanup", [
        "--endpoint", "x"]), ("invoke", ["--endpoint", "x", "IMAGES"]), ("data", [
        "--source", "DATA"])])
def test_missing_credentials_region_and_role_say_so(step, args, tmp_path):
    # invoke and data need real files to get as far as AWS
    data = make_dataset(tmp_path / "d", {"train": 1, "test": 1})
    args = [{"IMAGES": str(data / "test"), "DATA": str(data)}.get(a, a) for a in args]
    no_creds = script_env(None, tmp_path, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    line = one_error_line(run_script(step, *args, env=no_creds, cwd=tmp_path))
    assert "no AWS credentials found" in line and "aws configure" in line

    no_region = script_env(None, tmp_path, AWS_DEFAULT_REGION=None)
    line = one_error_line(run_script(step, *args, env=no_region, cwd=tmp_path))
    assert "no AWS region given" in line and "--region" in line and "$AWS_REGION" in line

    if step in ("train", "tune", "deploy"):
        no_role = script_env("http://127.0.0.1:9", tmp_path, DOGBREED_ROLE=None)
        line = one_error_line(run_script(step, *args, env=no_role, cwd=tmp_path))
        assert "no SageMaker execution role ARN given" in line and "--role" in line


def test_bad_role_and_config_file_errors(tmp_path):
    env = script_env("http://127.0.0.1:9", tmp_path)
    line = one_error_line(run_script("train", "--role", "MyRole", env=env, cwd=tmp_path))
    assert "'MyRole' is not an IAM role ARN" in line
    (tmp_path / "dogbreed.toml").write_text('regoin = "eu-west-1"\n')
    line = one_error_line(run_script("train", env=env, cwd=tmp_path))
    assert "unknown key(s) regoin" in line


def test_settings_precedence_flag_env_file(tmp_path, monkeypatch):
    import argparse

    config = tmp_path / "c.toml"
    config.write_text('region = "eu-west-1"\nbucket = "from-file"\nprefix = "file-prefix"\n'
                      'train-instance-type = "ml.p3.2xlarge"\n')
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, ["region", "bucket", "prefix", "train_instance_type",
                                    "serve_instance_type"])
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "DOGBREED_BUCKET", "DOGBREED_PREFIX",
                "DOGBREED_TRAIN_INSTANCE_TYPE", "DOGBREED_SERVE_INSTANCE_TYPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOGBREED_BUCKET", "from-env")
    monkeypatch.setenv("DOGBREED_PREFIX", "env-prefix")
    cfg = settings.resolve(parser.parse_args(["--config", str(config),
                                              "--prefix", "flag-prefix"]))
    assert cfg.prefix == "flag-prefix"            # flag beats env and file
    assert cfg.bucket == "from-env"               # env beats file
    assert cfg.region == "eu-west-1"              # file beats default
    assert cfg.train_instance_type == "ml.p3.2xlarge"
    assert cfg.serve_instance_type == "ml.m5.large"  # default
    assert cfg.s3("data", "train") == "s3://from-env/flag-prefix/data/train"


# --- data -----------------------------------------------------------------------------

def s3_keys(aws) -> dict[str, int]:
    pages = aws.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", [])}


def test_data_checks_uploads_and_skips_what_is_there(aws, tmp_path):
    data = make_dataset(tmp_path / "dogImages", {"train": 3, "valid": 1, "test": 1})
    proc = aws.run("data", "--source", str(data))
    local = {f"dogbreed/data/{p.relative_to(data).as_posix()}": p.stat().st_size
             for p in data.rglob("*") if p.is_file()}
    assert s3_keys(aws) == local and len(local) == 15
    assert re.search(r"train +9 images in 3 classes", proc.stdout)
    assert "uploading" in proc.stderr  # tqdm's bar
    assert aws.state()["channels"] == {
        s: f"s3://{BUCKET}/dogbreed/data/{s}" for s in ("train", "valid", "test")}
    puts = [r for r in aws.server.requests if r.method == "PUT"]
    assert len(puts) == 15

    # A second run sends only what is new or changed.
    aws.server.requests.clear()
    extra = data / "train" / "001.Red_stripes" / "new.jpg"
    extra.write_bytes((data / "train" / "001.Red_stripes" / "000.jpg").read_bytes())
    proc = aws.run("data", "--source", str(data))
    assert "15 files already in" in proc.stdout
    assert [r.path for r in aws.server.requests if r.method == "PUT"] == [
        f"/{BUCKET}/dogbreed/data/train/001.Red_stripes/new.jpg"]


def test_data_downloads_a_zip_over_http(aws, tmp_path):
    src = make_dataset(tmp_path / "src" / "dogImages", {"train": 2, "valid": 1, "test": 1})
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "dogImages.zip", "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, p.relative_to(src.parent).as_posix())
    http = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler,
                                                         directory=str(site)))
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{http.server_port}/dogImages.zip"
        proc = aws.run("data", "--source", url, "--prefix", "zipped")
    finally:
        http.shutdown()
    assert f"downloading {url}" in proc.stdout
    assert (aws.workdir / "dogImages.zip").stat().st_size == (site / "dogImages.zip").stat().st_size
    assert sorted(k for k in s3_keys(aws)) == sorted(
        f"zipped/data/{p.relative_to(src).as_posix()}" for p in src.rglob("*") if p.is_file())


@pytest.mark.parametrize("breakage,message", [
    ("no-train", "has no train/ folder"),
    ("loose-file", "has files outside class folders"),
    ("unknown-class", "has classes that train lacks: 004.Purple"),
    ("empty-class", "class folder(s) without images: 004.Purple"),
])
def test_data_rejects_a_bad_layout(aws, tmp_path, breakage, message):
    data = make_dataset(tmp_path / "d", {"train": 2, "valid": 1})
    if breakage == "no-train":
        (data / "train").rename(data / "training")
    elif breakage == "loose-file":
        (data / "train" / "x.jpg").write_bytes(b"x")
    elif breakage == "unknown-class":
        (data / "valid" / "004.Purple").mkdir()
        (data / "valid" / "004.Purple" / "a.jpg").write_bytes(b"x")
    else:
        (data / "train" / "004.Purple").mkdir()
    proc = aws.run("data", "--source", str(data), ok=False)
    line = one_error_line(proc)
    assert message in line, line
    assert not [r for r in aws.server.requests if r.method == "PUT"]


# --- tune -----------------------------------------------------------------------------

def ranges_by_name(config: dict) -> dict[str, dict]:
    out = {}
    for kind, ranges in config["ParameterRanges"].items():
        for r in ranges:
            out[r["Name"]] = {"kind": kind, **{k: v for k, v in r.items() if k != "Name"}}
    return out


def test_tune_sends_default_ranges_objective_and_published_regexes(aws):
    proc = aws.run("tune", "--detach", "--max-jobs", "6", "--max-parallel-jobs", "3",
                   "--early-stopping", "Auto")
    [request] = aws.server.calls("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize",
                                                          "MetricName": "valid:accuracy"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6,
                                        "MaxParallelTrainingJobs": 3}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {"project": "dogbreed"}
    assert ranges_by_name(config) == {
        "lr": {"kind": "ContinuousParameterRanges", "MinValue": "0.0001", "MaxValue": "0.1",
               "ScalingType": "Logarithmic"},
        "eps": {"kind": "ContinuousParameterRanges", "MinValue": "1e-09",
                "MaxValue": "1e-08", "ScalingType": "Logarithmic"},
        "weight-decay": {"kind": "ContinuousParameterRanges", "MinValue": "0.001",
                         "MaxValue": "0.1", "ScalingType": "Logarithmic"},
        "batch-size": {"kind": "CategoricalParameterRanges", "Values": ["64", "128", "256"]},
        "epochs": {"kind": "IntegerParameterRanges", "MinValue": "2", "MaxValue": "10",
                   "ScalingType": "Auto"},
        "model": {"kind": "CategoricalParameterRanges",
                  "Values": ["resnet18", "resnet50", "vgg16", "alexnet"]},
    }
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == \
        f"{ECR}/dogbreed-train:latest"
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFS
    assert definition["RoleArn"] == ROLE
    assert definition["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in definition["InputDataConfig"]} == {
        c: f"s3://{BUCKET}/dogbreed/data/{c}" for c in ("train", "valid", "test")}
    assert definition["OutputDataConfig"]["S3OutputPath"] == \
        f"s3://{BUCKET}/dogbreed/tuning-output"
    job = request["HyperParameterTuningJobName"]
    assert f"scripts/tune.py --report {job}" in proc.stdout
    assert aws.state()["tuning_job"] == job
    # moto stored what was sent
    stored = aws.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=job)
    assert stored["HyperParameterTuningJobConfig"]["Strategy"] == "Bayesian"


def test_tune_overrides_ranges_static_values_and_settings(aws):
    aws.run("tune", "--detach", "--range", "lr=cont:0.001:0.01", "--range", "eps=off",
            "--range", "model=cat:resnet50,vgg16", "--range", "epochs=int:3:5:log",
            "--range", "dropout=cont:0.1:0.5", "--static", "pretrained=false",
            "--static", "image-size=128", "--strategy", "Random", "--objective", "valid:loss",
            "--train-instance-type", "ml.g5.2xlarge", "--tag", "v7",
            "--data", "s3://elsewhere/pics")
    [request] = aws.server.calls("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    ranges = ranges_by_name(config)
    assert set(ranges) == {"lr", "weight-decay", "batch-size", "epochs", "model", "dropout"}
    assert ranges["lr"] == {"kind": "ContinuousParameterRanges", "MinValue": "0.001",
                            "MaxValue": "0.01", "ScalingType": "Auto"}
    assert ranges["epochs"]["ScalingType"] == "Logarithmic"
    assert ranges["model"]["Values"] == ["resnet50", "vgg16"]
    assert config["Strategy"] == "Random"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize",
                                                          "MetricName": "valid:loss"}
    definition = request["TrainingJobDefinition"]
    static = {k: v for k, v in definition["StaticHyperParameters"].items()
              if not k.startswith("_")}
    assert {k: v.strip('"') for k, v in static.items()} == {"pretrained": "false",
                                                            "image-size": "128"}
    assert definition["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert definition["AlgorithmSpecification"]["TrainingImage"] == f"{ECR}/dogbreed-train:v7"
    assert definition["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == \
        "s3://elsewhere/pics/train"


@pytest.mark.parametrize("args,message", [
    (["--objective", "valid:f1"], "not a metric the training image logs"),
    (["--range", "lr=cont:1:0.1"], "LOW must be below HIGH"),
    (["--range", "lr=0.1:1"], "expected cont:LOW:HIGH"),
    (["--range", "lr=cont:0:1:log"], "a log scale needs LOW > 0"),
    (["--static", "lr=0.1"], "both static and tuned"),
    (["--max-parallel-jobs", "0"], "--max-parallel-jobs must be at least 1 (got 0)"),
    (["--max-jobs", "-1"], "--max-jobs must be at least 1 (got -1)"),
    (["--resume", "dogbreed-hpo-local-241122-1200"], "--resume is for --local tuning only"),
])
def test_tune_rejects_bad_input_before_calling_aws(aws, args, message):
    line = one_error_line(aws.run("tune", "--detach", *args, ok=False))
    assert message in line
    assert not aws.server.calls("CreateHyperParameterTuningJob")


def test_tuner_regexes_read_the_real_training_log(aws, trained_model):
    """The regexes the tuning job was sent, applied to the training image's real log."""
    aws.run("tune", "--detach")
    [request] = aws.server.calls("CreateHyperParameterTuningJob")
    sent = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    objective = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    regex = next(d["Regex"] for d in sent if d["Name"] == objective["MetricName"])
    found = [float(v) for v in contract_metrics.values(regex, trained_model.log)]
    recorded = json.loads((trained_model.root / "output" / "data" / "metrics.json").read_text())
    # one value per epoch, and the ones the job itself recorded
    assert found == pytest.approx([h["valid_acc"] for h in recorded["history"]], abs=1e-4)
    assert len(found) == int(json.loads((trained_model.root / "input" / "config" /
                                         "hyperparameters.json").read_text())["epochs"])
    for d in sent:  # every published metric is read at least once, as a number
        assert contract_metrics.values(d["Regex"], trained_model.log), d


def test_tuner_regexes_read_a_hostile_job_log_as_the_job_recorded(aws, hostile_run):
    """The regexes a tuning job is sent, over the log of a job whose data names forge
    METRIC and RULE lines (conftest.hostile_run): every metric, the objective among
    them, reads what the job recorded and nothing the names say."""
    aws.run("tune", "--detach")
    [request] = aws.server.calls("CreateHyperParameterTuningJob")
    sent = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    assert_metrics_read_as_recorded(sent, hostile_run.log, hostile_run.root)


def trial(name, status, value, created, **tuned):
    summary = {"TrainingJobName": name, "TrainingJobStatus": status, "CreationTime": created,
               "TunedHyperParameters": {k: json.dumps(v) if isinstance(v, str) else str(v)
                                        for k, v in tuned.items()}}
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "MetricName": "valid:accuracy", "Value": value}
    return summary


def test_tuning_report_table_best_json_and_plot(aws, tmp_path):
    """The report of a tuning job moto stored; trials shaped as the API returns them
    (moto does not implement ListTrainingJobsForHyperParameterTuningJob)."""
    from dogbreed_scripts import tuning_report

    aws.run("tune", "--detach", "--static", "pretrained=true", "--range", "eps=off",
            "--range", "weight-decay=off", "--range", "epochs=off")
    job = aws.state()["tuning_job"]
    description = aws.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=job)
    trials = [
        trial("t-003", "Completed", 0.61, "2026-01-01T00:03", lr=0.002, **{"batch-size": "64"},
              model="vgg16"),
        trial("t-001", "Completed", 0.72, "2026-01-01T00:01", lr=0.0004,
              **{"batch-size": "128"}, model="resnet50"),
        trial("t-002", "Failed", None, "2026-01-01T00:02", lr=0.05, **{"batch-size": "256"},
              model="alexnet"),
        trial("t-004", "Stopped", 0.95, "2026-01-01T00:04", lr=0.01, **{"batch-size": "64"},
              model="resnet18"),
    ]
    result = tuning_report.write(description, trials, tmp_path / "report")
    best = json.loads(Path(result["best"]).read_text())
    assert best["training_job"] == "t-001"  # best *completed* trial
    assert best["objective"] == {"name": "valid:accuracy", "type": "Maximize", "value": 0.72}
    assert best["hyperparameters"] == {"pretrained": "true", "lr": "0.0004",
                                       "batch-size": "128", "model": "resnet50"}
    rows = (tmp_path / "report" / "trials.csv").read_text().splitlines()
    assert rows[0] == "training_job,status,objective,batch-size,model,lr"
    assert [r.split(",")[:2] for r in rows[1:]] == [["t-001", "Completed"], ["t-002", "Failed"],
                                                   ["t-003", "Completed"], ["t-004", "Stopped"]]
    png = Path(result["plot"]).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    minimize = {**description, "HyperParameterTuningJobConfig": {
        **description["HyperParameterTuningJobConfig"],
        "HyperParameterTuningJobObjective": {"Type": "Minimize",
                                             "MetricName": "valid:accuracy"}}}
    assert tuning_report.best(trials, "Minimize")["TrainingJobName"] == "t-003"
    assert tuning_report.write(minimize, trials, tmp_path / "r2")["best"]

    # train.py takes best.json as it is
    aws.run("train", "--hyperparameters", result["best"], "--detach", "--hp", "epochs=3")
    [sent] = aws.server.calls("CreateTrainingJob")
    assert {k: v.strip('"') for k, v in sent["HyperParameters"].items()} == {
        "pretrained": "true", "lr": "0.0004", "batch-size": "128", "model": "resnet50",
        "epochs": "3"}


def test_default_ranges_cover_what_the_source_projects_tuned():
    r = tune_script.DEFAULT_RANGES
    low, high, _ = r["lr"][1]
    assert low <= 0.001 and high >= 0.1           # "lr: ContinuousParameter(0.001, 0.1)"
    assert r["eps"][1][:2] == [1e-9, 1e-8]        # "Epsilon (eps): 1e-09 to 1e-08"
    assert {"64", "128", "256"} <= set(r["batch-size"][1])
    assert r["epochs"][1][0] <= 2 and r["epochs"][1][1] >= 10   # 2/4/6 and 5/7/10
    assert {"resnet18", "resnet50", "vgg16", "alexnet"} <= set(r["model"][1])
    assert r["weight-decay"][0] == "continuous"


# --- train ----------------------------------------------------------------------------

RULES = {"VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization",
         "LossNotDecreasing"}
DEBUGGER_FIELDS = {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig",
                   "ProfilerRuleConfigurations"}


def test_train_sends_metrics_tensorboard_tags_and_no_debugger(aws):
    proc = aws.run("train", "--hp", "model=resnet50", "--hp", "epochs=4", "--quiet",
                   "--job-name", "dogbreed-train-test-1", "--env", "LOG_LEVEL=debug",
                   "--resource-tag", "team=vision")
    [sent] = aws.server.calls("CreateTrainingJob")
    assert sent["TrainingJobName"] == "dogbreed-train-test-1"
    assert sent["AlgorithmSpecification"]["TrainingImage"] == f"{ECR}/dogbreed-train:latest"
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFS
    assert sent["HyperParameters"] == {"model": "resnet50", "epochs": "4"}
    assert sent["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert sent["RoleArn"] == ROLE
    assert sent["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://{BUCKET}/dogbreed/tensorboard/dogbreed-train-test-1",
        "LocalPath": "/opt/ml/output/tensorboard"}
    assert sent["Environment"] == {"LOG_LEVEL": "debug"}
    assert {t["Key"]: t["Value"] for t in sent["Tags"]} == {"project": "dogbreed",
                                                            "team": "vision"}
    assert not DEBUGGER_FIELDS & set(sent), "Debugger/profiler settings sent unasked"
    assert "EnableManagedSpotTraining" not in sent and "CheckpointConfig" not in sent
    # the end-of-job summary, from what the service reports
    assert "training job dogbreed-train-test-1: Completed" in proc.stdout
    model = f"s3://{BUCKET}/dogbreed/training-output/dogbreed-train-test-1/output/model.tar.gz"
    assert f"model:            {model}" in proc.stdout
    assert aws.state()["model_data"] == model


def test_train_debugger_and_profiler_only_when_asked(aws):
    aws.run("train", "--detach", "--debugger", "--job-name", "dogbreed-train-dbg")
    [sent] = aws.server.calls("CreateTrainingJob")
    hook = sent["DebugHookConfig"]
    assert hook["S3OutputPath"] == f"s3://{BUCKET}/dogbreed/training-output/debug"
    assert {c["CollectionName"] for c in hook["CollectionConfigurations"]} == {
        "losses", "gradients", "weights"}
    rules = {r["RuleConfigurationName"]: r for r in sent["DebugRuleConfigurations"]}
    assert set(rules) == RULES
    for name, rule in rules.items():
        assert rule["RuleEvaluatorImage"].endswith(
            ".dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest")
        assert rule["RuleParameters"] == {"rule_to_invoke": name}
    assert "ProfilerConfig" not in sent and "ProfilerRuleConfigurations" not in sent

    aws.server.requests.clear()
    aws.run("train", "--detach", "--profiler", "--job-name", "dogbreed-train-prof")
    [sent] = aws.server.calls("CreateTrainingJob")
    assert sent["ProfilerConfig"] == {
        "S3OutputPath": f"s3://{BUCKET}/dogbreed/training-output/profiler",
        "ProfilingIntervalInMilliseconds": 500}
    [report] = sent["ProfilerRuleConfigurations"]
    assert report["RuleConfigurationName"] == "ProfilerReport"
    assert report["RuleParameters"] == {"rule_to_invoke": "ProfilerReport"}
    assert "DebugHookConfig" not in sent and "DebugRuleConfigurations" not in sent


def test_train_help_says_why_debugger_and_profiler_are_off(tmp_path):
    proc = run_script("train", "--help", env=script_env(None, tmp_path), cwd=tmp_path)
    text = " ".join(proc.stdout.split())
    assert "closed to new customers since 2026-07-30" in text
    assert "Profiler support ends 2027-06-30" in text
    assert "--debugger" in text and "--profiler" in text


def test_train_spot_with_checkpoints(aws):
    aws.run("train", "--spot", "--max-run", "3600", "--detach",
            "--train-instance-type", "ml.p3.2xlarge", "--job-name", "dogbreed-train-spot")
    [sent] = aws.server.calls("CreateTrainingJob")
    assert sent["EnableManagedSpotTraining"] is True
    assert sent["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600,
                                         "MaxWaitTimeInSeconds": 7200}
    assert sent["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/dogbreed/checkpoints/dogbreed-train-spot",
        "LocalPath": "/opt/ml/checkpoints"}
    assert sent["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge"
    assert not DEBUGGER_FIELDS & set(sent)
    aws.server.requests.clear()
    aws.run("train", "--spot", "--checkpoint-s3-uri", "s3://ck/points", "--max-wait", "90000",
            "--detach")
    [sent] = aws.server.calls("CreateTrainingJob")
    assert sent["CheckpointConfig"]["S3Uri"] == "s3://ck/points"
    assert sent["StoppingCondition"]["MaxWaitTimeInSeconds"] == 90000


@pytest.mark.parametrize("args,message", [
    (["--spot", "--max-run", "3600", "--max-wait", "600"], "is below --max-run 3600"),
    (["--max-wait", "600"], "--max-wait only applies to --spot"),
    (["--image-uri", f"{ECR}/dogbreed-train"], "has no tag: add :TAG"),
    (["--image-uri", "dogbreed-train:latest"], "has no registry host"),
    (["--tag", "never-pushed"], f"image {ECR}/dogbreed-train:never-pushed is not in the "
                                "registry: run scripts/push.py"),
])
def test_train_rejects_bad_input_before_creating_a_job(aws, args, message):
    line = one_error_line(aws.run("train", "--detach", *args, ok=False))
    assert message in line, line
    assert not aws.server.calls("CreateTrainingJob")


def test_train_summary_names_rules_metrics_and_reports():
    from dogbreed_scripts import train as train_script

    text = train_script.summary({
        "TrainingJobName": "j1", "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
        "DebugRuleEvaluationStatuses": [
            {"RuleConfigurationName": "Overfit", "RuleEvaluationStatus": "NoIssuesFound"},
            {"RuleConfigurationName": "VanishingGradient",
             "RuleEvaluationStatus": "IssuesFound", "StatusDetails": "gradients < 1e-7"}],
        "ProfilerRuleEvaluationStatuses": [
            {"RuleConfigurationName": "ProfilerReport", "RuleEvaluationStatus": "InProgress"}],
        "FinalMetricDataList": [{"MetricName": "valid:accuracy", "Value": 0.8123}],
        "ModelArtifacts": {"S3ModelArtifacts": "s3://b/out/j1/output/model.tar.gz"},
        "OutputDataConfig": {"S3OutputPath": "s3://b/out"},
        "ProfilerConfig": {"S3OutputPath": "s3://b/prof"}})
    assert "VanishingGradient            IssuesFound - gradients < 1e-7" in text
    assert "valid:accuracy   0.8123" in text
    assert "later: scripts/train.py --report j1" in text  # ProfilerReport still running
    assert ("profiler report:  s3://b/out/j1/rule-output/ProfilerReport/profiler-output/"
            "profiler-report.html") in text


# --- deploy, batch transform, cleanup -----------------------------------------------

MODEL = f"s3://{BUCKET}/dogbreed/training-output/job/output/model.tar.gz"


def test_deploy_endpoint_with_autoscaling_then_cleanup_in_order(aws):
    proc = aws.run("deploy", "--model-data", MODEL, "--endpoint-name", "dogbreed-ep",
                   "--instance-count", "2", "--serve-instance-type", "ml.c5.xlarge",
                   "--autoscale", "2:5", "--target-invocations", "250", "--poll", "1",
                   "--tag", "v2")
    [model] = aws.server.calls("CreateModel")
    assert model["ModelName"] == "dogbreed-ep"
    assert model["PrimaryContainer"]["Image"] == f"{ECR}/dogbreed-serve:v2"
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL
    assert model["ExecutionRoleArn"] == ROLE
    [config] = aws.server.calls("CreateEndpointConfig")
    [variant] = config["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == \
        ("dogbreed-ep", "ml.c5.xlarge", 2)
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    assert "ServerlessConfig" not in variant and "AsyncInferenceConfig" not in config
    [endpoint] = aws.server.calls("CreateEndpoint")
    assert (endpoint["EndpointName"], endpoint["EndpointConfigName"]) == ("dogbreed-ep",
                                                                          "dogbreed-ep")
    [target] = aws.server.calls("RegisterScalableTarget")
    assert target == {"ServiceNamespace": "sagemaker",
                      "ResourceId": "endpoint/dogbreed-ep/variant/AllTraffic",
                      "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                      "MinCapacity": 2, "MaxCapacity": 5}
    [policy] = aws.server.calls("PutScalingPolicy")
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetValue"] == 250.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"
    assert "endpoint dogbreed-ep is in service" in proc.stdout
    assert aws.state()["endpoint"] == "dogbreed-ep"

    aws.server.requests.clear()
    proc = aws.run("cleanup", "--poll", "1")
    assert deletions(aws) == ["DeleteScalingPolicy", "DeregisterScalableTarget", "DeleteEndpoint",
                   "DeleteEndpointConfig", "DeleteModel"]
    assert [c["ModelName"] for c in aws.server.calls("DeleteModel")] == ["dogbreed-ep"]
    sm = aws.client("sagemaker")
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    assert aws.state()["endpoint"] is None
    # twice is harmless
    proc = aws.run("cleanup", "--endpoint", "dogbreed-ep", "--poll", "1")
    assert proc.stdout.count("already gone") == 3


def deletions(aws) -> list[str]:
    return [op for op in aws.server.operations() if op.startswith(("Delete", "Deregister"))]


def test_deploy_serverless_then_cleanup(aws):
    aws.run("deploy", "--model-data", MODEL, "--endpoint-name", "dogbreed-sls", "--serverless",
            "--serverless-memory", "4096", "--serverless-max-concurrency", "8", "--poll", "1")
    [config] = aws.server.calls("CreateEndpointConfig")
    [variant] = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 8}
    assert not {"InstanceType", "InitialInstanceCount",
                "ContainerStartupHealthCheckTimeoutInSeconds"} & set(variant)
    assert not aws.server.calls("RegisterScalableTarget")
    assert aws.state()["endpoint_kind"] == "serverless"
    aws.server.requests.clear()
    aws.run("cleanup", "--poll", "1")
    assert deletions(aws) == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]


def test_deploy_async_with_output_path_then_cleanup(aws):
    aws.run("deploy", "--model-data", MODEL, "--endpoint-name", "dogbreed-async", "--async",
            "--async-output", f"s3://{BUCKET}/async-out", "--async-max-concurrent", "4",
            "--startup-timeout", "900", "--poll", "1")
    [config] = aws.server.calls("CreateEndpointConfig")
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/async-out",
                         "S3FailurePath": f"s3://{BUCKET}/async-out/failures"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4}}
    [variant] = config["ProductionVariants"]
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert aws.state()["endpoint_kind"] == "async"
    aws.server.requests.clear()
    aws.run("cleanup", "--poll", "1")
    assert deletions(aws) == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]


@pytest.mark.parametrize("args,message", [
    (["--autoscale", "3:1"], "need 1 <= MIN <= MAX"),
    (["--serverless", "--serve-instance-type", "ml.g5.xlarge"],
     "serverless endpoints run on CPU only: drop the GPU instance type ml.g5.xlarge"),
    (["--serverless", "--serverless-memory", "1000"], "--serverless-memory 1000: one of"),
    (["--async"], "--async needs --async-output s3://"),
    (["--async", "--async-output", "/tmp/x"], "expected an s3:// URI"),
    (["--image-uri", f"{ECR}/dogbreed-serve"], "has no tag"),
    (["--tag", "never-pushed"], "is not in the registry: run scripts/push.py"),
])
def test_deploy_rejects_bad_input_before_creating_anything(aws, args, message):
    line = one_error_line(aws.run("deploy", "--model-data", MODEL, *args, ok=False))
    assert message in line, line
    assert not aws.server.calls("CreateModel")
    assert not aws.server.calls("CreateEndpointConfig")


def test_deploy_uses_the_model_of_a_training_job(aws):
    aws.run("train", "--detach", "--job-name", "dogbreed-train-for-deploy")
    aws.run("deploy", "--training-job", "dogbreed-train-for-deploy", "--endpoint-name", "ep2",
            "--poll", "1")
    [model] = aws.server.calls("CreateModel")
    assert model["PrimaryContainer"]["ModelDataUrl"] == (
        f"s3://{BUCKET}/dogbreed/training-output/dogbreed-train-for-deploy/output/model.tar.gz")
    aws.run("cleanup", "--poll", "1")


def test_batch_transform_over_an_s3_folder(aws):
    proc = aws.run("deploy", "--model-data", MODEL, "--batch-input", f"s3://{BUCKET}/photos/",
                   "--instance-count", "2", "--serve-instance-type", "ml.m5.xlarge")
    [job] = aws.server.calls("CreateTransformJob")
    name = job["TransformJobName"]
    assert job["ModelName"] == name
    assert job["BatchStrategy"] == "SingleRecord"
    source = job["TransformInput"]
    assert source["ContentType"] == "image/jpeg"
    assert source.get("SplitType", "None") == "None"
    assert source["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                    "S3Uri": f"s3://{BUCKET}/photos/"}
    assert job["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/dogbreed/batch-output/{name}"
    assert job["TransformOutput"]["Accept"] == "application/json"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}
    [model] = aws.server.calls("CreateModel")
    assert model["PrimaryContainer"]["Image"] == f"{ECR}/dogbreed-serve:latest"
    assert not aws.server.calls("CreateEndpoint")
    assert f"scripts/cleanup.py --model {name}" in proc.stdout
    aws.server.requests.clear()
    aws.run("cleanup", "--model", name)
    assert aws.server.operations()[-1] == "DeleteModel"
    assert aws.client("sagemaker").list_models()["Models"] == []


def test_invoke_async_uploads_invokes_and_reads_the_answer(aws, tmp_path):
    """moto answers invoke_endpoint_async with a result configured here, written to S3."""
    import requests

    aws.run("deploy", "--model-data", MODEL, "--endpoint-name", "dogbreed-async", "--async",
            "--async-output", f"s3://{BUCKET}/async-out", "--poll", "1")
    answer = {"predictions": [{"label": "Red_stripes", "index": 0, "probability": 0.75}]}
    requests.post(f"{aws.server.url}/moto-api/static/sagemaker/async-endpoint-results",
                  json={"results": [{"data": json.dumps(answer)}]}, timeout=10).raise_for_status()
    photo = sorted((make_dataset(tmp_path / "p", {"test": 1}) / "test").rglob("*.jpg"))[0]
    aws.server.requests.clear()
    proc = aws.run("invoke", str(photo), "--top-k", "1", "--json", str(tmp_path / "a.json"))
    [put] = [r for r in aws.server.requests if r.method == "PUT"
             and r.path.startswith(f"/{BUCKET}/dogbreed/async-input/")]
    [invoke] = [r for r in aws.server.requests if r.path.endswith("/async-invocations")]
    assert invoke.path == "/endpoints/dogbreed-async/async-invocations"
    key = put.path.removeprefix(f"/{BUCKET}/")
    stored = aws.client("s3").get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == photo.read_bytes()
    assert stored["ContentType"] == "image/jpeg"
    [result] = json.loads((tmp_path / "a.json").read_text())["results"]
    assert (result["client"], result["predictions"]) == ("async", answer["predictions"])
    assert "1. Red_stripes" in proc.stdout


# --- multi-model endpoints ----------------------------------------------------------

def put_archive(aws, key: str, content: bytes) -> str:
    aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=content)
    return f"s3://{BUCKET}/{key}"


def test_multi_model_endpoint_over_a_prefix_then_more_models_then_cleanup(aws, tmp_path):
    model_a = put_archive(aws, "dogbreed/training-output/job-a/output/model.tar.gz", b"A" * 99)
    model_b = put_archive(aws, "dogbreed/training-output/job-b/output/model.tar.gz", b"B" * 77)
    proc = aws.run("deploy", "--multi-model", "--endpoint-name", "dogbreed-mme",
                   "--add-model", f"shelter-a={model_a}", "--add-model", f"shelter-b={model_b}",
                   "--serve-instance-type", "ml.c5.xlarge", "--autoscale", "1:3", "--poll", "1")
    prefix = f"s3://{BUCKET}/dogbreed/multi-model/dogbreed-mme/"
    [model] = aws.server.calls("CreateModel")
    assert model["PrimaryContainer"] == {
        "Image": f"{ECR}/dogbreed-serve:latest", "ModelDataUrl": prefix, "Mode": "MultiModel",
        "Environment": {"SAGEMAKER_MULTI_MODEL": "true"}}
    [config] = aws.server.calls("CreateEndpointConfig")
    [variant] = config["ProductionVariants"]
    assert (variant["ModelName"], variant["InstanceType"]) == ("dogbreed-mme", "ml.c5.xlarge")
    assert aws.server.calls("RegisterScalableTarget")
    s3 = aws.client("s3")

    def archive(name):
        return s3.get_object(Bucket=BUCKET, Key=f"dogbreed/multi-model/dogbreed-mme/{name}"
                             )["Body"].read()
    assert archive("shelter-a.tar.gz") == b"A" * 99 and archive("shelter-b.tar.gz") == b"B" * 77
    state = aws.state()
    assert (state["endpoint"], state["endpoint_kind"], state["multi_model_prefix"]) == (
        "dogbreed-mme", "multi-model", prefix)
    assert "--target-model NAME" in proc.stdout

    # later: one more model, from a local file and from a training job; no new endpoint
    local = tmp_path / "model.tar.gz"
    local.write_bytes(b"C" * 55)
    aws.run("train", "--detach", "--job-name", "dogbreed-train-d")
    put_archive(aws, "dogbreed/training-output/dogbreed-train-d/output/model.tar.gz", b"D")
    aws.server.requests.clear()
    aws.run("deploy", "--add-model", f"shelter-c.tar.gz={local}", "--add-model", "shelter-d",
            "--training-job", "dogbreed-train-d")
    assert archive("shelter-c.tar.gz") == b"C" * 55 and archive("shelter-d.tar.gz") == b"D"
    assert not aws.server.calls("CreateModel") and not aws.server.calls("CreateEndpoint")

    aws.run("cleanup", "--remove-model", "shelter-c")
    keys = {o["Key"] for o in s3.list_objects_v2(
        Bucket=BUCKET, Prefix="dogbreed/multi-model/")["Contents"]}
    assert {k.rsplit("/", 1)[1] for k in keys} == {"shelter-a.tar.gz", "shelter-b.tar.gz",
                                                   "shelter-d.tar.gz"}
    aws.server.requests.clear()
    proc = aws.run("cleanup", "--poll", "1")
    assert deletions(aws) == ["DeleteScalingPolicy", "DeregisterScalableTarget",
                              "DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]
    assert f"its models stay in {prefix}" in proc.stdout
    state = aws.state()
    assert state["endpoint"] is None and state["multi_model_prefix"] is None


@pytest.mark.parametrize("args,message", [
    (["--multi-model", "--serve-instance-type", "ml.g5.xlarge"],
     "multi-model endpoints with a custom container run on CPU instances only"),
    (["--multi-model", "--serverless"], "--multi-model makes a real-time endpoint"),
    (["--multi-model", "--add-model", "a b=s3://x/y"], "--add-model a b=s3://x/y: NAME must"),
    (["--multi-model", "--add-model", "a=s3://x/1", "--add-model", "a.tar.gz=s3://x/2"],
     "--add-model a is given twice"),
    (["--add-model", "late=s3://x/y"], "no multi-model endpoint to add to"),
    (["--multi-model", "--model-prefix", "/tmp/models"], "expected an s3:// URI"),
])
def test_multi_model_rejects_bad_input_before_calling_aws(aws, args, message):
    line = one_error_line(aws.run("deploy", *args, ok=False))
    assert message in line, line
    assert not aws.server.calls("CreateModel")
    assert not [r for r in aws.server.requests if r.method == "PUT"]


def test_invoke_names_the_target_model_through_boto3_and_sdk_v3(aws, tmp_path):
    import requests

    model_a = put_archive(aws, "dogbreed/training-output/job-a/output/model.tar.gz", b"A")
    aws.run("deploy", "--multi-model", "--endpoint-name", "dogbreed-mme", "--add-model",
            f"shelter-a={model_a}", "--poll", "1")
    answer = {"predictions": [{"label": "Moon_rocks", "index": 1, "probability": 0.5}]}
    requests.post(f"{aws.server.url}/moto-api/static/sagemaker/endpoint-results", timeout=10,
                  json={"results": [{"Body": json.dumps(answer),
                                     "ContentType": "application/json"}] * 2}
                  ).raise_for_status()
    photo = sorted((make_dataset(tmp_path / "p", {"test": 2}) / "test").rglob("*.png"))[0]

    missing = aws.run("invoke", str(photo), ok=False)
    assert "pass --target-model NAME" in one_error_line(missing)
    assert not [r for r in aws.server.requests if r.path.endswith("/invocations")]

    proc = aws.run("invoke", str(photo), "--target-model", "shelter-a", "--via", "both",
                   "--top-k", "1", "--json", str(tmp_path / "a.json"))
    sent = [r for r in aws.server.requests if r.path == "/endpoints/dogbreed-mme/invocations"]
    assert len(sent) == 2, [r.path for r in aws.server.requests]
    for request in sent:  # boto3's TargetModel and SDK v3's target_model alike
        assert request.headers["x-amzn-sagemaker-target-model"] == "shelter-a.tar.gz"
        assert request.headers["x-amzn-sagemaker-custom-attributes"] == "top_k=1"
        assert request.headers["content-type"] == "image/png"
        assert request.body == photo.read_bytes()
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["target_model"] == "shelter-a.tar.gz"
    assert {r["client"] for r in saved["results"]} == {"boto3", "sdk"}
    assert "1. Moon_rocks" in proc.stdout
