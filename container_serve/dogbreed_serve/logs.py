"""The container's log: every line serve, MMS, its workers and nginx write, one format.

``serve`` reads the output of MMS (its log4j lines, with the workers' lines inside
them) and of nginx (access lines, which nginx writes as JSON, and error lines) and
writes each as one line of the container's stdout: as text, or with
``DOGBREED_LOG_FORMAT=json`` as one JSON object per line (time, level, source,
logger, message, request_id where there is one). The access lines also feed the
request counters of /metrics (metrics.py).

Workers log as JSON objects (``WorkerFormatter``), so that their level and request id
survive the trip through MMS's log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import threading
from datetime import datetime, timezone

# The request a worker thread is working on: set by handler.py for each request, read
# by every log record that thread writes (decoding.py's too).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)


# Control characters (newlines, carriage returns, terminal escapes) and Unicode line
# separators, as the text log writes them: escaped, so that a name from outside (a path
# in the environment, a model card's field, a request line) cannot start a log line of
# its own (tabs stay). JSON lines escape them anyway.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c != 0x09} | {
    0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    return text.translate(_ESCAPES)


def json_format() -> bool:
    return os.environ.get("DOGBREED_LOG_FORMAT", "text").strip().lower() == "json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Writer:
    """One line per record on stdout; threads (one per child pipe) take turns."""

    def __init__(self, as_json: bool, stream=None):
        self.as_json = as_json
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def write(self, record: dict, text: str) -> None:
        line = json.dumps(record, ensure_ascii=False) if self.as_json else one_line(text)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class ServeFormatter(logging.Formatter):
    """serve's own records, as text or JSON."""

    def __init__(self, as_json: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        if not self.as_json:
            return super().format(record)
        out = {"time": _now(), "level": record.levelname, "source": "serve",
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_serve_logging() -> Writer:
    as_json = json_format()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ServeFormatter(as_json))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    return Writer(as_json)


class WorkerFormatter(logging.Formatter):
    """A worker's records as one JSON object per line (serve reads them back)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_worker_logging(logger: logging.Logger) -> None:
    """Our records in a worker: JSON on stdout, which MMS forwards line by line."""
    if any(isinstance(h.formatter, WorkerFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(WorkerFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# conf/log4j2.xml: "TIME [LEVEL] LOGGER - MESSAGE", newlines in the message escaped.
_LOG4J = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT[\d:,.]+) \[(?P<level>\w+)\s*\] "
                    r"(?P<logger>\S+) - (?P<message>.*)$")
_LEVELS = {"WARN": "WARNING", "FATAL": "CRITICAL", "TRACE": "DEBUG"}


def mms_record(line: str) -> tuple[dict, str]:
    """One line of MMS's output as (record, text). A worker's JSON line becomes a
    record of its own (source "worker"); the JVM's own lines are kept as they are."""
    match = _LOG4J.match(line)
    if match is None:
        return {"time": _now(), "level": "INFO", "source": "mms", "message": line}, line
    level = _LEVELS.get(match["level"], match["level"])
    message = match["message"]
    if message.startswith("{") and message.endswith("}"):
        try:
            worker = json.loads(message)
        except ValueError:
            worker = None
        if isinstance(worker, dict) and "message" in worker and "level" in worker:
            record = {"time": _now(), "level": worker["level"], "source": "worker",
                      "logger": worker.get("logger", ""), "message": worker["message"]}
            text = worker["message"]
            if worker.get("request_id"):
                record["request_id"] = worker["request_id"]
                text = f"[request {worker['request_id']}] {text}"
            if worker.get("exception"):
                record["exception"] = worker["exception"]
                text += " " + worker["exception"].replace("\n", "\\n")
            return record, (f"{match['time']} [{worker['level']}] {record['logger']}: "
                            f"{text}")
    record = {"time": _now(), "level": level, "source": "mms", "logger": match["logger"],
              "message": message.replace("\\r\\n", "\n").replace("\\n", "\n")}
    return record, line


def access_record(line: str) -> dict | None:
    """nginx's JSON access line (conf/nginx.conf.template, log_format access)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "status" in record else None


def access_text(r: dict) -> str:
    """The access line as text; the TargetModel SageMaker names (multi-model
    endpoints) when it sent one."""
    target = f" target_model={r['target_model']}" if r.get("target_model") else ""
    return (f"{r.get('remote_addr', '-')} \"{r.get('request', '')}\" {r.get('status')} "
            f"{r.get('bytes', 0)} {r.get('duration_s', 0)} s request_id={r.get('request_id')}"
            f"{target}")


# nginx's error log: "2026/12/01 21:48:21 [error] 59#59: *3 message".
_NGINX = re.compile(r"^\d{4}/\d\d/\d\d [\d:]+ \[(?P<level>\w+)\] [\d#]+: (?:\*\d+ )?"
                    r"(?P<message>.*)$")
_NGINX_LEVELS = {"warn": "WARNING", "error": "ERROR", "crit": "CRITICAL", "alert": "CRITICAL",
                 "emerg": "CRITICAL", "notice": "INFO", "info": "INFO", "debug": "DEBUG"}


def nginx_error_record(line: str) -> dict:
    match = _NGINX.match(line)
    level = _NGINX_LEVELS.get(match["level"], "ERROR") if match else "ERROR"
    return {"time": _now(), "level": level, "source": "nginx",
            "message": match["message"] if match else line}


def pump(stream, on_line) -> threading.Thread:
    """Read a child's pipe line by line in a thread, until it closes."""
    def run():
        for raw in iter(stream.readline, b""):
            try:
                on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
            except Exception:  # noqa: BLE001 - a bad line must not stop the log
                logging.getLogger("dogbreed_serve.server").exception("log line dropped")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
