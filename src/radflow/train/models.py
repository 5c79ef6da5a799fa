"""Model registry and factory: every architecture is built by ``create_model(name, ...)``.

Each model splits into a feature extractor and a head, timm-style: ``forward_features(x)`` returns
the last feature map (N, C, h, w) that class activation maps and ONNX export use, and
``forward_head(features, extra)`` pools it, appends extra inputs (sex, for bone age as in
Iglovikov et al.) and applies the linear layer. torchvision networks are built with random
weights; ``load_weights`` reads a local state dict. Nothing here downloads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radflow.errors import ConfigError, NotFoundError, did_you_mean

__all__ = ["RadNet", "create_model", "list_models", "load_weights", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder ``fn(num_outputs, in_chans, num_extra, **kw)`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_outputs`` outputs, ``in_chans`` input channels, random weights."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_models())}.{did_you_mean(name, _REGISTRY)}"
        )
    if num_outputs < 1:
        raise ConfigError(f"a model needs at least one output, got num_outputs={num_outputs}.")
    return _REGISTRY[name](num_outputs=num_outputs, in_chans=in_chans, num_extra=num_extra, **kw)


class RadNet(nn.Module):
    """A feature extractor plus a pooled linear head that can take extra scalar inputs."""

    def __init__(self, num_features: int, num_outputs: int, num_extra: int = 0, dropout: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.num_extra = num_extra
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features + num_extra, num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pool(features).flatten(1)
        if self.num_extra:
            if extra is None:
                raise ValueError(f"this model takes {self.num_extra} extra input(s) (e.g. sex) besides the image.")
            pooled = torch.cat([pooled, extra.to(pooled.dtype).reshape(pooled.shape[0], -1)], dim=1)
        return self.fc(self.drop(pooled))

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), extra)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(RadNet):
    """Stride-2 conv-BN-ReLU stages with one extra 3x3 conv at the low-resolution stages.

    Sized for CPU: at 128 px most of the compute sits at 16x16 and below, where the extra convs
    give the receptive field that chest findings (cardiac silhouette, effusion at the bases) need.
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 1,
        num_extra: int = 0,
        widths: tuple[int, ...] = (16, 32, 64, 96, 128),
        dropout: float = 0.0,
    ):
        super().__init__(widths[-1], num_outputs, num_extra, dropout)
        layers: list[nn.Module] = []
        cin = in_chans
        for i, width in enumerate(widths):
            layers.append(_conv_bn(cin, width, 2))
            if i >= 2:
                layers.append(_conv_bn(width, width, 1))
            cin = width
        self.features = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_model
def small_cnn(num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """A fast CPU network: five stride-2 stages, 16 to 128 channels, BN + ReLU, global pooling."""
    return SmallCNN(num_outputs, in_chans, num_extra, **kw)


def _replace_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """The same conv taking ``in_chans`` channels (torchvision nets are built for RGB)."""
    if conv.in_channels == in_chans:
        return conv
    return nn.Conv2d(
        in_chans,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


class TorchvisionNet(RadNet):
    """A torchvision backbone (classifier removed) under ``body``, so its state-dict keys map 1:1."""

    def __init__(self, body: nn.Module, features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], **kw: Any):
        super().__init__(**kw)
        self.body = body
        self._features_fn = features_fn

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features_fn(self.body, x)


def _resnet_features(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m: Any = body
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def _densenet_features(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchvision's DenseNet applies the final ReLU outside `features`; CAMs need it applied.
    return torch.relu(body.features(x))  # type: ignore[operator]


def _plain_features(body: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return body.features(x)  # type: ignore[operator]


def _resnet(ctor: Callable[..., Any], num_outputs: int, in_chans: int, num_extra: int, **kw: Any) -> nn.Module:
    body = ctor(weights=None)
    body.conv1 = _replace_first_conv(body.conv1, in_chans)
    num_features = body.fc.in_features
    body.fc = nn.Identity()
    return TorchvisionNet(
        body, _resnet_features, num_features=num_features, num_outputs=num_outputs, num_extra=num_extra, **kw
    )


@register_model
def resnet18(num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """torchvision ResNet-18, random init."""
    from torchvision.models import resnet18 as ctor

    return _resnet(ctor, num_outputs, in_chans, num_extra, **kw)


@register_model
def resnet50(num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """torchvision ResNet-50, random init."""
    from torchvision.models import resnet50 as ctor

    return _resnet(ctor, num_outputs, in_chans, num_extra, **kw)


@register_model
def densenet121(num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """torchvision DenseNet-121, the CheXNet backbone, random init."""
    from torchvision.models import densenet121 as ctor

    body = ctor(weights=None)
    body.features.conv0 = _replace_first_conv(body.features.conv0, in_chans)
    num_features = body.classifier.in_features
    body.classifier = nn.Identity()
    return TorchvisionNet(
        body, _densenet_features, num_features=num_features, num_outputs=num_outputs, num_extra=num_extra, **kw
    )


@register_model
def efficientnet_b0(num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """torchvision EfficientNet-B0, random init."""
    from torchvision.models import efficientnet_b0 as ctor

    body = ctor(weights=None)
    stem: Any = body.features[0]
    stem[0] = _replace_first_conv(stem[0], in_chans)
    num_features = body.classifier[-1].in_features
    body.classifier = nn.Identity()
    return TorchvisionNet(
        body, _plain_features, num_features=num_features, num_outputs=num_outputs, num_extra=num_extra, **kw
    )


def load_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local state dict into ``model`` where names and shapes match; report the rest.

    Accepts a plain state dict, a radflow checkpoint (``model_state``) or a torchvision file whose
    keys lack the ``body.`` prefix. An RGB first conv is summed over colour for a grey input.
    Returns ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"weights file {path} does not exist; pass a local state-dict file (nothing downloads).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path} is not a readable PyTorch state dict ({exc}).") from None
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict.")
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for key, value in state.items():
        target = key if key in own else f"body.{key}" if f"body.{key}" in own else None
        if target is None or not isinstance(value, torch.Tensor):
            unexpected.append(key)
            continue
        if value.ndim == 4 and value.shape[1] == 3 and own[target].shape[1] == 1:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != own[target].shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[target].shape)}")
            continue
        loaded[target] = value
    model.load_state_dict(loaded, strict=False)
    missing = [k for k in own if k not in loaded]
    if not loaded:
        raise ConfigError(f"{path}: no tensor in it matches the model (first keys: {list(state)[:3]}).")
    return {"loaded": sorted(loaded), "missing": missing, "unexpected": unexpected, "mismatched": mismatched}
