# Training image: `docker run dogbreed-train train` under the SageMaker training contract.
#
#   docker build -f docker/train.Dockerfile -t dogbreed-train .
#
# Build args:
#   BASE_IMAGE         Python 3.11 base (default python:3.11-slim-bookworm)
#   PRETRAINED_MODELS  space-separated backbones whose torchvision weights are baked in
#                      for network-isolated jobs, e.g. "resnet50 efficientnet_b0"
#   PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX
#                      another package source (used by the offline harness)
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with every locked package
FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# sagemaker-training ships as source and compiles a small C extension.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && (python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
     || apt-get install -y --no-install-recommends python3-dev) \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY container_train/requirements.lock /tmp/requirements.lock
# --no-deps: the lock is complete (and overrides smdebug's protobuf pin, see overrides.txt).
# pip's compiled bytecode stays in the image (PYTHONDONTWRITEBYTECODE below stops it
# being written at run time): without it `import torch` alone compiles for 4-5 s in
# every process at every start (docs/benchmarks.md).
RUN /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.lock
# The contract shared with the serving image and the scripts (preprocessing, model
# card, data layout, metric lines), installed as a package with the locked setuptools.
COPY contract /src/contract
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-index /src/contract

# ---- runtime
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="dogbreed-train" \
      org.opencontainers.image.description="Fine-tunes a torchvision classifier under the SageMaker training contract"
ENV PATH=/opt/program/bin:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \
    TORCH_HOME=/opt/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    SAGEMAKER_TRAINING_MODULE=dogbreed_train.launch:main \
    PYTHONPATH=/opt/program
COPY --from=build /opt/venv /opt/venv
# torch.compile (compile=true) builds the kernels it generates: C++ ones on CPU (g++),
# and on GPU Triton's launcher, a C extension (gcc and Python's headers). A layer of
# its own after the venv, so code-only rebuilds share the venv layer.
# (docs/benchmarks.md has what it costs in image size and what it buys.)
# Left out: apt's caches (144 MB), and what compile never runs (gcc's link-time
# optimizer, lto1 and lto-dump; the static libpython).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && (python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
     || apt-get install -y --no-install-recommends python3-dev) \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /usr/lib/gcc/*/*/lto1 /usr/bin/*lto-dump* /usr/lib/python3*/config-*/libpython*.a

ARG PRETRAINED_MODELS=""
COPY container_train/dogbreed_train /opt/program/dogbreed_train
# The image's `train` (entrypoint.py), ahead of the toolkit's on PATH.
COPY container_train/bin/train /opt/program/bin/train
RUN for m in $PRETRAINED_MODELS; do \
      python -c "import sys; from dogbreed_train.models import weights_enum; weights_enum(sys.argv[1]).get_state_dict(progress=False)" "$m" || exit 1; \
    done; \
    chmod 755 /opt/program/bin/train && python -m compileall -q /opt/program

WORKDIR /opt/program
# `train` is /opt/program/bin/train: PID 1 with a SIGTERM handler from its first
# instant, which then runs the SageMaker training toolkit's `train` in-process.
ENTRYPOINT []
CMD ["train"]
