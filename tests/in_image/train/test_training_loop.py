"""The training loop's parts: the cluster view, loader workers, one epoch, and the two
evaluation paths (validation loader, test predictions) agreeing on the same images."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dogbreed_contract.layout import label_name
from dogbreed_contract.preprocess import Spec
from dogbreed_train import config, data, distributed, profiling, train
from dogbreed_train.cluster import Cluster
from synthetic import make_dataset

CLUSTER_VARS = ("SM_HOSTS", "SM_CURRENT_HOST", "SM_NUM_GPUS", "SM_NUM_CPUS",
                "SM_NETWORK_INTERFACE_NAME")


@pytest.fixture
def no_sm_vars(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)


def test_cluster_comes_from_resourceconfig(sm_base, no_sm_vars):
    config_dir = sm_base / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"],
         "network_interface_name": "eth1"}))
    cluster = Cluster.read()
    assert cluster.hosts == ("algo-1", "algo-2", "algo-3")
    assert (cluster.current_host, cluster.host_rank, cluster.master_host) == ("algo-2", 1,
                                                                               "algo-1")
    assert cluster.multi_host and cluster.network_interface == "eth1"
    assert cluster.gpus == torch.cuda.device_count() and cluster.cpus >= 1


def test_sm_variables_win_over_resourceconfig(sm_base, no_sm_vars, monkeypatch):
    config_dir = sm_base / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    monkeypatch.setenv("SM_HOSTS", '["algo-7"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-7")
    monkeypatch.setenv("SM_NUM_GPUS", "4")
    monkeypatch.setenv("SM_NUM_CPUS", "48")
    assert Cluster.read() == Cluster(("algo-7",), "algo-7", gpus=4, cpus=48)


def test_outside_sagemaker_the_cluster_is_this_machine(sm_base, no_sm_vars):
    cluster = Cluster.read()
    assert (cluster.hosts, cluster.current_host, cluster.multi_host) == (("algo-1",),
                                                                         "algo-1", False)
    assert cluster.network_interface is None


@pytest.mark.parametrize("cpus,per_host,asked,expect", [
    (4, 1, -1, 3),    # one CPU left for the training loop
    (16, 2, -1, 7),   # the host's CPUs shared out among its processes
    (96, 1, -1, 8),   # at most 8
    (1, 1, -1, 0),
    (16, 1, 2, 2),    # the hyperparameter wins
])
def test_loader_workers(cpus, per_host, asked, expect):
    hps = config.parse({"workers": str(asked)})
    world = distributed.World(local_size=per_host)
    assert train.loader_workers(hps, Cluster(cpus=cpus), world) == expect


def small_trainer(n_classes: int, **overrides) -> train.Trainer:
    hps = config.parse({"model": "resnet18", "pretrained": "false", "image-size": "32",
                        "batch-size": "4", "test-batch-size": "5", "workers": "0",
                        "record": "false", **overrides})
    train.seed_everything(0)
    world = distributed.World()
    return train.build_trainer(hps, world, train.placement_for(hps, world), n_classes)


def test_one_epoch_stops_at_max_steps_and_times_its_batches(sm_base):
    make_dataset(sm_base / "input" / "data", {"train": 6, "valid": 1}, size=40)
    folders, train_split, valid_split, _ = data.discover(0.1, 0, "skip")
    trainer = small_trainer(len(folders), **{"max-steps-per-epoch": "3"})
    loaders = train.make_loaders(trainer.hps, trainer.world, trainer.feed, Spec.for_size(32),
                                 train_split, valid_split)
    assert len(loaders.train) > 3
    sums = train.RunningSums(trainer.placement.device)
    perf, step = train.train_one_epoch(trainer, loaders.train, 1, 1, sums, None)
    assert step == 3 and sums.seen == 8  # steps 1 and 2 of 4 images: step 0 was done
    assert perf["images_per_s"] > 0 and 0 <= perf["data_wait"] <= 1
    assert perf["bound"] in ("input-bound", "compute-bound")


def test_test_predictions_agree_with_validation(sm_base):
    """predict_split (the test channel, image by image) and evaluate (the loader)
    score the same images alike, with the same running sums."""
    make_dataset(sm_base / "input" / "data", {"train": 7, "valid": 1}, size=40)
    folders, train_split, _, _ = data.discover(0.1, 0, "skip")
    trainer = small_trainer(len(folders))
    labels = [label_name(f) for f in folders]
    spec = Spec.for_size(32)
    loaders = train.make_loaders(trainer.hps, trainer.world, trainer.feed, spec, train_split,
                                 train_split)
    valid, per_class = train.evaluate(trainer, loaders.valid, len(labels))
    test, rows = train.predict_split(trainer, train_split, spec, sm_base, labels)
    assert test["images"] == valid["images"] == len(rows) == 21
    assert test["acc"] == valid["acc"] == sum(per_class["correct"]) / 21
    assert test["acc"] == sum(r["label"] == r["predicted"] for r in rows) / 21
    assert test["loss"] == pytest.approx(valid["loss"], rel=1e-5)


def test_one_epoch_on_the_gpu_data_path_runs_its_logic_on_cpu(sm_base):
    """data-path=gpu on a host without CUDA: the same batched decode, crop and flip,
    decoding on the CPU (PNGs by the workers' fallback); the PERF figures say so."""
    make_dataset(sm_base / "input" / "data", {"train": 6, "valid": 1}, size=40)
    folders, train_split, valid_split, _ = data.discover(0.1, 0, "skip")
    trainer = small_trainer(len(folders), **{"data-path": "gpu", "max-steps-per-epoch": "2"})
    assert trainer.feed.path == "gpu" and "data path gpu" in trainer.feed.describe()
    loaders = train.make_loaders(trainer.hps, trainer.world, trainer.feed, Spec.for_size(32),
                                 train_split, valid_split)
    sums = train.RunningSums(trainer.placement.device)
    perf, step = train.train_one_epoch(trainer, loaders.train, 1, 0, sums, None)
    assert step == 2 and sums.seen == 8 and math.isfinite(sums.result()["loss"])
    assert (perf["data_path"], perf["workers"]) == ("gpu", 0) and perf["shm_mib"] >= 0
    line = profiling.perf_line(1, 3, perf)
    assert line.startswith("PERF epoch=1/3 images/s=")
    assert line.endswith(f"bound data_path=gpu workers=0 shm={perf['shm_mib']}MiB")


def test_data_path_auto_resolves_to_cpu_without_cuda():
    hps = config.parse({"model": "resnet18", "pretrained": "false"})
    placement = train.placement_for(hps, distributed.World())
    feed = train.make_feed(hps, placement, workers=3)
    assert (feed.path, feed.workers, feed.timeout) == ("cpu", 3, 300.0)


# ---- GPUs torch cannot use

def test_gpus_torch_cannot_use_are_named_with_the_driver_and_cuda_needed(
        sm_base, no_sm_vars, monkeypatch, tmp_path):
    from dogbreed_train import cluster

    assert cluster.unusable_gpus(Cluster.read()) == ""  # nothing promises a GPU here
    monkeypatch.setenv("SM_NUM_GPUS", "1")
    monkeypatch.setattr(cluster, "DRIVER_VERSION", tmp_path / "absent")
    line = cluster.unusable_gpus(Cluster.read())
    assert line.startswith("this host has GPUs (SM_NUM_GPUS=1), but PyTorch cannot use "
                           "them: NVIDIA driver none found")
    assert f"needs CUDA {torch.version.cuda}, which needs NVIDIA driver 580 or newer" in line
    assert "forward-compatibility" in line and "docs/training.md" in line
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar "
                       "5 22:16:17 UTC 2024\nGCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(cluster, "DRIVER_VERSION", version)
    assert "NVIDIA driver 550.54.15 found" in cluster.unusable_gpus(Cluster.read())


@pytest.mark.parametrize("instance,promised", [
    ("ml.g5.xlarge", True), ("ml.p4d.24xlarge", True), ("ml.g4dn.xlarge", True),
    ("local_gpu", True), ("ml.g4ad.xlarge", False), ("ml.m5.xlarge", False),
    ("ml.trn1.2xlarge", False), ("local", False)])
def test_instance_types_with_nvidia_gpus(sm_base, no_sm_vars, instance, promised):
    from dogbreed_train import cluster

    config_dir = sm_base / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": instance}))
    assert bool(cluster.gpus_promised(Cluster.read())) is promised
