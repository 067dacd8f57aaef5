"""Every call this project makes into the SageMaker Python SDK (v2), in one module.

The scripts under scripts/ (push, data, tune, train, deploy, invoke, cleanup, demo)
use boto3 directly for plain AWS API calls and come here for everything that goes
through the SDK: estimators with Debugger and profiler settings, hyperparameter
tuners, models, endpoints, batch transform, predictors, and local mode. SDK v2 is
used because v3 dropped Estimator, HyperparameterTuner, Model.deploy, Predictor and
local mode (see README); keeping it here makes a later move cheap.

Local mode runs our images with docker-compose exactly as SageMaker would, with no
AWS account: it needs a region but no credentials.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
# Local mode never calls IAM; any well-formed role ARN will do.
LOCAL_ROLE = "arn:aws:iam::111111111111:role/SageMakerRole"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def opt_out_of_telemetry(directory: Path) -> None:
    """The SDK reports usage unless told not to; a config file tells it."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                      "      TelemetryOptOut: true\n")
    os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)


def session(container_root: Path):
    """A LocalSession whose endpoint listens on a free port (8080 may be taken)."""
    from sagemaker.local import LocalSession

    container_root.mkdir(parents=True, exist_ok=True)
    sess = LocalSession(boto_session=boto3.Session(region_name=REGION))
    sess.config = {"local": {"local_code": True, "container_root": str(container_root),
                             "serving_port": free_port()}}
    return sess


def train(image: str, channels: dict[str, Path], hyperparameters: dict, output: Path,
          sess, logs: bool = True) -> str:
    """Run a local training job; returns the model.tar.gz path."""
    from sagemaker.estimator import Estimator

    estimator = Estimator(image_uri=image, role=LOCAL_ROLE, instance_count=1,
                          instance_type="local", hyperparameters=hyperparameters,
                          output_path=f"file://{output}", sagemaker_session=sess)
    estimator.fit({name: f"file://{path}" for name, path in channels.items()}, logs=logs)
    return estimator.model_data.replace("file://", "")


def deploy(image: str, model_tarball: str, sess):
    """Deploy to a local endpoint; returns a Predictor that sends raw bytes."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    model = Model(image_uri=image, model_data=f"file://{model_tarball}", role=LOCAL_ROLE,
                  sagemaker_session=sess, predictor_cls=Predictor)
    predictor = model.deploy(initial_instance_count=1, instance_type="local")
    predictor.serializer = IdentitySerializer(content_type="image/jpeg")
    predictor.deserializer = JSONDeserializer()
    return predictor


def predict(predictor, body: bytes, content_type: str) -> dict:
    from sagemaker.serializers import IdentitySerializer

    predictor.serializer = IdentitySerializer(content_type=content_type)
    return predictor.predict(body)


def remove_local_containers(container_root: Path) -> None:
    """Remove the containers local mode left behind under container_root (only those).

    docker-compose labels each container with the folder of its compose file, and
    local mode puts that folder under the session's container_root.
    """
    import shutil
    import subprocess

    docker = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"
    root = str(Path(container_root).resolve())
    listing = subprocess.run(
        [docker, "ps", "-a", "--filter", "label=com.docker.compose.project.working_dir",
         "--format", '{{.ID}} {{.Label "com.docker.compose.project.working_dir"}}'],
        capture_output=True, text=True).stdout.split("\n")
    ids = [line.split(" ", 1)[0] for line in listing
           if " " in line and line.split(" ", 1)[1].startswith(root)]
    if ids:
        subprocess.run([docker, "rm", "-f", *ids], capture_output=True)


def remove_leftovers(container_root: Path) -> None:
    """What local mode leaves behind: the containers of the sessions under
    container_root (remove_local_containers: only this run's, not those of other
    runs on the same Docker engine), then its network."""
    import shutil
    import subprocess

    remove_local_containers(container_root)
    docker = shutil.which("docker", path="/usr/bin") or "docker"
    # Docker refuses to remove a network that is still in use: another run keeps it.
    subprocess.run([docker, "network", "rm", "sagemaker-local"], capture_output=True)


# --- AWS sessions -----------------------------------------------------------------

def aws_session(boto_session):
    """A SageMaker session over an already checked boto3 session."""
    import sagemaker

    return sagemaker.Session(boto_session=boto_session)


def default_bucket(sm_session) -> str:
    """The SDK's default bucket (sagemaker-REGION-ACCOUNT), created if missing."""
    return sm_session.default_bucket()


