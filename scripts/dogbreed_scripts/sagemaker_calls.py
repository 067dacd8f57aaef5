"""Every call this project makes into the SageMaker Python SDK (v3), in one module.

The scripts use boto3 directly for plain AWS API calls (ECR, S3, auto scaling,
deletes); this module holds the SageMaker calls, through SDK v3 where it fits:

- training jobs through sagemaker-core's ``TrainingJob`` resource (it sends
  exactly the fields we give it, Debugger and profiler included when asked);
- invocations through sagemaker-core's ``Endpoint.invoke`` / ``invoke_async``;
- hyperparameter tuning through ``sagemaker.train.tuner.HyperparameterTuner``
  over a ``ModelTrainer``;
- local training through ``ModelTrainer`` in ``LOCAL_CONTAINER`` mode, which runs
  the training image with docker compose as SageMaker would, with no AWS account.

SageMaker Debugger (closed to new customers since 2026-07-30) and the SageMaker
profiler (support ends 2027-06-30) are attached only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3

REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
DEBUGGER_RULES = ("VanishingGradient", "Overfit", "Overtraining",
                  "PoorWeightInitialization", "LossNotDecreasing")
TENSORBOARD_DIR = "/opt/ml/output/tensorboard"   # where the training image writes
CHECKPOINT_DIR = "/opt/ml/checkpoints"


def opt_out_of_telemetry(directory: Path) -> None:
    """The SDK reports usage unless told not to; a config file tells it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)


def sdk_session(boto_session):
    """A v3 SageMaker session over an already checked boto3 session."""
    from sagemaker.core.helper.session_helper import Session

    return Session(boto_session=boto_session)


# --- local mode (no AWS account) -----------------------------------------------------

class LocalJobFailed(Exception):
    """A local training job ended with an error; the message has its failure file."""


def train_locally(image: str, channels: dict[str, Path], hyperparameters: dict,
                  root: Path, instance_count: int = 1, log: Path | None = None) -> Path:
    """A training job in local containers (one per instance) under root; returns the
    model.tar.gz it packed. Needs a region, not credentials. The containers' output
    goes to stdout, or to the file log."""
    import contextlib

    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    root.mkdir(parents=True, exist_ok=True)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER, training_image=image,
        compute=Compute(instance_type="local_cpu", instance_count=instance_count),
        input_data_config=[InputData(channel_name=name, data_source=str(path))
                           for name, path in channels.items()],
        hyperparameters={k: str(v) for k, v in hyperparameters.items()},
        base_job_name="dogbreed-train", local_container_root=str(root),
        sagemaker_session=sdk_session(boto3.Session(region_name=REGION)))
    with contextlib.ExitStack() as stack:
        if log is not None:
            stack.enter_context(contextlib.redirect_stdout(
                stack.enter_context(open(log, "w", buffering=1))))  # line by line: tail -f
        try:
            trainer.train(wait=True)
        except RuntimeError as exc:  # the SDK's "Failed to run ... exited with code N"
            failure = sorted(root.glob("algo-*/output/failure"))
            reason = failure[0].read_text().strip().splitlines()[0] if failure else str(exc)
            raise LocalJobFailed(f"local training job failed: {reason}") from None
    return root / "compressed_artifacts" / "model.tar.gz"


def remove_local_containers(container_root: Path) -> None:
    """Remove the containers local training left behind under container_root (only those).

    docker compose labels each container with the folder of its compose file, and
    ModelTrainer's local mode puts that file in its local_container_root.
    """
    import docker

    root = str(Path(container_root).resolve())
    client = docker.from_env()
    try:
        for container in client.containers.list(
                all=True, filters={"label": "com.docker.compose.project.working_dir"}):
            if container.labels.get("com.docker.compose.project.working_dir", "").startswith(root):
                container.remove(force=True)
    finally:
        client.close()


def remove_leftovers(container_root: Path) -> None:
    """The containers under container_root, then local mode's network if nothing else
    uses it (Docker refuses to remove a network in use: another run keeps it)."""
    import docker

    remove_local_containers(container_root)
    client = docker.from_env()
    try:
        for network in client.networks.list(names=["sagemaker-local"]):
            try:
                network.remove()
            except docker.errors.APIError:
                pass
    finally:
        client.close()


