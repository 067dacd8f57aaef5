"""What one step made and a later step reads: ``WORKDIR/state.json``, typed.

push.py records the registry and the image URIs it pushed, data.py the channels,
tune.py the best hyperparameters, train.py the model, deploy.py the endpoint;
cleanup.py clears what it deleted. The file is JSON, one key per field below; a
missing file is an empty state, a damaged one is refused with a line that says
which file and what is wrong (delete it, or fix the key), never guessed around.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from dogbreed_scripts.settings import ConfigError


class StateError(ConfigError):
    """The state file cannot be read as a State."""


@dataclass(frozen=True)
class LocalEndpoint:
    """The background local endpoint deploy.py --local --detach started."""

    name: str
    port: int
    pid: int
    model: str                 # model.tar.gz; with multi_model, the folder of models
    multi_model: bool = False  # deploy.py --local --multi-model


@dataclass(frozen=True)
class State:
    registry: str | None = None            # push.py: the registry host it pushed to
    train_image_uri: str | None = None     # push.py
    serve_image_uri: str | None = None     # push.py
    channels: dict[str, str] | None = None  # data.py: channel name -> S3 prefix
    tuning_job: str | None = None          # tune.py
    best_hyperparameters: str | None = None  # tune.py: path of best.json
    training_job: str | None = None        # train.py
    model_data: str | None = None          # train.py: S3 URI of model.tar.gz
    local_model: str | None = None         # train.py --local: path of model.tar.gz
    endpoint: str | None = None            # deploy.py
    endpoint_kind: str | None = None       # deploy.py: real-time, serverless, async or multi-model
    multi_model_prefix: str | None = None  # deploy.py --multi-model: S3 prefix of its models
    async_output: str | None = None        # deploy.py --async
    batch_job: str | None = None           # deploy.py --batch-input
    batch_model: str | None = None         # deploy.py --batch-input
    batch_output: str | None = None        # deploy.py --batch-input
    local_endpoint: LocalEndpoint | None = None  # deploy.py --local

    @classmethod
    def load(cls, path: Path) -> State:
        """The state in `path`; an empty State when the file does not exist."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise StateError(f"state file {path} cannot be read: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(f"state file {path} is not valid JSON ({exc}): fix or delete "
                             "it (the steps that wrote it can be run again)") from None
        if not isinstance(doc, dict):
            raise StateError(f"state file {path} holds no JSON object: fix or delete it")
        return cls.from_dict(doc, where=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "state") -> State:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise StateError(f"state file {where}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))}): fix or delete it")
        values = dict(doc)
        for name, value in values.items():
            if value is None:
                continue
            if name == "channels":
                ok = isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            elif name == "local_endpoint":
                try:
                    value = values[name] = LocalEndpoint(**value)
                    ok = isinstance(value.port, int) and isinstance(value.pid, int) and \
                        isinstance(value.multi_model, bool)
                except TypeError:
                    ok = False
            else:
                ok = isinstance(value, str)
            if not ok:
                raise StateError(f"state file {where}: {name} = {json.dumps(value, default=str)}"
                                 " has the wrong type: fix or delete it")
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the whole state, atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    def changed(self, **changes: Any) -> State:
        """A copy with `changes` (field names are checked: a typo is a TypeError)."""
        return replace(self, **changes)


def update(path: Path, **changes: Any) -> State:
    """Re-read the file, apply `changes`, write it back: what another process (a
    detached local endpoint) wrote in between is kept."""
    state = State.load(path).changed(**changes)
    state.save(path)
    return state
