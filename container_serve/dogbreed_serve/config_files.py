"""What serve writes for its children: MMS's ports and mms.properties, nginx.conf.

Pure rendering from Settings (plus the ports chosen here); nothing is started.
"""

from __future__ import annotations

import socket
import string
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from dogbreed_contract import media

from .settings import Settings, shown

CONF = Path(__file__).with_name("conf")
# nginx finishes the requests in flight within this, then MMS gets the rest of
# SageMaker's 30 s between SIGTERM and SIGKILL.
DRAIN_S = 20
# multi-model-server 1.1.11 refuses to listen above this ("Invalid port number").
MMS_MAX_PORT = 32767
# The toolkit's default (-XX:-UseContainerSupport) plus three flags for a frontend that
# only moves bytes between sockets: the C1 compiler alone (C2's compile threads kept
# burning CPU for minutes), the serial collector, and no perf-data file in /tmp (which
# a read-only container may not have). At concurrency 16 on 2 CPUs the first two took
# the JVM from 4.3-4.9 to 1.7-1.9 ms of CPU per request (docs/benchmarks.md).
# SAGEMAKER_MODEL_SERVER_VMARGS replaces them all.
JVM_ARGS = "-XX:-UseContainerSupport -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData"


class ConfigError(Exception):
    """The environment asks for something serve cannot do (serve exits 2 with this line)."""


def port_range(value: str | None) -> range:
    """SAGEMAKER_SAFE_PORT_RANGE ("20000-20999", both ends included) or our default,
    without the ports MMS refuses."""
    if not value or not value.strip():
        return range(8081, MMS_MAX_PORT + 1)
    named = f"SAGEMAKER_SAFE_PORT_RANGE={shown(value)}"
    try:
        low, high = (int(part) for part in value.strip().split("-"))
    except ValueError:
        raise ConfigError(f"{named} is not LOW-HIGH (for example 20000-20999)") from None
    if low > high:
        raise ConfigError(f"{named} is reversed: give the lower port first ({high}-{low})")
    if not 1 <= low <= high <= 65535:
        raise ConfigError(f"{named}: ports run from 1 to 65535")
    if low > MMS_MAX_PORT:
        raise ConfigError(f"{named} lies above {MMS_MAX_PORT}, "
                          "where multi-model-server 1.1.11 refuses to listen: give a range "
                          f"that reaches below {MMS_MAX_PORT + 1}")
    return range(low, min(high, MMS_MAX_PORT) + 1)


def free_ports(count: int, candidates: range, avoid: int) -> list[int]:
    """``count`` free loopback ports from ``candidates`` (MMS's inference and management)."""
    found: list[int] = []
    for port in candidates:
        if port == avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise ConfigError(f"no {count} free loopback ports in {candidates.start}-"
                      f"{candidates.stop - 1} for multi-model-server (SAGEMAKER_SAFE_PORT_RANGE)")


def mms_ports(settings: Settings) -> tuple[int, int]:
    """(inference, management): loopback ports for MMS, not the public one."""
    inference, management = free_ports(2, port_range(settings.safe_port_range),
                                       avoid=settings.port)
    return inference, management


def mms_properties(settings: Settings, inference_port: int, management_port: int) -> str:
    lines = {
        "inference_address": f"http://127.0.0.1:{inference_port}",
        "management_address": f"http://127.0.0.1:{management_port}",
        "default_workers_per_model": settings.workers,
        "default_response_timeout": settings.timeout_s,
        "max_request_size": settings.max_body + 65536,
        "vmargs": settings.jvm_args or JVM_ARGS,
        "decode_input_request": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


HANDLER = "dogbreed_serve.handler:handle"


def registration_query(settings: Settings, name: str, model_dir: str) -> str:
    """The query string of MMS's ``POST /models`` for one model: our handler,
    server-side batching, the workers, and ``synchronous`` (MMS answers once every
    worker has loaded and warmed up the model)."""
    return urllib.parse.urlencode({
        "url": model_dir, "model_name": name, "handler": HANDLER,
        "runtime": "python3", "batch_size": settings.max_batch,
        "max_batch_delay": settings.max_batch_delay_ms,
        "initial_workers": settings.workers, "synchronous": "true",
        "response_timeout": settings.startup_timeout_s,
    })


def write_mms_properties(run_dir: Path, settings: Settings, inference_port: int,
                         management_port: int) -> Path:
    path = run_dir / "mms.properties"
    path.write_text(mms_properties(settings, inference_port, management_port))
    return path


UNAVAILABLE_FILE = "unavailable"


@dataclass(frozen=True)
class NginxFiles:
    """nginx's files in the run folder, and what serve does with them (supervisor.py)."""
    conf: Path         # the configuration nginx runs with
    closed: Path       # the same with the public port closed: the drain swaps it in, reloads
    unavailable: Path  # while this file exists, /ping and /invocations answer 503 at once


def nginx_conf(settings: Settings, run_dir: Path, mms_port: int, public: bool = True) -> str:
    """nginx.conf; ``public=False``: the public server listens on a socket in the run
    folder instead of the public port (nobody connects to it)."""
    listen = f"{settings.port} reuseport" if public else f"unix:{run_dir}/public-closed.sock"
    values = dict(
        workdir=run_dir, mms_port=mms_port, max_body=settings.max_body,
        timeout=settings.timeout_s, drain_s=DRAIN_S, accepted_types=media.nginx_type_pattern(),
        accepted_types_text=", ".join(t for t in media.ACCEPTED_TYPES if t != "image/jpg"),
        public_listen=listen, unavailable=run_dir / UNAVAILABLE_FILE,
        invocations_refusal="", multi_model_routes="", multi_model_guard="",
        paths_hint="POST /invocations or GET /ping")
    values["invoke_to_mms"] = _render("invoke.conf.template", values)
    if settings.multi_model:  # multi_model.py: SageMaker's multi-model API
        values["load_timeout"] = settings.startup_timeout_s + 5  # serve's own wait, then ours
        values.update(
            invocations_refusal="            return 404 '{\"error\": \"this container "
                                "serves many models (SAGEMAKER_MULTI_MODEL=true): invoke one "
                                "with POST /models/NAME/invoke\", \"status\": 404}';",
            multi_model_routes=_render("multi-model-routes.conf.template", values),
            multi_model_guard=_render("multi-model-guard.conf.template", values),
            paths_hint="POST /models/NAME/invoke, the /models API or GET /ping")
    return _render("nginx.conf.template", values)


def _render(template: str, values: dict) -> str:
    return string.Template((CONF / template).read_text()).substitute(values)


def write_nginx_conf(run_dir: Path, settings: Settings, mms_port: int) -> NginxFiles:
    files = NginxFiles(run_dir / "nginx.conf", run_dir / "nginx-closed.conf",
                       run_dir / UNAVAILABLE_FILE)
    files.conf.write_text(nginx_conf(settings, run_dir, mms_port))
    files.closed.write_text(nginx_conf(settings, run_dir, mms_port, public=False))
    return files
