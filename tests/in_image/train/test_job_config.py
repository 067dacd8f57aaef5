"""The config files the training toolkit reads before any of the program's code runs."""

import json

import pytest

from dogbreed_train import job_config
from dogbreed_train.errors import UserError

GOOD = {"hyperparameters.json": {"epochs": "1"},
        "inputdataconfig.json": {"train": {"TrainingInputMode": "File"},
                                 "valid": {"TrainingInputMode": "FastFile"}},
        "resourceconfig.json": {"current_host": "algo-1", "hosts": ["algo-1"]}}


def write_config(base, **override):
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    for name, value in {**GOOD, **override}.items():
        if value is not None:
            (config / name).write_text(value if isinstance(value, str) else json.dumps(value))
    return config


def test_good_files_pass(sm_base):
    write_config(sm_base)
    job_config.check()


@pytest.mark.parametrize("text,needle", [
    ("", "is empty: it must hold a JSON object, e.g. {} for none"),
    ("  \n", "is empty"),
    ("[]", "must hold a JSON object ({...}), not a list ('[]')"),
    ('"epochs=1"', "not a str"),
    ("{epochs: 1}", "is not valid JSON: Expecting property name"),
])
def test_unreadable_hyperparameters_file_is_one_line_naming_it(sm_base, text, needle):
    write_config(sm_base, **{"hyperparameters.json": text})
    with pytest.raises(UserError) as info:
        job_config.check()
    message = str(info.value)
    assert message.startswith(f"{sm_base}/input/config/hyperparameters.json ")
    assert needle in message and "\n" not in message


def test_missing_file_says_what_to_write(sm_base):
    write_config(sm_base, **{"resourceconfig.json": None})
    with pytest.raises(UserError, match="resourceconfig.json is missing"):
        job_config.check()


def test_pipe_mode_is_refused(sm_base):
    write_config(sm_base, **{"inputdataconfig.json": {
        "train": {"TrainingInputMode": "Pipe"}, "test": {"TrainingInputMode": "Pipe"},
        "valid": {"TrainingInputMode": "File"}}})
    with pytest.raises(UserError) as info:
        job_config.check()
    assert str(info.value).startswith("Pipe mode is not supported: use File or FastFile "
                                      "(TrainingInputMode of channel(s) test, train)")
