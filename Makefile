# Everything runs from here. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
TRAIN_IMAGE ?= dogbreed-train:latest
SERVE_IMAGE ?= dogbreed-serve:latest
BUILD := docker/harness/build.sh

.PHONY: help docker browser images train-image serve-image serve-image-gpu venv venv-sdk2 lint test unit-test demo bench lock clean scripts-test

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

docker: ## make sure a Docker engine is running (installs Debian's when root)
	@docker/harness/ensure-docker.sh

browser: ## make sure headless Chromium is installed (the report's browser test)
	@docker/harness/ensure-chromium.sh

images: train-image serve-image ## build dogbreed-train and dogbreed-serve

train-image: docker
	$(BUILD) docker/train.Dockerfile $(TRAIN_IMAGE) container_train/requirements.lock

serve-image: docker
	$(BUILD) docker/serve.Dockerfile $(SERVE_IMAGE) container_serve/requirements.lock

serve-image-gpu: docker ## the serving image with onnxruntime-gpu (dogbreed-serve:gpu)
	$(BUILD) docker/serve.Dockerfile dogbreed-serve:gpu container_serve/requirements-gpu.lock \
		--build-arg VARIANT=gpu

# The project's own packages go in editable (no dependencies: the lock has them all).
HOST_PACKAGES := contract container_serve scripts
$(VENV)/.done: tests/requirements.lock $(foreach p,$(HOST_PACKAGES),$(p)/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-deps --require-hashes -r tests/requirements.lock
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation --no-index \
		$(foreach p,$(HOST_PACKAGES),-e $(p))
	touch $@

venv: $(VENV)/.done ## host tools: pytest, SageMaker SDK v3, moto, boto3

# SDK v2 (the same `sagemaker` package) for tests/sdk2, the v2 compatibility test.
VENV_SDK2 := .venv-sdk2
$(VENV_SDK2)/.done: tests/requirements-sdk2.lock
	$(PYTHON) -m venv $(VENV_SDK2)
	$(VENV_SDK2)/bin/pip install -q --no-deps --require-hashes -r tests/requirements-sdk2.lock
	touch $@

venv-sdk2: $(VENV_SDK2)/.done ## SageMaker SDK v2 for its compatibility test

# A pure-Python pytest mounted into the images: their unit tests run where torch lives.
INIMAGE_PYTEST := .cache/pytest-inimage
$(INIMAGE_PYTEST)/.done: tests/requirements-inimage.lock
	$(PYTHON) -m pip install -q --no-deps --require-hashes --target $(INIMAGE_PYTEST) -r $<
	touch $@

IN_IMAGE = docker run --rm --network none -v $(CURDIR)/tests:/src/tests:ro \
	-v $(CURDIR)/$(INIMAGE_PYTEST):/opt/pytest:ro -e PYTHONPATH=/opt/pytest:/opt/program \
	-e PYTHONDONTWRITEBYTECODE=1 -w /tmp

unit-test: $(INIMAGE_PYTEST)/.done ## unit tests inside the images (needs `make images`)
	$(IN_IMAGE) $(TRAIN_IMAGE) python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning /src/tests/in_image/train

lint: venv ## static checks: ruff (ruff.toml) and bandit (.bandit.yml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/bandit -q -c .bandit.yml -r container_train container_serve scripts

test: venv venv-sdk2 ## build everything, lint, and run the whole test suite
	$(MAKE) lint
	$(MAKE) images
	$(MAKE) unit-test
	$(MAKE) browser
	$(VENV)/bin/python -m pytest tests --ignore=tests/in_image

scripts-test: images venv ## the AWS scripts' tests: moto, a local registry, local mode
	$(VENV)/bin/python -m pytest tests/test_scripts_aws.py tests/test_scripts_push.py \
		tests/test_scripts_local.py tests/test_scripts_state.py

demo: images venv ## train, serve and classify locally on Fashion-MNIST (no AWS account)
	$(VENV)/bin/python scripts/demo.py $(DEMO_ARGS)

# Benchmarks: BENCH_ARGS="--quick" for a smoke run; `benchmarks/run.py --help`.
bench: images venv ## benchmark serving and training against their limits (bench-output/)
	$(VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

lock: ## re-lock every requirements file (needs uv)
	docker/harness/lock.sh

clean: ## remove the project's images, build cache and venv
	-docker rmi $(TRAIN_IMAGE) $(SERVE_IMAGE) 2>/dev/null
	rm -rf $(VENV) $(VENV_SDK2) .cache
