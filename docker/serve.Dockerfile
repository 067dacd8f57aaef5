# Serving image: `docker run dogbreed-serve serve` answers /ping and /invocations on 8080
# with multi-model-server and the SageMaker inference toolkit; with
# SAGEMAKER_MULTI_MODEL=true, SageMaker's multi-model API instead (/models, see
# container_serve/dogbreed_serve/multi_model.py). No torch, no smdebug:
# the model is the ONNX file the training image exports, run by ONNX Runtime.
#
#   docker build -f docker/serve.Dockerfile -t dogbreed-serve .
#   docker build -f docker/serve.Dockerfile --build-arg VARIANT=gpu -t dogbreed-serve:gpu .
#
# Build args: BASE_IMAGE, VARIANT (cpu|gpu: which lock file, onnxruntime or
# onnxruntime-gpu), PIP_INDEX_URL / PIP_FIND_LINKS / PIP_NO_INDEX (package source).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
# pip's compiled bytecode stays in the image (PYTHONDONTWRITEBYTECODE below stops it
# being written at run time): without it each of serve's Python processes compiles
# what it imports at every start (docs/benchmarks.md, cold start).
COPY container_serve/requirements.lock container_serve/requirements-gpu.lock /tmp/
RUN lock=/tmp/requirements.lock; [ "$VARIANT" = gpu ] && lock=/tmp/requirements-gpu.lock; \
    /opt/venv/bin/pip install --no-deps --require-hashes -r "$lock"
# The contract shared with the training image and the scripts (preprocessing, model
# card, image types), installed as a package with the locked setuptools.
COPY contract /src/contract
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-index /src/contract

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="dogbreed-serve" \
      org.opencontainers.image.description="Serves a dogbreed-train model on SageMaker (raw image bytes in, JSON out)" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true
# multi-model-server's frontend is Java; nginx is the front door (see server.py).
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless nginx-light \
 && rm -rf /var/lib/apt/lists/* /usr/share/man/* /usr/share/doc/*
RUN useradd --system --uid 1000 --home-dir /home/model-server --create-home model-server
# MALLOC_MMAP_THRESHOLD_: glibc gives every buffer over 128 KB (decoded images) its own
# mapping, returned to the system when freed. By default the threshold rises after the
# first large free, and decoded images then stay in the decode threads' heaps: 2
# workers grew by ~130 MiB in an 800-request soak; with it, by ~15 (docs/hardening.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/program \
    MALLOC_MMAP_THRESHOLD_=131072
COPY --from=build /opt/venv /opt/venv
COPY container_serve/dogbreed_serve /opt/program/dogbreed_serve
COPY container_serve/bin/serve /usr/local/bin/serve
RUN python -m compileall -q /opt/program
# `serve` starts as root (as SageMaker runs it) and drops to model-server before
# starting anything that listens; see dogbreed_serve/server.py.
WORKDIR /home/model-server
EXPOSE 8080
ENTRYPOINT []
CMD ["serve"]
