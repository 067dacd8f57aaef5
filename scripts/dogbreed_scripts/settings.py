"""One configuration for every script: flags, then environment variables, then a file.

Each setting is looked up in that order and the first one given wins:

1. the command-line flag (``--region``),
2. an environment variable (``AWS_REGION``, ``DOGBREED_ROLE``, ...),
3. the config file: ``--config FILE``, else ``$DOGBREED_CONFIG``, else ``./dogbreed.toml``
   when it exists (TOML, keys as in ``FIELDS``: ``region = "eu-west-1"``),
4. the default.

It also turns the usual AWS mistakes (no credentials, no region, no role, an API
error) into one readable line and a non-zero exit code, instead of a stack trace,
The state file that steps share is state.py's; a command's settings, state and AWS
session come together in context.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dogbreed_contract import metrics as contract_metrics

ROOT = Path(__file__).resolve().parents[2]  # the repository (an editable install)
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")


class ConfigError(Exception):
    """A setting is missing or wrong; the message says how to give it."""


@dataclass(frozen=True)
class Field:
    name: str
    env: tuple[str, ...]
    default: Any
    help: str


FIELDS = {f.name: f for f in [
    Field("region", ("AWS_REGION", "AWS_DEFAULT_REGION"), None, "AWS region"),
    Field("profile", ("AWS_PROFILE",), None, "AWS credentials profile"),
    Field("role", ("DOGBREED_ROLE", "SAGEMAKER_ROLE_ARN"), None,
          "SageMaker execution role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
    Field("bucket", ("DOGBREED_BUCKET",), None,
          "S3 bucket (default: the SageMaker default bucket sagemaker-REGION-ACCOUNT)"),
    Field("prefix", ("DOGBREED_PREFIX",), "dogbreed", "S3 key prefix for data and outputs"),
    Field("registry", ("DOGBREED_REGISTRY",), None,
          "image registry host (default: the one push.py pushed to, else "
          "ACCOUNT.dkr.ecr.REGION.amazonaws.com)"),
    Field("train_repository", ("DOGBREED_TRAIN_REPOSITORY",), "dogbreed-train",
          "repository name of the training image"),
    Field("serve_repository", ("DOGBREED_SERVE_REPOSITORY",), "dogbreed-serve",
          "repository name of the serving image"),
    Field("tag", ("DOGBREED_TAG",), "latest", "image tag in the registry"),
    Field("local_train_image", ("TRAIN_IMAGE",), "dogbreed-train:latest",
          "local training image (push source; local mode)"),
    Field("local_serve_image", ("SERVE_IMAGE",), "dogbreed-serve:latest",
          "local serving image (push source; local mode)"),
    Field("train_instance_type", ("DOGBREED_TRAIN_INSTANCE_TYPE",), "ml.g4dn.xlarge",
          "instance type for training and tuning jobs"),
    Field("serve_instance_type", ("DOGBREED_SERVE_INSTANCE_TYPE",), "ml.m5.large",
          "instance type for endpoints and batch transform"),
    Field("workdir", ("DOGBREED_WORKDIR",), "dogbreed-work",
          "local folder for downloads, reports and the state file"),
]}


def parser(doc: str) -> argparse.ArgumentParser:
    """A step's parser: its docstring's first paragraph as the description, the rest
    (examples) as the epilog of --help."""
    summary, _, details = doc.partition("\n\n")
    return argparse.ArgumentParser(description=summary, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Add the shared settings `names` (and --config) as flags, defaulting to None."""
    group = parser.add_argument_group(
        "configuration (flag > environment variable > config file > default)")
    group.add_argument("--config", type=Path, default=None,
                       help="TOML config file (default: $DOGBREED_CONFIG, else ./dogbreed.toml)")
    for name in names:
        f = FIELDS[name]
        where = ", ".join(["$" + e for e in f.env] + [f"'{name}' in the file"])
        default = f"; default {f.default}" if f.default is not None else ""
        group.add_argument(flag(name), dest=name, default=None,
                           help=f"{f.help} [{where}{default}]")


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    path = getattr(args, "config", None) or os.environ.get("DOGBREED_CONFIG")
    if not path:
        if not Path("dogbreed.toml").exists():
            return {}
        path = "dogbreed.toml"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(FIELDS)})")
    return data


class Settings(dict):
    """The resolved settings; attribute access for readability. ``given`` names the
    settings a flag, the environment or the config file set (not a default)."""

    given: frozenset = frozenset()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def state_file(self) -> Path:
        return Path(self["workdir"]) / "state.json"

    def s3(self, *parts: str) -> str:
        """s3://BUCKET/PREFIX/parts..."""
        return "s3://" + "/".join([self["bucket"], *(p.strip("/") for p in
                                                     [self["prefix"], *parts] if p)])


def resolve(args: argparse.Namespace) -> Settings:
    """flag > environment > config file > default, for every known setting."""
    from_file = _config_file(args)
    out = Settings()
    given: set[str] = set()
    for name, f in FIELDS.items():
        value = getattr(args, name, None)
        if value is None:
            value = next((os.environ[e] for e in f.env if os.environ.get(e)), None)
        if value is None:
            value = from_file.get(name)
        out[name] = f.default if value is None else value
        if value is not None:
            given.add(name)
    out.given = frozenset(given)
    if out["role"] is not None and not ROLE_ARN.match(str(out["role"])):
        raise ConfigError(f"role {out['role']!r} is not an IAM role ARN "
                          "(arn:aws:iam::ACCOUNT:role/NAME)")
    return out


