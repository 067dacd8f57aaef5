"""Command line of the training program: ``python -m dogbreed_train [--key value ...]``.

The job comes from the process that started this one (DOGBREED_JOB, job_config.py:
read and validated once by the image's ``train``); run by hand, without it, from
the config files under $SAGEMAKER_BASE_DIR. Flags of the hyperparameters' names
override the job's.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dogbreed_contract.metrics import LineFormatter

from . import config, errors, job_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dogbreed_train",
        description="Fine-tune a torchvision classifier on class-folder channels under "
                    "$SAGEMAKER_BASE_DIR (default /opt/ml). Hyperparameters are read from "
                    "input/config/hyperparameters.json (or the job the image's `train` "
                    "hands down); flags override them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, description, default in config.field_help():
        shown = list(default) if isinstance(default, tuple) else default
        p.add_argument(f"--{name}", metavar="VALUE", default=argparse.SUPPRESS,
                       help=f"{description} (default: {shown})")
    return p


def setup_logging() -> None:
    """One line per record on stdout, in the form the metric regexes read
    (dogbreed_contract.metrics): names from the data cannot start or change a line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(LineFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    for noisy in ("onnx_ir", "onnxscript", "matplotlib", "torch.onnx", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parser().parse_args(argv)
    errors.clear_failure()
    try:
        job = job_config.current(overrides=vars(args))
        from .train import run  # torch: only once the job is valid

        run(job.hyperparameters, job.cluster.with_gpus_counted())
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the failure file
        if isinstance(exc, SystemExit):
            raise
        return errors.report(exc)
    return 0
