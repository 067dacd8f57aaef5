#!/usr/bin/env python3
"""push: build (or reuse) the two images and push them to ECR (or any registry).

    scripts/push.py                          # both images to ACCOUNT.dkr.ecr.REGION...
    scripts/push.py --only serve --tag v3    # just the serving image, as :v3
    scripts/push.py --registry 127.0.0.1:5000 --no-ecr   # another registry

Creates the ECR repositories when missing, logs Docker in with the ECR
authorization token, tags, pushes (Docker's own progress output), and prints the
image URIs the other steps use.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess

from dogbreed_scripts import settings
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError

WHICH = ("train", "serve")


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("--only", choices=WHICH, action="append",
                   help="push only this image (repeatable; default: both)")
    build = p.add_mutually_exclusive_group()
    build.add_argument("--build", action="store_true",
                       help="rebuild the local images with `make` before pushing")
    build.add_argument("--no-build", action="store_true",
                       help="fail instead of building when a local image is missing")
    p.add_argument("--no-ecr", action="store_true",
                   help="not an ECR registry: no repository creation, no ECR login "
                        "(log in with `docker login` yourself)")
    settings.add_arguments(p, ["region", "profile", "registry", "train_repository",
                               "serve_repository", "tag", "local_train_image",
                               "local_serve_image", "workdir"])
    return p.parse_args(argv)


def docker_cli() -> str:
    path = os.environ.get("DOCKER") or shutil.which("docker")
    if not path:
        raise ConfigError("the docker CLI is not on PATH; install Docker first")
    return path


def docker(*args: str, stdin: str | None = None, quiet: bool = False) -> None:
    """Run the docker CLI; its own progress output goes straight to the terminal."""
    proc = subprocess.run([docker_cli(), *args], input=stdin, text=True,
                          capture_output=quiet)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] if quiet else []
        raise ConfigError(f"`docker {args[0]}` failed" + (f": {detail[0]}" if detail else ""))


def image_exists(name: str) -> bool:
    return subprocess.run([docker_cli(), "image", "inspect", name],
                          capture_output=True).returncode == 0


def build(which: str, local_image: str) -> None:
    target = {"train": "train-image", "serve": "serve-image"}[which]
    var = {"train": "TRAIN_IMAGE", "serve": "SERVE_IMAGE"}[which]
    print(f"==> building {local_image} (make {target})", flush=True)
    if subprocess.run(["make", "-C", str(settings.ROOT), target,
                       f"{var}={local_image}"]).returncode != 0:
        raise ConfigError(f"building {local_image} failed (see the output above)")


def ensure_repository(ecr, name: str) -> str:
    """The repository's URI; creates the repository when it does not exist."""
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        print(f"    repository {name} exists")
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(
            repositoryName=name, imageTagMutability="MUTABLE",
            imageScanningConfiguration={"scanOnPush": True})["repository"]
        print(f"    created repository {name}")
    return repo["repositoryUri"]


def ecr_login(ecr, registry: str) -> None:
    """docker login with the ECR authorization token (user AWS, 12 hours)."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    print(f"==> docker login {registry} (ECR authorization token)", flush=True)
    docker("login", "--username", user, "--password-stdin", registry, stdin=password,
           quiet=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Context.build(args)
    cfg = ctx.settings
    which = args.only or list(WHICH)
    local = {w: cfg[f"local_{w}_image"] for w in which}

    # Settings and credentials first: a missing one should not wait for a build.
    if args.no_ecr:
        settings.require(cfg, "registry")
    else:
        _ = ctx.session  # checks the region and credentials now

    for w, image in local.items():
        if args.build or not image_exists(image):
            if args.no_build:
                raise ConfigError(f"local image {image} does not exist (run `make images`)")
            build(w, image)
        else:
            print(f"==> reusing local image {image}")

    if args.no_ecr:
        registry = cfg.registry
    else:
        ecr = ctx.session.client("ecr")
        registry = cfg.registry or ctx.default_registry()
        print(f"==> ECR repositories in {ctx.session.region_name}")
        for w in which:
            ensure_repository(ecr, cfg[f"{w}_repository"])
        ecr_login(ecr, registry)

    uris = {}
    for w in which:
        uri = f"{registry}/{cfg[f'{w}_repository']}:{cfg.tag}"
        print(f"==> pushing {local[w]} as {uri}", flush=True)
        docker("tag", local[w], uri)
        docker("push", uri)
        uris[w] = uri
    # Later steps build their URIs on this registry and take these URIs as they are.
    ctx.save(registry=registry, **{f"{w}_image_uri": u for w, u in uris.items()})
    print("\nimage URIs:")
    for w, uri in uris.items():
        print(f"  {w:<6} {uri}")
    return 0


if __name__ == "__main__":
    settings.run(main)