# --- training and tuning --------------------------------------------------------------

def _tags(tags: dict[str, str] | None) -> list[dict] | None:
    return [{"key": k, "value": v} for k, v in (tags or {}).items()] or None


def debugger_settings(output_path: str, region: str) -> dict:
    """Debugger hook collections and its built-in rules (opt-in)."""
    from sagemaker.core import image_uris, shapes

    image = image_uris.retrieve("debugger", region)
    return {
        "debug_hook_config": shapes.DebugHookConfig(
            s3_output_path=f"{output_path.rstrip('/')}/debug",
            collection_configurations=[
                shapes.CollectionConfiguration(collection_name=name,
                                               collection_parameters={"save_interval": every})
                for name, every in (("losses", "10"), ("gradients", "50"), ("weights", "50"))]),
        "debug_rule_configurations": [
            shapes.DebugRuleConfiguration(rule_configuration_name=rule,
                                          rule_evaluator_image=image,
                                          rule_parameters={"rule_to_invoke": rule})
            for rule in DEBUGGER_RULES]}


def profiler_settings(output_path: str, region: str) -> dict:
    """System metrics every 500 ms and the ProfilerReport rule (opt-in)."""
    from sagemaker.core import image_uris, shapes

    return {
        "profiler_config": shapes.ProfilerConfig(
            s3_output_path=f"{output_path.rstrip('/')}/profiler",
            profiling_interval_in_milliseconds=500),
        "profiler_rule_configurations": [shapes.ProfilerRuleConfiguration(
            rule_configuration_name="ProfilerReport",
            rule_evaluator_image=image_uris.retrieve("debugger", region),
            rule_parameters={"rule_to_invoke": "ProfilerReport"})]}


def _channels(channels: dict[str, str]) -> list:
    from sagemaker.core import shapes

    return [shapes.Channel(channel_name=name, data_source=shapes.DataSource(
        s3_data_source=shapes.S3DataSource(s3_data_type="S3Prefix", s3_uri=uri,
                                           s3_data_distribution_type="FullyReplicated")))
            for name, uri in channels.items()]


def start_training_job(boto_session, *, name: str, image_uri: str, role: str,
                       instance_type: str, instance_count: int, hyperparameters: dict,
                       channels: dict[str, str], output_path: str,
                       metric_definitions: list[dict], max_run: int,
                       spot: bool = False, max_wait: int | None = None,
                       checkpoint_s3_uri: str | None = None,
                       tensorboard_s3_uri: str | None = None,
                       environment: dict[str, str] | None = None,
                       tags: dict[str, str] | None = None,
                       debugger: bool = False, profiler: bool = False) -> str:
    """CreateTrainingJob through sagemaker-core's TrainingJob; returns the job name."""
    from sagemaker.core import shapes
    from sagemaker.core.resources import TrainingJob

    region = boto_session.region_name
    extra: dict = {}
    if debugger:
        extra.update(debugger_settings(output_path, region))
    if profiler:
        extra.update(profiler_settings(output_path, region))
    if checkpoint_s3_uri:
        extra["checkpoint_config"] = shapes.CheckpointConfig(s3_uri=checkpoint_s3_uri,
                                                             local_path=CHECKPOINT_DIR)
    if tensorboard_s3_uri:
        extra["tensor_board_output_config"] = shapes.TensorBoardOutputConfig(
            s3_output_path=tensorboard_s3_uri, local_path=TENSORBOARD_DIR)
    if spot:
        extra["enable_managed_spot_training"] = True
    if environment:
        extra["environment"] = environment
    if tags:
        extra["tags"] = _tags(tags)
    TrainingJob.create(
        training_job_name=name, role_arn=role,
        algorithm_specification=shapes.AlgorithmSpecification(
            training_image=image_uri, training_input_mode="File",
            metric_definitions=[shapes.MetricDefinition(name=d["Name"], regex=d["Regex"])
                                for d in metric_definitions]),
        hyper_parameters={k: str(v) for k, v in hyperparameters.items()},
        input_data_config=_channels(channels),
        output_data_config=shapes.OutputDataConfig(s3_output_path=output_path),
        resource_config=shapes.ResourceConfig(instance_type=instance_type,
                                              instance_count=instance_count,
                                              volume_size_in_gb=30),
        stopping_condition=shapes.StoppingCondition(
            max_runtime_in_seconds=max_run,
            **({"max_wait_time_in_seconds": max_wait} if spot else {})),
        session=boto_session, region=region, **extra)
    return name


