#!/usr/bin/env python3
"""data: get the dog dataset, check its layout, upload train/valid/test to S3.

    scripts/data.py                              # download dogImages.zip, upload
    scripts/data.py --source ~/dogImages         # a local folder (or .zip) instead
    scripts/data.py --source ~/dogImages --check-only

The folder must hold train/ (and normally valid/ and test/), each with one folder per
class (NNN.Name/) of .jpg/.jpeg/.png files, and valid/test may only use classes
that train has. Files go to s3://BUCKET/PREFIX/data/{train,valid,test}/...; a file
already there with the same size is skipped, so a second run only uploads what
is missing.
"""

from __future__ import annotations

import argparse
import mimetypes
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dogbreed_contract import LayoutError, media
from dogbreed_contract import layout as contract_layout
from dogbreed_scripts import settings
from dogbreed_scripts.context import Context
from dogbreed_scripts.settings import ConfigError

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"


def parse_args(argv=None) -> argparse.Namespace:
    p = settings.parser(__doc__)
    p.add_argument("--source", default=DOG_IMAGES_URL,
                   help="URL of a .zip, a local .zip, or a local folder (default: %(default)s)")
    p.add_argument("--check-only", action="store_true",
                   help="check the layout and stop (no AWS calls)")
    p.add_argument("--workers", type=int, default=8, help="parallel uploads")
    settings.add_arguments(p, ["region", "profile", "bucket", "prefix", "workdir"])
    return p.parse_args(argv)


def download(url: str, dest: Path) -> Path:
    """Download url to dest with a progress bar (once; a finished file is kept)."""
    if dest.exists():
        print(f"==> using {dest} (already downloaded)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"==> downloading {url}")
    # Only http(s) URLs get here (see main), so urlopen cannot read local files.
    with urllib.request.urlopen(url) as response:  # nosec B310
        size = int(response.headers.get("Content-Length") or 0) or None
        with open(part, "wb") as out, tqdm(total=size, unit="B", unit_scale=True,
                                           desc=dest.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    part.rename(dest)
    return dest


def extract(archive: Path, into: Path) -> Path:
    marker = into / ".extracted"
    if not marker.exists():
        print(f"==> extracting {archive.name}")
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.filename.startswith("__MACOSX")]
            for member in tqdm(members, unit="file", desc="extracting"):
                z.extract(member, into)
        marker.touch()
    return into


def find_root(folder: Path) -> Path:
    """The folder that holds train/: the folder itself or one level down (dogImages/)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give the dataset's folder, the one "
                          "with train/ valid/ test/ (or one level above it)")
    if (folder / "train").is_dir():
        return folder
    below = [d for d in folder.iterdir() if d.is_dir() and (d / "train").is_dir()]
    if len(below) == 1:
        return below[0]
    raise ConfigError(f"{folder} has no train/ folder (nor one level down); expected "
                      "train/NNN.Name/*.jpg, valid/..., test/...")


@dataclass
class Layout:
    root: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    classes: dict[str, set[str]] = field(default_factory=dict)


def check_layout(root: Path) -> Layout:
    """The contract's channel layout (dogbreed_contract.layout), checked before any upload.

    The rules are training's: class folders (hidden ones and __MACOSX are not), images
    by suffix, at least two train classes with distinct labels, valid/test classes
    among train's; besides, no loose files and no class folder without images.
    """
    result = Layout(root)
    for split in contract_layout.CHANNELS:
        d = root / split
        if not d.is_dir():
            if split == "train":
                raise ConfigError(f"{d} is missing: the train channel is required")
            print(f"    warning: no {split}/ folder; the job will do without it")
            continue
        loose = contract_layout.loose_files(d)
        if loose:
            raise ConfigError(f"{d} has files outside class folders (e.g. {loose[0]}); "
                              "put each image in a folder named after its class")
        classes = contract_layout.class_folders(d)
        images = contract_layout.images_by_class(d, classes)
        files = sorted(f for class_images in images.values() for f in class_images)
        if not classes or not files:
            raise ConfigError(f"{d} has no class folders with {media.SUFFIXES_SHOWN} images")
        empty = contract_layout.empty_classes(images)
        if empty:
            raise ConfigError(f"{d}: class folder(s) without images: {', '.join(empty[:5])}")
        result.files[split], result.classes[split] = files, set(classes)
    try:
        contract_layout.check_train_classes(sorted(result.classes["train"]), where=str(root / "train"))
    except LayoutError as exc:
        raise ConfigError(str(exc)) from None
    for split in ("valid", "test"):
        extra = contract_layout.unknown_classes(sorted(result.classes.get(split, ())),
                                       sorted(result.classes["train"]))
        if extra:
            raise ConfigError(f"{root / split} has classes that train lacks: "
                              f"{', '.join(extra[:5])}")
    for split, files in result.files.items():
        print(f"    {split:<5} {len(files):>6} images in {len(result.classes[split])} classes")
    return result


def existing_objects(s3, bucket: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        sizes.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return sizes


def upload(s3, layout: Layout, bucket: str, prefix: str, workers: int) -> tuple[int, int]:
    """Upload every image not already there (same key and size); returns (sent, skipped)."""
    there = existing_objects(s3, bucket, prefix)
    todo = []
    for files in layout.files.values():
        for path in files:
            key = f"{prefix}/{path.relative_to(layout.root).as_posix()}"
            if there.get(key) != path.stat().st_size:
                todo.append((path, key))
    skipped = sum(len(f) for f in layout.files.values()) - len(todo)
    if skipped:
        print(f"    {skipped} files already in s3://{bucket}/{prefix}/, skipped")
    with tqdm(total=sum(p.stat().st_size for p, _ in todo), unit="B", unit_scale=True,
              desc="uploading") as bar:
        def send(item):
            path, key = item
            s3.upload_file(str(path), bucket, key, Callback=bar.update, ExtraArgs={
                "ContentType": mimetypes.guess_type(path.name)[0] or "application/octet-stream"})
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(send, todo))
    return len(todo), skipped


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = Context.build(args)
    cfg = ctx.settings
    workdir = ctx.workdir
    source = Path(args.source).expanduser()
    if args.source.startswith(("http://", "https://")):
        archive = download(args.source, workdir / Path(args.source).name)
        folder = extract(archive, workdir / archive.stem)
    elif source.is_file() and source.suffix == ".zip":
        folder = extract(source, workdir / source.stem)
    elif source.is_dir():
        folder = source
    else:
        raise ConfigError(f"--source {args.source}: no such folder or .zip file")
    root = find_root(folder)
    print(f"==> checking the layout of {root}")
    layout = check_layout(root)
    if args.check_only:
        return 0

    session = ctx.session
    ctx.bucket()
    key_prefix = "/".join(p for p in (cfg.prefix.strip("/"), "data") if p)
    print(f"==> uploading to s3://{cfg.bucket}/{key_prefix}/")
    sent, skipped = upload(session.client("s3"), layout, cfg.bucket, key_prefix, args.workers)
    channels = {split: cfg.s3("data", split) for split in layout.files}
    ctx.save(channels=channels)
    print(f"\nuploaded {sent}, skipped {skipped}. Channels:")
    for split, uri in channels.items():
        print(f"  {split:<5} {uri}/")
    return 0


if __name__ == "__main__":
    settings.run(main)
