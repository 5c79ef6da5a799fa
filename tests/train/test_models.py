"""Every registered architecture builds, splits features from head, trains, and loads local weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from radflow.errors import ConfigError, NotFoundError
from radflow.train.losses import masked_bce
from radflow.train.models import create_model, list_models, load_weights


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny tensors gain nothing from more threads, and on a busy machine extra threads spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list_models("pooled"))
def test_model_features_head_and_training_steps(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_outputs=3, in_chans=1)
    x = torch.randn(4, 1, 32, 32)
    features = model.forward_features(x)
    assert features.ndim == 4 and features.shape[0] == 4
    assert model.forward_head(features).shape == (4, 3)
    assert torch.equal(model.eval()(x), model.forward_head(model.forward_features(x)))
    model.train()
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]] * 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = masked_bce(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_extra_input_is_concatenated_to_pooled_features() -> None:
    model = create_model("small_cnn", num_outputs=1, num_extra=1).eval()
    x = torch.randn(2, 1, 32, 32)
    male, female = model(x, torch.ones(2, 1)), model(x, torch.zeros(2, 1))
    assert male.shape == (2, 1)
    assert not torch.allclose(male, female)
    with pytest.raises(ValueError, match="extra input"):
        model(x)


def test_three_channel_input_is_supported() -> None:
    model = create_model("resnet18", num_outputs=2, in_chans=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_unknown_architecture_suggests_close_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown architecture 'densenet12'.*Did you mean 'densenet121'"):
        create_model("densenet12", 3)


def test_load_weights_maps_torchvision_keys_and_adapts_rgb_stem(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None, num_classes=5)  # a 5-class head: its keys cannot fit a 3-output model
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", num_outputs=3, in_chans=1)
    report = load_weights(model, path)
    assert torch.allclose(model.body.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert [m.split()[0] for m in report["mismatched"]] == ["fc.weight", "fc.bias"]
    assert report["missing"] == ["fc.weight", "fc.bias"]
    assert report["unexpected"] == []
    with pytest.raises(NotFoundError, match="nothing downloads"):
        load_weights(model, tmp_path / "absent.pt")
