"""One Context per command: its flags, the resolved settings, the state, the AWS session.

Built once at the top of a command's main(). The boto3 session is made on first use,
so a step that fails on a flag or a missing setting does so before any AWS call, and
a local step (``--local``) never needs credentials.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dogbreed_scripts import settings
from dogbreed_scripts.state import State, update


@dataclass
class Context:
    args: argparse.Namespace
    settings: settings.Settings
    state: State = field(default_factory=State)

    @classmethod
    def build(cls, args: argparse.Namespace) -> Context:
        resolved = settings.resolve(args)
        return cls(args, resolved, State.load(resolved.state_file))

    @property
    def state_file(self) -> Path:
        return self.settings.state_file

    @property
    def workdir(self) -> Path:
        return Path(self.settings.workdir)

    def save(self, **changes: Any) -> None:
        """Record what this step made (merged into what the file holds now)."""
        self.state = update(self.state_file, **changes)

    def reload(self) -> State:
        """The state as another process left it (a detached local endpoint)."""
        self.state = State.load(self.state_file)
        return self.state

    @cached_property
    def session(self):
        """The boto3 session, checked for region and credentials on first use."""
        return settings.boto_session(self.settings)

    def bucket(self) -> str:
        """The configured bucket, else SageMaker's default one (created if missing)."""
        if not self.settings.bucket:
            self.settings["bucket"] = settings.default_bucket(self.session)
        return self.settings.bucket

    def registry(self) -> str:
        """--registry (or its environment/file setting), else the registry push.py
        pushed to, else this account's ECR registry."""
        return self.settings.registry or self.state.registry or self.default_registry()

    def default_registry(self) -> str:
        """This account's ECR registry in the session's region."""
        return (f"{settings.account_id(self.session)}.dkr.ecr.{self.session.region_name}"
                ".amazonaws.com")

    def image_uri(self, which: str, explicit: str | None = None) -> str:
        """The registry URI of the training ('train') or serving ('serve') image:
        --image-uri, else what push.py pushed (unless registry, repository or tag are
        set), else REGISTRY/REPOSITORY:TAG."""
        if explicit:
            return settings.check_image_uri(explicit)
        pushed = getattr(self.state, f"{which}_image_uri")
        if pushed and not self.settings.given & {"registry", f"{which}_repository", "tag"}:
            return pushed
        repo = self.settings[f"{which}_repository"]
        return f"{self.registry()}/{repo}:{self.settings.tag}"

    def channels(self, data: str | None) -> dict[str, str]:
        """Training channels: --data PREFIX, else what data.py uploaded, else PREFIX/data."""
        if not data and self.state.channels:
            return self.state.channels
        data = (data or self.settings.s3("data")).rstrip("/")
        return {c: f"{data}/{c}" for c in ("train", "valid", "test")}
