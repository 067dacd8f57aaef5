"""The multi-model registry on the host (multi_model.Models): what a load, an unload, a
list and a memory check do, in milliseconds.

A stand-in answers for MMS's management API (``FakeMms``: its status codes, and a gate
that holds a registration open), and ``model.validate`` is replaced by one that
accepts, since ONNX Runtime lives in the image; everything else is the real code on
real folders. The container tests (test_serve_multi_model.py) run the same registry
against the real MMS.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dogbreed_contract.model_card import ModelCard
from dogbreed_contract.preprocess import Spec
from dogbreed_serve import metrics
from dogbreed_serve import multi_model as mm
from dogbreed_serve.settings import Settings

MIB = 1024 * 1024
PLENTY = (64 * 1024 * MIB, 1024 * MIB)  # (limit, in use): 64 GiB, 1 GiB used


class FakeMms:
    """MMS's register/unregister: the answers given in turn, every call recorded."""

    def __init__(self, register=(200,), gate: threading.Event | None = None):
        self.answers = list(register)
        self.gate = gate
        self.calls: list[tuple[str, str]] = []
        self.entered = threading.Event()

    def register(self, name, model_dir):
        self.calls.append(("register", name))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        status = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return status, "{}"

    def unregister(self, name):
        self.calls.append(("unregister", name))
        return 200, "{}"


@pytest.fixture
def root(tmp_path) -> Path:
    """A models root with two model folders (a card and a 10 MiB model file each)."""
    for name, labels, size in (("three", ["a", "b", "c"], 64), ("two", ["x", "y"], 48)):
        folder = tmp_path / "models" / name / "model"
        folder.mkdir(parents=True)
        ModelCard(labels=labels, spec=Spec.for_size(size)).save(folder)
        (folder / "model.onnx").write_bytes(b"\0" * (10 * MIB))
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def accepted(monkeypatch):
    """model.validate (ONNX Runtime, in the image only) accepts every model; the
    memory is the machine's unless a test says otherwise."""
    from dogbreed_serve import model

    monkeypatch.setattr(model, "validate", lambda *args, **kw: {})
    monkeypatch.setattr(mm.memory, "container_memory", lambda: PLENTY)


def registry(root: Path, tmp_path: Path, mms: FakeMms, decode_budget: int = 0,
             **settings) -> mm.Models:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return mm.Models(Settings(models_root=str(root), multi_model=True, workers=1,
                              **settings), mms, decode_budget, run_dir)


def url(root: Path, name: str) -> str:
    return str(root / name / "model")


def test_a_load_whose_workers_fail_leaves_nothing_behind(root, tmp_path):
    mms = FakeMms(register=(500, 200))
    models = registry(root, tmp_path, mms)
    with pytest.raises(mm.ApiError) as refused:
        models.load("three", url(root, "three"))
    assert refused.value.status == 500 and "workers did not start" in refused.value.message
    assert mms.calls == [("register", "three"), ("unregister", "three")]
    assert models.loaded == {} and models.busy == {}
    assert not (tmp_path / "run" / "loaded" / "three").exists()
    assert models.load("three", url(root, "three")).classes == 3  # and it can be tried again


def test_what_mms_kept_of_an_abandoned_load_is_replaced(root, tmp_path):
    mms = FakeMms(register=(409, 200))
    models = registry(root, tmp_path, mms)
    models.load("two", url(root, "two"))
    assert mms.calls == [("register", "two"), ("unregister", "two"), ("register", "two")]


def test_the_same_name_loaded_twice_at_once_is_one_load_and_one_409(root, tmp_path):
    gate = threading.Event()
    mms = FakeMms(gate=gate)
    models = registry(root, tmp_path, mms)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(models.load, "three", url(root, "three"))
        assert mms.entered.wait(10)  # the first is registering
        with pytest.raises(mm.ApiError) as second:
            models.load("three", url(root, "two"))
        assert second.value.status == 409
        with pytest.raises(mm.ApiError) as unload:
            models.unload("three")
        assert unload.value.status == 409 and "being loaded" in unload.value.message
        gate.set()
        assert first.result().url == url(root, "three")
    assert [c for c in mms.calls if c[0] == "register"] == [("register", "three")]
    with pytest.raises(mm.ApiError) as again:
        models.load("three", url(root, "three"))
    assert again.value.status == 409 and again.value.message == "model three is already loaded"


