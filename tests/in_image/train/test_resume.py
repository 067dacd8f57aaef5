"""Resuming into a run whose hyperparameters changed, or from a checkpoint whose
content does not fit: train.resume (checkpoints.restore) on real trainers.

A part that a changed hyperparameter shapes starts fresh and the log says so; a
checkpoint whose metadata matches but whose content does not is refused in one line
(UserError, exit 2), never a KeyError or a traceback.
"""

from __future__ import annotations

import logging

import pytest
import torch

from dogbreed_train import checkpoints, config, distributed, train
from dogbreed_train.errors import UserError

LABELS = ["a", "b", "c"]


def trainer(**overrides: str) -> train.Trainer:
    hps = config.parse({"model": "resnet18", "pretrained": "false", "image-size": "32",
                        "batch-size": "4", "workers": "0", "record": "false", "epochs": "3",
                        **overrides})
    train.seed_everything(0)
    world = distributed.World()
    return train.build_trainer(hps, world, train.placement_for(hps, world), len(LABELS))


def one_step(t: train.Trainer) -> None:
    """An optimizer step and an epoch's scheduler step, as the epoch loop takes them."""
    t.optimizer.zero_grad()
    t.criterion(t.training_model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    t.optimizer.step()
    t.scheduler.step()


def checkpointed(**overrides: str) -> train.Trainer:
    """A run (adamw, cosine unless overridden) that trained epoch 1 and saved."""
    t = trainer(**overrides)
    one_step(t)
    t.save_checkpoint(2, 0, {}, [{"epoch": 1, "valid_acc": 0.5}], LABELS)
    return t


@pytest.mark.parametrize("change", [
    {"optimizer": "sgd"},
    {"freeze-backbone": "true"},
    {"optimizer": "adam", "freeze-backbone": "true"},
    {"lr-scheduler": "none"},
], ids=["optimizer", "freeze-backbone", "both", "lr-scheduler"])
def test_a_changed_optimizer_or_schedule_resumes_fresh_and_says_so(sm_base, caplog, change):
    first = checkpointed()
    resumed = trainer(**change)
    caplog.set_level(logging.INFO)
    progress = train.resume(resumed, LABELS)
    assert progress.first_epoch == 2 and progress.history == [{"epoch": 1, "valid_acc": 0.5}]
    for key, value in first.model.state_dict().items():  # the checkpoint's weights
        assert torch.equal(resumed.model.state_dict()[key], value), key
    fresh = [r.getMessage() for r in caplog.records if "resuming with a fresh" in r.getMessage()]
    assert len(fresh) == 1 and all(k in fresh[0] for k in change), fresh
    group = resumed.optimizer.param_groups[0]
    if "lr-scheduler" in change:  # the new schedule (constant), at epoch 2
        assert group["lr"] == resumed.hps.lr
    else:  # the new optimizer takes the cosine schedule where it was
        assert group["lr"] == pytest.approx(first.scheduler.get_last_lr()[0])
    one_step(resumed)  # and trains


def saved_state() -> dict:
    return torch.load(checkpoints.path(), map_location="cpu", weights_only=True)


def other_networks_optimizer(state: dict) -> None:
    """The optimizer of a run that trained only the head, under unchanged metadata."""
    state["optimizer"] = trainer(**{"freeze-backbone": "true"}).optimizer.state_dict()


def shape_of_another_network(state: dict) -> None:
    """The first parameter's moving averages, of a layer with 7 output channels."""
    moments = state["optimizer"]["state"][0]
    for key in ("exp_avg", "exp_avg_sq"):
        moments[key] = torch.zeros(7, *moments[key].shape[1:])


def head(state: dict) -> str:
    return list(state["model"])[-2]  # the last linear layer's weight (its bias follows)


@pytest.mark.parametrize(("damage", "says"), [
    (lambda s: s.pop("model"), "it holds no model weights"),
    (lambda s: s["model"].update({head(s): torch.zeros(5, 512)}),
     "is (5, 512) in the checkpoint, (3, 512) in this model"),
    (lambda s: s["model"].pop(head(s).replace("weight", "bias")),
     "its network lacks layer fc."),
    (lambda s: s.pop("rng"), "its random-number state is missing or damaged"),
    (other_networks_optimizer, "its optimizer holds 2 parameter tensors in 1 group(s), "
                               "this model trains 62 in 1"),
    (shape_of_another_network, "its optimizer's exp_avg of shape (7, 3, 7, 7) belongs to "
                               "another network (the parameter is (64, 3, 7, 7))"),
    (lambda s: s["optimizer"]["param_groups"][0].pop("betas"),
     "its optimizer state lacks betas, which AdamW needs"),
    (lambda s: s.pop("scheduler"), "its lr scheduler state is missing"),
    (lambda s: s.update(next_epoch="2"), "its epoch, step or history is missing or damaged"),
], ids=["no-model", "layer-shape", "missing-layer", "no-rng", "other-optimizer",
        "optimizer-shape", "optimizer-setting", "no-scheduler", "epoch-type"])
def test_a_checkpoint_whose_content_does_not_fit_is_refused_in_one_line(sm_base, damage, says):
    checkpointed()
    state = saved_state()
    damage(state)
    torch.save(state, checkpoints.path())
    with pytest.raises(UserError) as refused:
        train.resume(trainer(), LABELS)
    message = str(refused.value)
    assert "\n" not in message and says in message, message
    assert message.startswith(f"the checkpoint {checkpoints.path()} does not fit this "
                              "training run") and "Delete it" in message


def test_a_checkpoint_that_is_not_a_training_state_is_refused(sm_base):
    checkpoints.path().parent.mkdir(parents=True)
    torch.save([1, 2, 3], checkpoints.path())
    with pytest.raises(UserError, match="does not hold a training state.*Delete it"):
        train.resume(trainer(), LABELS)
