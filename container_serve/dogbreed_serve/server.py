"""`serve`: multi-model-server behind nginx, configured from SageMaker's environment.

Start-up order is what makes /ping honest:
  1. The model directory is checked whole (model.json, the ONNX session, its output
     width against the labels); a broken one ends here with one line saying what is
     wrong and what to do (exit 2).
  2. MMS starts on loopback ports only (inference and management API), inside
     SAGEMAKER_SAFE_PORT_RANGE when that is set, with its temporary files (pid file,
     worker sockets) in a fresh run folder: a restarted container starts clean.
  3. The model is registered through the management API with server-side batching
     and ``synchronous=true``: the call returns once a worker has loaded and warmed
     up the model (see handler.py). If MMS exits meanwhile, serve stops waiting.
  4. Only then nginx opens the public port (SAGEMAKER_BIND_TO_PORT, default 8080).
Before step 4 the port refuses connections, so SageMaker never routes to a cold
container. If MMS or nginx exits, ``serve`` exits too and SageMaker replaces it.

With SAGEMAKER_MULTI_MODEL=true (a multi-model endpoint) there is no model at start:
steps 1 and 3 wait for SageMaker's POST /models, one model at a time, and nginx opens
the port once MMS answers (multi_model.py).

SIGTERM (``docker stop``, an endpoint update) is honoured at every stage. Once
serving, it drains: nginx stops accepting connections and finishes the requests in
flight (at most DRAIN_S), then MMS stops, and serve exits 0. Exit codes otherwise:
1 MMS or nginx failed, 2 a broken model or environment, 3 no working worker (see
supervisor.py), 128+N a child killed by signal N.

Where each part lives: the start-up steps here; the children and serve's states
(starting, ready, unhealthy, stopping) in supervisor.py; the files written for MMS
and nginx in config_files.py; the environment, read once into one Settings, in
settings.py.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from dogbreed_contract import ModelCardError
from dogbreed_contract.model_card import FILE as MODEL_CARD_FILE
from dogbreed_contract.model_card import ModelCard

from . import config_files, logs
from .settings import READY_FILE, RUN_DIR_ENV, Settings, SettingsError, shown
from .supervisor import Failure, MmsHealth, State, Stop, Supervisor

log = logging.getLogger("dogbreed_serve.server")

SERVICE_USER = "model-server"
RUN_PREFIX, MODEL_COPY_PREFIX = "dogbreed-serve-", "dogbreed-model-"


# The run folder holds Unix sockets (nginx's internal hops, /metrics, MMS's workers),
# and the kernel takes at most 107 bytes for a socket's path: the folder it is made in
# may take up what the longest one, /dogbreed-serve-XXXXXXXX/public-closed.sock, leaves.
BASE_MAX_CHARS = 107 - len("/dogbreed-serve-XXXXXXXX/public-closed.sock")


def writable_base() -> Path:
    """Where this start keeps its files: the first writable of TMPDIR, /tmp, /dev/shm,
    /var/tmp whose path leaves room for the sockets. A container run with --read-only
    still has /dev/shm (a tmpfs)."""
    candidates = [os.environ.get("TMPDIR"), "/tmp", "/dev/shm", "/var/tmp"]  # nosec B108
    for candidate in dict.fromkeys(c for c in candidates if c):
        path = Path(candidate)
        if len(os.fsencode(path.absolute())) > BASE_MAX_CHARS:
            log.warning("not keeping the run folder in %s: its path is longer than the %d "
                        "bytes the Unix sockets in it leave room for", shown(str(path), 60),
                        BASE_MAX_CHARS)
            continue
        try:
            probe = tempfile.mkdtemp(prefix=".dogbreed-probe-", dir=path)
        except OSError:
            continue
        os.rmdir(probe)
        return path
    raise Failure("serve needs a writable folder for its sockets and temporary files, and "
                  "/tmp, /dev/shm and /var/tmp are all read-only: give the container a "
                  "writable /tmp (docker run --tmpfs /tmp, or a volume) or set TMPDIR to a "
                  "writable folder", 2)


def remove_stale(base: Path) -> None:
    """The run folders and model copies an earlier start of this container left behind
    (docker restart keeps /tmp): the old MMS pid file in one made MMS refuse to start."""
    for prefix in (RUN_PREFIX, MODEL_COPY_PREFIX):
        for old in base.glob(prefix + "*"):
            shutil.rmtree(old, ignore_errors=True)


def drop_privileges(model_dir: str | None, model_file: str | None, base: Path) -> str | None:
    """Run everything as SERVICE_USER; returns the model dir that user can read.

    SageMaker starts containers as root and mounts the model as root's files; SDK
    local mode even extracts it into a 0700 folder. When the service user cannot
    read it, the model is copied to a folder it owns first. (Multi-model mode has no
    model at start: model_dir None.)
    """
    if os.getuid() != 0:
        return model_dir
    user = pwd.getpwnam(SERVICE_USER)
    try:
        readable = model_dir is None or all(
            subprocess.run(["test", "-r", str(Path(model_dir) / name)], user=user.pw_uid,
                           group=user.pw_gid, extra_groups=[], timeout=60).returncode == 0
            for name in (MODEL_CARD_FILE, model_file))
    except subprocess.TimeoutExpired:
        raise Failure(f"checking whether {SERVICE_USER} can read {model_dir} took over 60 s: "
                      "the file system holding the model does not answer", 2) from None
    if not readable:
        copy = Path(tempfile.mkdtemp(prefix=MODEL_COPY_PREFIX, dir=base))
        try:
            shutil.copytree(model_dir, copy, dirs_exist_ok=True)
        except OSError as exc:
            raise Failure(f"{SERVICE_USER} cannot read {model_dir}, and copying it to {base} "
                          f"failed ({exc.strerror or exc}): make the model files readable to "
                          f"uid {user.pw_uid}, or give the container more space in {base}",
                          2) from None
        for path in [copy, *copy.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        log.info("copied the model to %s: %s cannot read %s", copy, SERVICE_USER, model_dir)
        model_dir = str(copy)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=SERVICE_USER)
    return model_dir


def start(supervisor: Supervisor, settings: Settings) -> tuple[int, MmsHealth | None]:
    """Steps 1-4 above, ending in READY; returns MMS's inference port and, in
    multi-model mode, what counts as healthy (for the health checks). Raises Stop on
    a signal, Failure when serve cannot go on."""
    if settings.multi_model:  # no model yet: SageMaker loads them (multi_model.py)
        base = writable_base()
        remove_stale(base)
        drop_privileges(None, None, base)
        return start_serving(supervisor, settings, base, None)
    settings, model, base = check_model(supervisor, settings)
    return start_serving(supervisor, settings, base, model)


def check_model(supervisor: Supervisor, settings: Settings) -> tuple[Settings, dict, Path]:
    """Step 1 as the service user: the Settings with the model dir it reads, what
    /metrics shows of the model, and the writable base folder."""
    from .model import validate

    if not (Path(settings.model_dir) / MODEL_CARD_FILE).is_file():
        raise Failure(f"no model in {settings.model_dir}: expected model.onnx and "
                      "model.json from dogbreed-train", 2)
    try:
        card = ModelCard.load(settings.model_dir)
        base = writable_base()
        remove_stale(base)
        settings = replace(settings, model_dir=drop_privileges(settings.model_dir,
                                                               card.model_file, base))
        supervisor.check_stop()
        model = validate(settings.model_dir, card, settings.ort_spinning)  # as the serving user
    except ModelCardError as exc:
        raise Failure(f"the model cannot be served: {exc}", 2) from None
    return settings, model, base


def start_serving(supervisor: Supervisor, settings: Settings, base: Path,
                  model: dict | None) -> tuple[int, MmsHealth | None]:
    """Steps 2-4: MMS, the model registered (none in multi-model mode), nginx."""
    supervisor.check_stop()
    try:
        mms_port, mgmt_port = config_files.mms_ports(settings)
    except config_files.ConfigError as exc:
        raise Failure(str(exc), 2) from None
    run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=base))
    (run_dir / "metrics").mkdir()
    # Read by the workers (settings.py), by prometheus_client (before metrics.py is
    # imported) and by every child's tempfile module.
    os.environ.update({RUN_DIR_ENV: str(run_dir), "TMPDIR": str(run_dir),
                       "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics")})
    started = time.monotonic()
    supervisor.start_mms(run_dir, config_files.write_mms_properties(run_dir, settings,
                                                                     mms_port, mgmt_port))
    if model is None:
        supervisor.wait_for_management(mgmt_port, settings)
    else:
        supervisor.register_model(mgmt_port, settings)
    supervisor.check_stop()

    from . import memory, metrics

    if model is None:
        from . import multi_model

        budget = multi_model.decode_budget(settings)
        decode_mib = memory.create(run_dir, budget)
        models = multi_model.Models(settings, multi_model.Mms(mgmt_port, settings),
                                    decode_mib * memory.MIB, run_dir)
        multi_model.serve_api(run_dir / "models.sock", models)
        supervisor.model_label = models.labels
        health = multi_model.ModelsHealth(mms_port, models, group=supervisor.mms.pid)
        described = (f"multi-model mode, models loaded from {settings.models_root} with "
                     "POST /models, none yet")
    else:
        decode_mib = memory.create(run_dir, memory.budget_bytes(settings.decode_memory_mb))
        (run_dir / READY_FILE).touch()
        health = None
        described = "model: " + ", ".join(f"{k} {v}" for k, v in model.items())
    metrics.serve_scrapes(run_dir / "metrics.sock")
    supervisor.start_nginx(config_files.write_nginx_conf(run_dir, settings, mms_port))
    supervisor.enter(State.READY, logging.INFO,
                     "ready on port %d after %.1f s: %d worker(s)%s, batches of up to %d, "
                     "%d MiB for decoding large images; %s", settings.port,
                     time.monotonic() - started, settings.workers,
                     " per model" if model is None else "", settings.max_batch, decode_mib,
                     described)
    return mms_port, health


def main() -> int:
    supervisor = Supervisor()
    # First of all: serve is PID 1, for which the kernel ignores signals without a handler.
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    supervisor.writer = logs.configure_serve_logging()
    try:
        settings = Settings.from_env()  # the one Settings of this process, passed down
        mms_port, health = start(supervisor, settings)
    except SettingsError as exc:
        return supervisor.fail(Failure(str(exc), 2))
    except Stop:
        return supervisor.stop_starting()
    except Failure as exc:
        return supervisor.fail(exc)
    return supervisor.serve(mms_port, settings.unhealthy_exit_s, health)