def test_memory_sets_aside_the_decode_budget_and_the_loads_in_flight(root, tmp_path,
                                                                     monkeypatch):
    settings = Settings(workers=1)
    need = mm.cost(root / "three/model/model.onnx", 64, settings)
    # Room for one model and a half once the decode budget and the headroom are kept.
    limit = 1024 * MIB
    used = limit - 256 * MIB - mm.HEADROOM_BYTES - int(1.5 * need)
    monkeypatch.setattr(mm.memory, "container_memory", lambda: (limit, used))
    gate = threading.Event()
    models = registry(root, tmp_path, FakeMms(gate=gate), decode_budget=256 * MIB)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(models.load, "three", url(root, "three"))
        assert models.mms.entered.wait(10)
        with pytest.raises(mm.ApiError) as refused:  # the first is still loading
            models.load("copy", url(root, "three"))
        gate.set()
        first.result()
    assert refused.value.status == 507
    message = refused.value.message
    assert message.startswith(f"not enough memory for model copy: it needs about "
                              f"{need // MIB} MiB")
    assert "256 set aside for decoding" in message and "for loads in progress" in message
    assert models.busy == {}


def test_the_cost_of_a_model_covers_what_was_measured():
    """The figures of 2026-12-04 (multi_model.py): a 42.7 MiB ResNet-18 at 64 px took
    85 MiB with one worker, a 89.8 MiB ResNet-50 at 224 px 251 MiB once busy."""
    class File:
        def __init__(self, size):
            self.size = size

        def stat(self):
            return type("Stat", (), {"st_size": self.size})()

    one = Settings(workers=1)
    assert 85 * MIB <= mm.cost(File(int(42.7 * MIB)), 64, one) <= 1.5 * 85 * MIB
    assert 251 * MIB <= mm.cost(File(int(89.8 * MIB)), 224, one) <= 1.5 * 251 * MIB
    assert mm.cost(File(int(89.8 * MIB)), 224, Settings(workers=2)) > 2 * 240 * MIB


@pytest.mark.parametrize("name,where,status,says", [
    ("ok", "elsewhere", 400, "is not a folder under"),
    ("ok", "relative", 400, "is not a folder under"),
    ("ok", "the root", 400, "is not a folder under"),
    ("ok", "escape", 400, "is not a folder under"),
    ("ok", "missing", 404, "nothing at"),
    ("-dash", "three", 400, "starting with a letter or digit"),
    ("a b", "three", 400, "use 1 to 255 letters"),
    (7, "three", 400, '"model_name" and "url"'),
])
def test_requests_that_name_no_model_folder(root, tmp_path, name, where, status, says):
    url_of = {"elsewhere": str(tmp_path), "relative": "three/model", "the root": str(root),
              "escape": f"{root}/three/../../..", "missing": f"{root}/nope/model"}
    models = registry(root, tmp_path, FakeMms())
    with pytest.raises(mm.ApiError) as refused:
        models.load(name, url_of.get(where, url(root, where)))
    assert refused.value.status == status and says in refused.value.message
    assert models.mms.calls == []


def test_pages_follow_names_and_survive_changes_between_them(root, tmp_path):
    models = registry(root, tmp_path, FakeMms())
    for name in ("d", "a", "c", "b", "e"):
        models.load(name, url(root, "three"))
    first = models.page(None, 2)
    assert [m["modelName"] for m in first["models"]] == ["a", "b"]
    assert first["nextPageToken"] == "b"
    models.unload("a")  # a change between pages skips and repeats nothing
    second = models.page(first["nextPageToken"], 2)
    assert [m["modelName"] for m in second["models"]] == ["c", "d"]
    last = models.page(second["nextPageToken"], 2)
    assert last == {"models": [{"modelName": "e", "modelUrl": url(root, "three")}]}


def test_the_model_label_is_capped():
    labels = mm.ModelLabels(2)
    for name in ("first", "second", "third", "first"):
        labels.assign(name)
    assert [labels(n) for n in ("first", "second", "third", "never")] == [
        "first", "second", "other", "other"]


def test_invocations_are_counted_per_model_from_the_access_line():
    labels = mm.ModelLabels(1)
    labels.assign("kept")

    def count(model, status):
        return metrics.MODEL_REQUESTS.labels(model, status)._value.get()

    before = (count("kept", "200"), count("other", "404"))
    metrics.count_access({"uri": "/models/kept/invoke", "status": 200, "duration_s": 0.01},
                         labels)
    metrics.count_access({"uri": "/models/unknown/invoke", "status": 404, "duration_s": 0.0},
                         labels)
    metrics.count_access({"uri": "/models", "status": 200, "duration_s": 0.0}, labels)
    assert (count("kept", "200"), count("other", "404")) == (before[0] + 1, before[1] + 1)


class Status(mm.ModelsHealth):
    """ModelsHealth with MMS's answer given, not asked."""

    def __init__(self, models, answer):
        super().__init__(0, models)
        self.answer = answer

    def ask(self):
        return self.answer


def test_health_with_and_without_models(root, tmp_path):
    models = registry(root, tmp_path, FakeMms())
    assert Status(models, "Unhealthy").healthy()  # nothing loaded: nothing to run
    models.load("three", url(root, "three"))
    assert Status(models, "Healthy").healthy()
    partial = Status(models, "Partial Healthy")  # a model's worker is being replaced
    assert not partial.healthy() and partial.can_answer()
    assert not Status(models, "Unhealthy").healthy()
    assert not Status(models, None).healthy()