# --- training and tuning ----------------------------------------------------------

DEBUGGER_RULES = ("vanishing_gradient", "overfit", "overtraining",
                  "poor_weight_initialization", "loss_not_decreasing")


def estimator(sm_session, image_uri: str, role: str, instance_type: str,
              instance_count: int, hyperparameters: dict, output_path: str,
              metric_definitions: list[dict], *, debugger: bool = True,
              profiler: bool = True, spot: bool = False, max_run: int = 24 * 3600,
              max_wait: int | None = None, checkpoint_s3_uri: str | None = None,
              base_job_name: str = "dogbreed-train", environment: dict | None = None):
    """An Estimator for the training image, with Debugger rules and the profiler."""
    from sagemaker.debugger import (
        CollectionConfig,
        DebuggerHookConfig,
        ProfilerConfig,
        ProfilerRule,
        Rule,
        rule_configs,
    )
    from sagemaker.estimator import Estimator

    extra: dict = {}
    if debugger:
        extra["debugger_hook_config"] = DebuggerHookConfig(
            s3_output_path=f"{output_path.rstrip('/')}/debug",
            collection_configs=[CollectionConfig("losses", parameters={"save_interval": "10"}),
                                CollectionConfig("gradients",
                                                 parameters={"save_interval": "50"}),
                                CollectionConfig("weights",
                                                 parameters={"save_interval": "50"})])
        extra["rules"] = [Rule.sagemaker(getattr(rule_configs, name)())
                          for name in DEBUGGER_RULES]
    else:
        extra["debugger_hook_config"] = False
    if profiler:
        extra["profiler_config"] = ProfilerConfig(
            s3_output_path=f"{output_path.rstrip('/')}/profiler",
            system_monitor_interval_millis=500)
        extra.setdefault("rules", []).append(ProfilerRule.sagemaker(rule_configs.ProfilerReport()))
    else:
        extra["disable_profiler"] = True
    if spot:
        extra.update(use_spot_instances=True, max_wait=max_wait or max_run,
                     checkpoint_s3_uri=checkpoint_s3_uri)
    elif checkpoint_s3_uri:
        extra["checkpoint_s3_uri"] = checkpoint_s3_uri
    return Estimator(image_uri=image_uri, role=role, instance_count=instance_count,
                     instance_type=instance_type, hyperparameters=hyperparameters,
                     output_path=output_path, metric_definitions=metric_definitions,
                     max_run=max_run, base_job_name=base_job_name,
                     environment=environment, sagemaker_session=sm_session, **extra)


def fit(est, channels: dict[str, str], wait: bool, logs: bool = True,
        job_name: str | None = None) -> str:
    """Start the training job; with wait, follow it (and its log) to the end."""
    est.fit(channels, wait=wait, logs="All" if (wait and logs) else "None",
            job_name=job_name)
    return est.latest_training_job.name


def describe_training_job(sm_session, name: str) -> dict:
    return sm_session.describe_training_job(name)


def follow_training_job(sm_session, name: str, logs: bool = True) -> dict:
    """Attach to a running job: stream its log (or poll) until it ends."""
    if logs:
        sm_session.logs_for_job(name, wait=True)
    else:
        sm_session.wait_for_job(name, poll=30)
    return sm_session.describe_training_job(name)


def parameter_range(kind: str, values: list):
    """('continuous'|'integer', [low, high, scaling]) or ('categorical', [values])."""
    from sagemaker.tuner import (
        CategoricalParameter,
        ContinuousParameter,
        IntegerParameter,
    )

    if kind == "categorical":
        return CategoricalParameter(values)
    cls = ContinuousParameter if kind == "continuous" else IntegerParameter
    low, high, scaling = values
    return cls(low, high, scaling_type=scaling)