def require(settings: Settings, *names: str) -> None:
    """Fail with one line per missing setting, saying where it can come from."""
    for name in names:
        if not settings.get(name):
            f = FIELDS[name]
            raise ConfigError(
                f"no {f.help.split(' (')[0]} given: pass {flag(name)}, set "
                f"{' or '.join('$' + e for e in f.env)}, or put {name} = \"...\" in "
                "the config file (dogbreed.toml)")


def boto_session(settings: Settings):
    """A boto3 session for the configured region/profile, checked before any call."""
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(profile_name=settings.get("profile"),
                                region_name=settings.get("region"))
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(f"{exc}: check --profile / $AWS_PROFILE") from None
    if not session.region_name:
        require(settings, "region")
    if session.get_credentials() is None:
        raise ConfigError(
            "no AWS credentials found: run `aws configure` (or `aws sso login`), set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or choose a profile with "
            "--profile / $AWS_PROFILE")
    settings["region"] = session.region_name
    return session


def account_id(session) -> str:
    return session.client("sts").get_caller_identity()["Account"]


ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def check_image_uri(uri: str) -> str:
    """REGISTRY/REPOSITORY:TAG (or @sha256:DIGEST); SageMaker rejects anything else."""
    host, _, rest = uri.partition("/")
    if not rest or ("." not in host and ":" not in host):
        raise ConfigError(f"image URI {uri!r} has no registry host (REGISTRY/REPOSITORY:TAG)")
    if "@sha256:" not in rest and ":" not in rest:
        raise ConfigError(f"image URI {uri!r} has no tag: add :TAG (e.g. {uri}:latest)")
    return uri


def require_image_in_registry(session, uri: str) -> None:
    """For an ECR URI, fail before any SageMaker call when the image is not there
    (SageMaker would accept the job and fail it minutes later)."""
    host, _, rest = uri.partition("/")
    if not ECR_HOST.match(host):
        return
    repository, _, tag = rest.partition(":")
    ecr = session.client("ecr")
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except (ecr.exceptions.ImageNotFoundException,
            ecr.exceptions.RepositoryNotFoundException):
        raise ConfigError(f"image {uri} is not in the registry: run scripts/push.py "
                          "(or pass --image-uri / --tag of an image that is)") from None


def default_bucket(session) -> str:
    """SageMaker's default bucket name, sagemaker-REGION-ACCOUNT, created if missing."""
    import botocore.exceptions

    name = f"sagemaker-{session.region_name}-{account_id(session)}"
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=name)
    except botocore.exceptions.ClientError:
        where = ({} if session.region_name == "us-east-1" else
                 {"CreateBucketConfiguration": {"LocationConstraint": session.region_name}})
        s3.create_bucket(Bucket=name, **where)
    return name


def metric_definitions(path: Path | None = None) -> list[dict[str, str]]:
    """The regexes for the training image's log lines (the contract's), or a file's own."""
    if path is None:
        return contract_metrics.definitions()
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"--metric-definitions {path}: cannot be read as JSON ({reason})") \
            from None
    if not (isinstance(found, list) and found and all(
            isinstance(d, dict) and isinstance(d.get("Name"), str)
            and isinstance(d.get("Regex"), str) for d in found)):
        raise ConfigError(f"--metric-definitions {path}: expected a JSON list of "
                          '{"Name": ..., "Regex": ...} objects')
    for d in found:
        try:
            re.compile(d["Regex"])
        except re.error as exc:
            raise ConfigError(f"--metric-definitions {path}: the regex of {d['Name']!r} is "
                              f"not valid ({exc})") from None
    return found


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {pair!r} is not NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


# --- one readable line instead of a traceback ------------------------------------

def describe_error(exc: BaseException) -> str | None:
    import botocore.exceptions as bce

    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, bce.NoCredentialsError):
        return ("no AWS credentials found: run `aws configure`, set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or choose a profile with --profile")
    if isinstance(exc, bce.NoRegionError):
        return "no AWS region: pass --region, set AWS_REGION, or put region in dogbreed.toml"
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "?")
        code = err.get("Code", "?")
        hint = ""
        if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
                    "UnrecognizedClientException", "SignatureDoesNotMatch"):
            hint = " (your AWS credentials are not valid here: refresh them)"
        elif code in ("AccessDenied", "AccessDeniedException"):
            hint = " (see docs/aws.md, 'IAM permissions')"
        return f"AWS refused {op}: {code}: {err.get('Message', exc)}{hint}"
    if isinstance(exc, bce.BotoCoreError):
        return str(exc)
    name = type(exc).__name__
    if name in ("UnexpectedStatusException", "CapacityError", "FailedStatusError"):
        return f"SageMaker job did not succeed: {exc}"
    if name in ("LocalJobFailed", "EndpointError"):
        return str(exc)
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, as `timeout`, systemd and CI runners send it: handled as Ctrl-C is, so
    every command removes the containers and child processes it started on its way out."""


def stop_on_sigterm() -> None:
    """From now on a SIGTERM raises Terminated in the main thread; a second one while
    the clean-up runs is ignored (a SIGKILL still ends the process)."""
    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
        own_errors: bool = False) -> None:
    """Run a script's main() and exit with its code. Ctrl-C and SIGTERM stop it (130,
    143); known errors become one line on stderr and exit 1 (unless own_errors: the
    command reports its own)."""
    stop_on_sigterm()
    try:
        code = main(argv)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
        code = 143 if terminated else 130
    except Exception as exc:  # noqa: BLE001 - only known errors are shortened
        message = None if own_errors else describe_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        code = 1
    sys.exit(code)
