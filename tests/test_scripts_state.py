"""The state file the steps share (dogbreed_scripts/state.py): typed, whole, and a damaged
one refused with one line before any AWS call."""

from __future__ import annotations

import json

import pytest
from aws_stand_in import explain, run_script, script_env

from dogbreed_scripts.state import LocalEndpoint, State, StateError, update


def test_a_missing_file_is_an_empty_state(tmp_path):
    assert State.load(tmp_path / "state.json") == State()


def test_what_one_step_saves_another_reads_back(tmp_path):
    path = tmp_path / "work" / "state.json"
    update(path, registry="127.0.0.1:5000", train_image_uri="127.0.0.1:5000/t:v1",
           channels={"train": "s3://b/d/train"})
    update(path, local_endpoint=LocalEndpoint(name="e", port=8080, pid=42, model="/m.tar.gz"))
    state = State.load(path)
    assert state.registry == "127.0.0.1:5000" and state.train_image_uri == "127.0.0.1:5000/t:v1"
    assert state.channels == {"train": "s3://b/d/train"}
    assert state.local_endpoint == LocalEndpoint(name="e", port=8080, pid=42, model="/m.tar.gz")
    doc = json.loads(path.read_text())  # every field is written, cleared ones as null
    assert doc["endpoint"] is None and doc["local_endpoint"]["port"] == 8080
    update(path, local_endpoint=None)
    assert State.load(path).local_endpoint is None and State.load(path).registry


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds no JSON object"),
    ('{"endpoints": "x"}', "unknown key(s) endpoints"),
    ('{"model_data": 3}', "model_data = 3 has the wrong type"),
    ('{"channels": ["s3://b/train"]}', "channels = [\"s3://b/train\"] has the wrong type"),
    ('{"local_endpoint": {"name": "e"}}', "local_endpoint = "),
])
def test_a_damaged_file_is_refused_with_its_path(tmp_path, text, says):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError) as err:
        State.load(path)
    assert str(path) in str(err.value) and says in str(err.value)


def test_a_step_refuses_a_damaged_file_before_any_call(moto_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "state.json").write_text("{not json")
    moto_server.reset()
    proc = run_script("deploy", "--model-data", "s3://b/model.tar.gz",
                      env=script_env(moto_server.url, work), cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith(f"error: state file {work / 'state.json'} is not valid JSON")
    assert moto_server.requests == []