def tuner(est, objective: str, objective_type: str, ranges: dict[str, tuple[str, list]],
          metric_definitions: list[dict], strategy: str, max_jobs: int,
          max_parallel_jobs: int, early_stopping: str = "Off",
          base_tuning_job_name: str = "dogbreed-hpo"):
    """A HyperparameterTuner over the training estimator."""
    from sagemaker.tuner import HyperparameterTuner

    return HyperparameterTuner(
        est, objective_metric_name=objective, objective_type=objective_type,
        hyperparameter_ranges={name: parameter_range(kind, values)
                               for name, (kind, values) in ranges.items()},
        metric_definitions=metric_definitions, strategy=strategy, max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs, early_stopping_type=early_stopping,
        base_tuning_job_name=base_tuning_job_name)


def tune(tuner_, channels: dict[str, str], wait: bool, job_name: str | None = None) -> str:
    tuner_.fit(channels, wait=False, job_name=job_name)
    name = tuner_.latest_tuning_job.name
    if wait:
        tuner_.wait()
    return name


def wait_for_tuning_job(sm_session, name: str, poll: int = 30) -> dict:
    return sm_session.wait_for_tuning_job(name, poll=poll)


# --- hosting ----------------------------------------------------------------------

def model(sm_session, image_uri: str, model_data: str, role: str, name: str | None = None):
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    return Model(image_uri=image_uri, model_data=model_data, role=role, name=name,
                 sagemaker_session=sm_session, predictor_cls=Predictor)


def deploy_endpoint(sm_session, image_uri: str, model_data: str, role: str,
                    endpoint_name: str, instance_type: str, instance_count: int,
                    poll: int = 30) -> str:
    """Model -> endpoint config -> endpoint (all named endpoint_name); waits for InService."""
    m = model(sm_session, image_uri, model_data, role, name=endpoint_name)
    m.deploy(initial_instance_count=instance_count, instance_type=instance_type,
             endpoint_name=endpoint_name, wait=False)
    sm_session.wait_for_endpoint(endpoint_name, poll=poll)
    return endpoint_name


def batch_transform(sm_session, image_uri: str, model_data: str, role: str,
                    model_name: str, instance_type: str, instance_count: int,
                    input_s3: str, output_s3: str, content_type: str = "image/jpeg",
                    wait: bool = True) -> str:
    """A batch transform job over an S3 folder of images, one image per request."""
    m = model(sm_session, image_uri, model_data, role, name=model_name)
    transformer = m.transformer(instance_count=instance_count, instance_type=instance_type,
                                strategy="SingleRecord", output_path=output_s3,
                                accept="application/json")
    transformer.transform(input_s3, data_type="S3Prefix", content_type=content_type,
                          split_type=None, job_name=model_name, wait=False, logs=False)
    if wait:
        transformer.wait(logs=False)
    return transformer.latest_transform_job.name


def predictor(sm_session, endpoint_name: str):
    """A Predictor that sends raw bytes and reads JSON."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    return Predictor(endpoint_name, sagemaker_session=sm_session,
                     serializer=IdentitySerializer(content_type="image/jpeg"),
                     deserializer=JSONDeserializer())


def predict_bytes(predictor_, body: bytes, content_type: str, top_k: int | None = None):
    """One raw-bytes request through the SDK Predictor; returns the decoded JSON."""
    args = {"ContentType": content_type, "Accept": "application/json"}
    if top_k:
        args["CustomAttributes"] = f"top_k={top_k}"
    return predictor_.predict(body, initial_args=args)


def local_endpoint_session(serving_port: int, container_root: Path | None = None):
    """A LocalSession that talks to a local endpoint on serving_port."""
    from sagemaker.local import LocalSession

    sess = LocalSession(boto_session=boto3.Session(region_name=REGION))
    config = {"local": {"local_code": True, "serving_port": serving_port}}
    if container_root is not None:
        container_root.mkdir(parents=True, exist_ok=True)
        config["local"]["container_root"] = str(container_root)
    sess.config = config
    return sess
