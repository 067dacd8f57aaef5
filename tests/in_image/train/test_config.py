import pytest

from dogbreed_train import config
from dogbreed_train.errors import UserError


def test_defaults_are_valid():
    hps = config.parse({})
    assert hps.model == "resnet50" and hps.pretrained is True and hps.hidden_units == ()


def test_strings_as_sagemaker_writes_them():
    hps = config.parse({
        "model": "vgg16", "pretrained": "False", "hidden-units": "[750, 500, 250]",
        "dropout": "0.5", "freeze-backbone": "true", "optimizer": "sgd", "lr": "0.01",
        "eps": "1e-09", "weight-decay": "0.0", "batch-size": "128", "test-batch-size": "73",
        "epochs": "7", "image-size": "96", "seed": "3",
    })
    assert hps.model == "vgg16" and hps.pretrained is False and hps.freeze_backbone is True
    assert hps.hidden_units == (750, 500, 250)
    assert (hps.lr, hps.eps, hps.batch_size, hps.test_batch_size) == (0.01, 1e-9, 128, 73)
    assert (hps.epochs, hps.image_size, hps.seed) == (7, 96, 3)


@pytest.mark.parametrize("text,units", [
    ("", ()), ("[]", ()), ("750,500", (750, 500)), ("750 500 250", (750, 500, 250)),
    ("[64]", (64,)),
])
def test_hidden_units_forms(text, units):
    assert config.parse({"hidden-units": text}).hidden_units == units


def test_underscored_names_and_sagemaker_keys_are_accepted():
    hps = config.parse({"batch_size": "16", "sagemaker_program": "x.py",
                        "sagemaker_region": "us-east-1",
                        "_tuning_objective_metric": "valid:accuracy"})
    assert hps.batch_size == 16


@pytest.mark.parametrize("raw,needle", [
    ({"learning-rate": "0.1"}, "unknown hyperparameter 'learning-rate'"),
    ({"lr": "-1"}, "'lr'"),
    ({"lr": "fast"}, "'lr'"),
    ({"optimizer": "rmsprop"}, "'optimizer'"),
    ({"model": "resnet1000"}, "'model'"),
    ({"batch-size": "0"}, "'batch-size'"),
    ({"dropout": "1.5"}, "'dropout'"),
    ({"hidden-units": "[10, -3]"}, "'hidden-units'"),
    ({"hidden-units": "[10,"}, "'hidden-units'"),
    ({"pretrained": "maybe"}, "'pretrained'"),
    ({"image-size": "8"}, "'image-size'"),
])
def test_invalid_hyperparameters_name_the_culprit(raw, needle):
    with pytest.raises(UserError) as info:
        config.parse(raw)
    assert needle in str(info.value)


def test_every_hyperparameter_has_help():
    names = [name for name, text, _ in config.field_help()]
    assert {"model", "pretrained", "hidden-units", "dropout", "freeze-backbone", "optimizer",
            "lr", "eps", "weight-decay", "batch-size", "test-batch-size", "epochs",
            "image-size", "seed"} <= set(names)
    assert all(text for _, text, _ in config.field_help())


def test_json_quoted_values_as_the_sdk_and_its_tuners_write_them():
    quoted = config.parse({"batch-size": '"8"', "model": '"resnet18"', "lr": '"0.01"',
                           "pretrained": '"false"', "hidden-units": '"[64, 32]"'})
    plain = config.parse({"batch-size": "8", "model": "resnet18", "lr": "0.01",
                          "pretrained": "false", "hidden-units": "[64, 32]"})
    assert quoted == plain
    assert (quoted.batch_size, quoted.model, quoted.hidden_units) == (8, "resnet18", (64, 32))


@pytest.mark.parametrize("value", ['"', '""', '"8', '"not json\\"'])
def test_odd_quotes_are_values_like_any_other(value):
    with pytest.raises(UserError, match="'batch-size'"):
        config.parse({"batch-size": value})
