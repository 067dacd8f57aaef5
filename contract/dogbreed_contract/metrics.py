"""The training program's log lines, the METRIC lines among them, and how they are read.

The training image prints its log through ``LineFormatter``; ``metric_definitions.json``
(next to this file) holds the regexes that the scripts hand to training and tuning jobs
as metric definitions. SageMaker applies each regex to each line of the job's log, and
the log also carries names that whoever supplies the data chose (class folders, image
files, hidden folders). So that no such name can make or change a metric:

- every record is one line that starts with the program's prefix (time, level,
  logger); control characters a record's arguments carry are escaped (a newline
  becomes ``\\n``), so a name never starts a line. The message's own line breaks (a
  table, a traceback) go on continuation lines indented by four spaces;
- every regex is anchored at the start of the line, on the prefix of the program's
  own METRIC or RULE line, and reads a value only at its place in that line.

A job's final values are also in output/data/metrics.json (``final_value``), which
is what the local tuner takes as a trial's objective. Lines, regexes and the record
live here so that they change together; the tests check the regexes against real
log output, hostile names included.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import unicodedata
from importlib.resources import files

# The prefix of every line the training program logs: "2026-12-04 10:00:00,123 INFO name: ".
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Where a line of a message's own text that follows its first line starts (never at
# column 0, so never where a regex's anchor is).
CONTINUATION = "    "


def definitions() -> list[dict[str, str]]:
    """[{"Name": "valid:accuracy", "Regex": "^... valid_acc=..."}, ...] as SageMaker takes them."""
    return json.loads(files(__package__).joinpath("metric_definitions.json").read_text())


def values(regex: str, log: str) -> list[str]:
    """What `regex` reads from a whole log, as SageMaker reads it: line by line."""
    pattern = re.compile(regex)
    return [m.group(1) for line in log.splitlines() if (m := pattern.search(line))]


def _num(value: float) -> str:
    # Non-finite values are printed so that no regex matches them (SageMaker would
    # otherwise fail to parse them); the line still shows them to a reader.
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def epoch_line(epoch: int, epochs: int, train: dict, valid: dict, lr: float,
               seconds: float) -> str:
    return (f"METRIC epoch={epoch}/{epochs} train_loss={_num(train['loss'])} "
            f"train_acc={_num(train['acc'])} valid_loss={_num(valid['loss'])} "
            f"valid_acc={_num(valid['acc'])} lr={lr:.3e} time={seconds:.1f}s")


def test_line(test: dict) -> str:
    return f"METRIC test_loss={_num(test['loss'])} test_acc={_num(test['acc'])}"


# --- the record: output/data/metrics.json ----------------------------------------

# Where each metric's last value is in metrics.json: the last epoch's row, or the test.
_RECORD_KEYS = {"train:loss": ("history", "train_loss"), "train:accuracy": ("history", "train_acc"),
                "valid:loss": ("history", "valid_loss"), "valid:accuracy": ("history", "valid_acc"),
                "epoch": ("history", "epoch"), "test:loss": ("test", "loss"),
                "test:accuracy": ("test", "acc")}


RECORDED = tuple(_RECORD_KEYS)  # the metrics metrics.json holds


def final_value(name: str, record: dict) -> float | None:
    """The last value of metric `name` that a job wrote to metrics.json (what SageMaker
    takes as a training job's final metric value); None when the record has none, or
    for a metric that only the log carries (rule:...)."""
    where = _RECORD_KEYS.get(name)
    if where is None or not isinstance(record, dict):
        return None
    part, key = where
    found = record.get(part)
    if part == "history":
        found = found[-1] if isinstance(found, list) and found else None
    value = found.get(key) if isinstance(found, dict) else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


# --- the log line format ---------------------------------------------------------

def escape(text: str, keep_newlines: bool = False) -> str:
    """`text` with every control character but tab (and Unicode line or paragraph
    separator) written as an escape (``\\n``, ``\\x1b``, ``\\u2028``), so that it stays on
    one line; so is a lone surrogate (a file name's undecodable byte), so that the line is
    UTF-8. With keep_newlines, "\\n" is left for the caller to break the line at."""
    out = []
    for ch in text:
        if ch == "\t" or (ch == "\n" and keep_newlines):
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


class _Escaped:
    """A log record argument that formats as itself, escaped (for %s and %r)."""

    def __init__(self, value):
        self.value = value

    def __str__(self) -> str:
        return escape(str(self.value))

    def __repr__(self) -> str:
        return escape(repr(self.value))


def _escaped_args(args):
    def one(value):
        return value if isinstance(value, numbers.Number) else _Escaped(value)

    if isinstance(args, dict):
        return {k: one(v) for k, v in args.items()}
    return tuple(one(v) for v in args)


class LineFormatter(logging.Formatter):
    """LOG_FORMAT, with every record on a line of its own that nothing it carries can
    break: arguments are escaped whole; the message's own newlines and a traceback
    become indented continuation lines; other control characters are escaped."""

    def __init__(self):
        super().__init__(LOG_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\n", "\n" + CONTINUATION)

    def format(self, record: logging.LogRecord) -> str:
        record.message = self.escaped_message(record)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            lines = escape(block, keep_newlines=True).splitlines()
            text += "".join(f"\n{CONTINUATION}{line}" for line in lines)
        return text

    @staticmethod
    def escaped_message(record: logging.LogRecord) -> str:
        args = record.args
        if not args:
            return escape(str(record.msg), keep_newlines=True)
        try:
            return escape(str(record.msg) % _escaped_args(args), keep_newlines=True)
        except (TypeError, ValueError):  # e.g. %d given a tensor: escape the whole message
            return escape(record.getMessage())
