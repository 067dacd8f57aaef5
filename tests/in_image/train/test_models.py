import pytest
import torch
import torchvision

from dogbreed_train.backbones import BACKBONES
from dogbreed_train.errors import UserError
from dogbreed_train.models import build_model


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gets_a_head(name):
    model = build_model(name, num_classes=5, hidden_units=(32,), dropout=0.1,
                        pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 5)


def test_head_layers_and_freezing():
    model = build_model("resnet18", 7, hidden_units=(750, 500, 250), dropout=0.5,
                        pretrained=False, freeze_backbone=True)
    linears = [m for m in model.fc if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [750, 500, 250, 7]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("fc.") for n in trainable)


def test_weights_channel_is_used(tmp_path):
    reference = build_model("resnet18", 3, pretrained=False)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", 3, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert not torch.equal(model.conv1.weight, reference.conv1.weight)


def test_torchvision_cache_is_used(tmp_path, monkeypatch):
    """Weights baked in at build time sit in torchvision's cache under $TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), cache / url.rsplit("/", 1)[1])
    model = build_model("resnet18", 3, pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_wrong_weights_file(tmp_path):
    torch.save(torchvision.models.alexnet().state_dict(),
               tmp_path / "resnet18.pth")
    with pytest.raises(UserError, match="do not fit resnet18"):
        build_model("resnet18", 3, pretrained=True, weights_dir=tmp_path)


def test_no_weights_and_no_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache; tests run offline
    with pytest.raises(UserError, match="weights' channel"):
        build_model("resnet18", 3, pretrained=True, weights_dir=tmp_path / "none")