def follow_training_job(boto_session, name: str, logs: bool = True) -> dict:
    """Wait for a job to end (streaming its CloudWatch log with logs); returns its
    DescribeTrainingJob answer."""
    from sagemaker.core.resources import TrainingJob

    job = TrainingJob.get(training_job_name=name, session=boto_session,
                          region=boto_session.region_name)
    try:
        job.wait(logs=logs)
    except Exception as exc:  # noqa: BLE001 - the description says what went wrong
        if type(exc).__name__ not in ("FailedStatusError", "TimeoutExceededError"):
            raise
    return describe_training_job(boto_session, name)


def describe_training_job(boto_session, name: str) -> dict:
    return boto_session.client("sagemaker").describe_training_job(TrainingJobName=name)


def parameter_range(kind: str, values: list):
    """('continuous'|'integer', [low, high, scaling]) or ('categorical', [values])."""
    from sagemaker.core.parameter import (
        CategoricalParameter,
        ContinuousParameter,
        IntegerParameter,
    )

    if kind == "categorical":
        return CategoricalParameter(values)
    cls = ContinuousParameter if kind == "continuous" else IntegerParameter
    low, high, scaling = values
    return cls(low, high, scaling_type=scaling)


def start_tuning_job(boto_session, *, name: str, image_uri: str, role: str,
                     instance_type: str, instance_count: int, static: dict[str, str],
                     channels: dict[str, str], output_path: str,
                     metric_definitions: list[dict], max_run: int, objective: str,
                     objective_type: str, ranges: dict[str, tuple[str, list]],
                     strategy: str, max_jobs: int, max_parallel_jobs: int,
                     early_stopping: str = "Off", tags: dict[str, str] | None = None,
                     wait: bool = False) -> str:
    """A HyperparameterTuner over a ModelTrainer for the training image; returns the
    tuning job's name (waits for it with wait)."""
    from sagemaker.core.training.configs import Compute, OutputDataConfig, StoppingCondition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.tuner import HyperparameterTuner

    trainer = ModelTrainer(
        training_image=image_uri, role=role, sagemaker_session=sdk_session(boto_session),
        compute=Compute(instance_type=instance_type, instance_count=instance_count),
        hyperparameters=dict(static), base_job_name="dogbreed-train",
        output_data_config=OutputDataConfig(s3_output_path=output_path),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=max_run))
    tuner = HyperparameterTuner(
        trainer, objective_metric_name=objective, objective_type=objective_type,
        hyperparameter_ranges={n: parameter_range(kind, values)
                               for n, (kind, values) in ranges.items()},
        metric_definitions=metric_definitions, strategy=strategy, max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs, early_stopping_type=early_stopping,
        tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()] or None)
    tuner.tune(inputs=dict(channels), job_name=name, wait=wait)
    return tuner.latest_tuning_job.hyper_parameter_tuning_job_name


# --- hosting ----------------------------------------------------------------------------
# Models, endpoint configs, endpoints and transform jobs are created with the boto3
# SageMaker client: sagemaker-core's Model/EndpointConfig/Endpoint/TransformJob.create
# describe the resource right after creating it and reject answers with empty
# optional structures (as moto gives), so the requests could not be tested here.

def _boto_tags(tags: dict[str, str] | None) -> dict:
    return {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}


def create_model(boto_session, name: str, image_uri: str, model_data: str, role: str,
                 tags: dict[str, str] | None = None, multi_model: bool = False) -> str:
    """CreateModel for the serving image and a model.tar.gz; with multi_model, a
    MultiModel model over model_data, an S3 prefix of NAME.tar.gz archives, with the
    serving image told so (SAGEMAKER_MULTI_MODEL=true)."""
    container = {"Image": image_uri, "ModelDataUrl": model_data}
    if multi_model:
        container.update(Mode="MultiModel", Environment={"SAGEMAKER_MULTI_MODEL": "true"})
    boto_session.client("sagemaker").create_model(
        ModelName=name, ExecutionRoleArn=role, PrimaryContainer=container, **_boto_tags(tags))
    return name


def create_endpoint(boto_session, name: str, model: str, *, instance_type: str | None,
                    instance_count: int = 1, serverless: tuple[int, int] | None = None,
                    async_output: str | None = None, async_max_concurrent: int | None = None,
                    startup_timeout: int | None = None, tags: dict[str, str] | None = None,
                    wait: bool = True, poll: int = 30) -> str:
    """Endpoint config and endpoint (both named name) for one model: real-time on
    instances, serverless (memory MB, max concurrency), or asynchronous (results to
    async_output). Waits for InService with wait."""
    sm = boto_session.client("sagemaker")
    variant: dict = {"VariantName": "AllTraffic", "ModelName": model}
    if serverless:
        memory, concurrency = serverless
        variant["ServerlessConfig"] = {"MemorySizeInMB": memory, "MaxConcurrency": concurrency}
    else:
        variant.update(InstanceType=instance_type, InitialInstanceCount=instance_count,
                       InitialVariantWeight=1.0)
        if startup_timeout:
            variant["ContainerStartupHealthCheckTimeoutInSeconds"] = startup_timeout
    extra: dict = _boto_tags(tags)
    if async_output:
        extra["AsyncInferenceConfig"] = {"OutputConfig": {
            "S3OutputPath": async_output,
            "S3FailurePath": f"{async_output.rstrip('/')}/failures"}}
        if async_max_concurrent:
            extra["AsyncInferenceConfig"]["ClientConfig"] = {
                "MaxConcurrentInvocationsPerInstance": async_max_concurrent}
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant], **extra)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name, **_boto_tags(tags))
    if wait:
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": poll, "MaxAttempts": 7200 // poll + 1})
    return name


def start_batch_transform(boto_session, name: str, model: str, *, instance_type: str,
                          instance_count: int, input_s3: str, output_s3: str,
                          content_type: str = "image/jpeg", wait: bool = True,
                          poll: int = 30) -> str:
    """A batch transform job over an S3 folder of images, one image per request."""
    sm = boto_session.client("sagemaker")
    sm.create_transform_job(
        TransformJobName=name, ModelName=model, BatchStrategy="SingleRecord",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": input_s3}},
                        "ContentType": content_type, "SplitType": "None"},
        TransformOutput={"S3OutputPath": output_s3, "Accept": "application/json"},
        TransformResources={"InstanceType": instance_type, "InstanceCount": instance_count})
    if wait:
        sm.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=name, WaiterConfig={"Delay": poll, "MaxAttempts": 86400 // poll})
    return name


def _endpoint(name: str):
    """The Endpoint resource by name alone: invoking needs no DescribeEndpoint."""
    from sagemaker.core.resources import Endpoint

    return Endpoint(endpoint_name=name)


def _invoke_args(content_type: str, top_k: int | None) -> dict:
    """What every invocation sends besides the image: its type, JSON back, top_k."""
    args = {"content_type": content_type, "accept": "application/json"}
    if top_k:
        args["custom_attributes"] = f"top_k={top_k}"
    return args


def invoke_bytes(boto_session, endpoint: str, body: bytes, content_type: str,
                 top_k: int | None = None, target_model: str | None = None) -> bytes:
    """One raw-bytes InvokeEndpoint through sagemaker-core's Endpoint; the answer's bytes.
    target_model: the archive of a multi-model endpoint (NAME.tar.gz) to answer."""
    args = _invoke_args(content_type, top_k)
    if target_model:
        args["target_model"] = target_model
    answer = _endpoint(endpoint).invoke(body=body, session=boto_session,
                                        region=boto_session.region_name, **args)
    body = answer.body
    return body.read() if hasattr(body, "read") else body


def invoke_async(boto_session, endpoint: str, input_s3: str, content_type: str,
                 top_k: int | None = None) -> str:
    """InvokeEndpointAsync on an image already in S3; returns the output location."""
    args = _invoke_args(content_type, top_k)
    answer = _endpoint(endpoint).invoke_async(input_location=input_s3, session=boto_session,
                                              region=boto_session.region_name, **args)
    return answer.output_location
