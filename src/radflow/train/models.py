"""Model registry and factory: every architecture is built by ``create_model(name, ...)``.

Two kinds of network share the registry, told apart by :func:`model_network`: ``pooled`` ones
(classifiers and regressors, one output row per image) and ``dense`` ones (segmentation, one logit
map per output at the input's size, ``(N, K, S, S)``), which :func:`register_dense_model` registers.

Each pooled model splits into a feature extractor and a head, timm-style: ``forward_features(x)`` returns
the last feature map (N, C, h, w) that class activation maps and ONNX export use, and
``forward_head(features, extra)`` pools it, appends extra inputs (sex, for bone age as in
Iglovikov et al.) and applies the linear layer. torchvision networks are built with random
weights; ``load_weights`` reads a local state dict. Dense models are a small UNet written here for
CPU demos and MONAI's UNet and SegResNet (random init; MONAI is imported inside their builders, as
it takes seconds to import). Nothing here downloads anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from radflow.errors import ConfigError, NotFoundError, did_you_mean

__all__ = [
    "DetNet",
    "Network",
    "RadNet",
    "SegNet",
    "create_model",
    "list_models",
    "load_weights",
    "model_network",
    "register_dense_model",
    "register_detection_model",
    "register_model",
]

Network = Literal["pooled", "dense", "detection"]
"""What a network outputs: a row per image (``pooled``), a map per output (``dense``) or scored boxes
(``detection``)."""

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_NETWORK: dict[str, Network] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a pooled builder ``fn(num_outputs, in_chans, num_extra, **kw)`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    _NETWORK[fn.__name__] = "pooled"
    return fn


def register_dense_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a dense builder (same signature; it returns a :class:`SegNet`) under its function name."""
    _REGISTRY[fn.__name__] = fn
    _NETWORK[fn.__name__] = "dense"
    return fn


def register_detection_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a detection builder (same signature; it returns a :class:`DetNet`) under its function name."""
    _REGISTRY[fn.__name__] = fn
    _NETWORK[fn.__name__] = "detection"
    return fn


def list_models(network: Network | None = None) -> list[str]:
    """Names of the registered architectures (of one ``network`` kind when given), sorted."""
    return sorted(name for name in _REGISTRY if network is None or _NETWORK[name] == network)


def model_network(name: str) -> Network:
    """Whether ``name`` is ``pooled``, ``dense`` or ``detection``; an unknown name is a ConfigError with a hint."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of {', '.join(list_models())}.{did_you_mean(name, _REGISTRY)}"
        )
    return _NETWORK[name]


def create_model(name: str, num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_outputs`` outputs, ``in_chans`` input channels, random weights."""
    model_network(name)
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


class SegNet(nn.Module):
    """A dense network: ``forward(x)`` gives logits ``(N, num_outputs, S, S)`` at the input's size.

    ``forward`` takes (and refuses) ``extra`` so the training loop and prediction call every
    network alike; a segmentation network has no scalar inputs.
    """

    def __init__(self, num_outputs: int):
        super().__init__()
        self.num_outputs = num_outputs

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if extra is not None:
            raise ValueError("a segmentation network takes the image only, no extra inputs.")
        return self.forward_maps(x)


def _no_extra(name: str, num_extra: int) -> None:
    if num_extra:
        raise ConfigError(f"{name} is a segmentation network; it takes no extra inputs (got {num_extra}).")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cout, 1), _conv_bn(cout, cout, 1))


class SmallUNet(SegNet):
    """A four-level UNet: double 3x3 conv-BN-ReLU per level, max-pool down, bilinear up, skip concatenation.

    Sized for CPU demos (about 97k parameters at the default widths): at 128 px most of the work
    is at full and half resolution, where the few channels keep a step to tens of milliseconds.
    Any input size works: each decoder stage is resized to its skip's size.
    """

    def __init__(
        self, num_outputs: int, in_chans: int = 1, widths: tuple[int, ...] = (8, 16, 32, 48), dropout: float = 0.0
    ):
        super().__init__(num_outputs)
        if len(widths) < 2:
            raise ConfigError(f"small_unet needs at least two widths (levels), got {widths}.")
        self.down = nn.ModuleList()
        cin = in_chans
        for width in widths:
            self.down.append(_double_conv(cin, width))
            cin = width
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.drop = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(widths[0], num_outputs, 1)

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(self.drop(x))


class MonaiNet(SegNet):
    """A MONAI 2-D network under ``net``, so its state-dict keys are MONAI's with a ``net.`` prefix."""

    def __init__(self, net: nn.Module, num_outputs: int):
        super().__init__(num_outputs)
        self.net = net

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


@register_dense_model
def small_unet(num_outputs: int, in_chans: int = 1, num_extra: int = 0, **kw: Any) -> nn.Module:
    """A small UNet for CPU demos: four levels, 8 to 48 channels, BN + ReLU, logits per structure."""
    _no_extra("small_unet", num_extra)
    return SmallUNet(num_outputs, in_chans, **kw)


@register_dense_model
def monai_unet(
    num_outputs: int,
    in_chans: int = 1,
    num_extra: int = 0,
    channels: tuple[int, ...] = (16, 32, 64, 128, 256),
    strides: tuple[int, ...] = (2, 2, 2, 2),
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI's residual UNet (Kerfoot et al.), random init; input sides divisible by the product of ``strides``."""
    _no_extra("monai_unet", num_extra)
    from monai.networks.nets import UNet

    net = UNet(
        spatial_dims=2,
        in_channels=in_chans,
        out_channels=num_outputs,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        dropout=dropout,
    )
    return MonaiNet(net, num_outputs)


@register_dense_model
def monai_segresnet(
    num_outputs: int,
    in_chans: int = 1,
    num_extra: int = 0,
    init_filters: int = 8,
    blocks_down: tuple[int, ...] = (1, 2, 2, 4),
    blocks_up: tuple[int, ...] = (1, 1, 1),
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI's SegResNet (Myronenko 2018) without the VAE branch, random init; sides divisible by 2^(levels-1)."""
    _no_extra("monai_segresnet", num_extra)
    from monai.networks.nets import SegResNet

    net = SegResNet(
        spatial_dims=2,
        in_channels=in_chans,
        out_channels=num_outputs,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
        dropout_prob=dropout or None,
    )
    return MonaiNet(net, num_outputs)


class _SmallPyramid(nn.Module):
    """Conv-BN-ReLU stages to strides 4, 8 and 16 under a torchvision feature pyramid (``out_channels`` each)."""

    def __init__(self, in_chans: int, widths: tuple[int, ...], out_channels: int):
        super().__init__()
        if len(widths) != 4:
            raise ConfigError(f"fcos_small needs four widths (stem and strides 4, 8, 16), got {widths}.")
        from torchvision.ops import FeaturePyramidNetwork

        self.stem = _conv_bn(in_chans, widths[0], 2)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_bn(cin, cout, 2), _conv_bn(cout, cout, 1)) for cin, cout in itertools.pairwise(widths)
        )
        self.fpn = FeaturePyramidNetwork(list(widths[1:]), out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        levels: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            levels[str(i)] = x
        out: dict[str, torch.Tensor] = self.fpn(levels)
        return out


class DetNet(nn.Module):
    """A torchvision FCOS detector (Tian et al. 2019) on model-size inputs, under ``fcos``.

    The images are already padded, resized and normalised by radflow's preprocessing, so the
    torchvision transform (resize, normalisation) is bypassed: ``forward`` runs backbone, head and
    anchors itself. With ``targets`` (``(N, M, 5)`` ``x0, y0, x1, y1, label index`` at model size,
    NaN rows padding images with fewer boxes) it returns FCOS's own loss terms ``(3,)``
    (classification, box regression, centre-ness), in training and evaluation mode alike, so the
    validation loss is the training loss. Without, it returns per anchor ``(N, A, 4 + K + 1)``: the
    decoded box (clipped to the image), K class logits and the centre-ness logit; the task kind's
    ``activate`` turns them into FCOS's scores and :func:`radflow.tasks.detection.select_detections`
    keeps the boxes (threshold, per-class NMS), in training and in the torch-free runtime alike.
    Anchors come from one image and broadcast over the batch, so the exported graph keeps a dynamic batch.
    """

    def __init__(self, fcos: nn.Module, num_outputs: int):
        super().__init__()
        self.fcos = fcos
        self.num_outputs = num_outputs

    def _heads(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
        from torchvision.models.detection.image_list import ImageList

        fcos: Any = self.fcos
        features = list(fcos.backbone(x).values())
        head = fcos.head(features)
        anchors = fcos.anchor_generator(ImageList(x[:1], [(x.shape[-2], x.shape[-1])]), features)[0]
        return head, anchors, [f.shape[2] * f.shape[3] for f in features]

    def forward(
        self, x: torch.Tensor, extra: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        if extra is not None:
            raise ValueError("a detection network takes the image only, no extra inputs.")
        head, anchors, per_level = self._heads(x)
        if targets is not None:
            kept = [t[~torch.isnan(t[:, 0])] for t in targets]
            wanted = [{"boxes": b[:, :4], "labels": b[:, 4].long()} for b in kept]
            fcos: Any = self.fcos
            losses = fcos.compute_loss(wanted, head, [anchors] * len(x), per_level)
            return torch.stack([losses["classification"], losses["bbox_regression"], losses["bbox_ctrness"]])
        centre = (anchors[:, :2] + anchors[:, 2:]) / 2
        side = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
        rel = head["bbox_regression"] * side
        boxes = torch.cat([centre - rel[..., :2], centre + rel[..., 2:]], dim=-1)
        limit = torch.tensor([x.shape[-1], x.shape[-2]] * 2, dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        return torch.cat([boxes, head["cls_logits"], head["bbox_ctrness"]], dim=-1)


@register_detection_model
def fcos_small(
    num_outputs: int,
    in_chans: int = 1,
    num_extra: int = 0,
    widths: tuple[int, ...] = (16, 24, 32, 48),
    channels: int = 32,
    dropout: float = 0.0,
) -> nn.Module:
    """torchvision FCOS over a small conv backbone and FPN (strides 4, 8, 16), random init, for CPU demos.

    Anchor sizes equal the strides (as torchvision's ``fcos_resnet50_fpn``), so the levels cover boxes of
    about 4-32, 16-64 and 32+ px, the lesions of 64-256 px films. Nothing is downloaded.
    """
    if num_extra:
        raise ConfigError(f"fcos_small is a detection network; it takes no extra inputs (got {num_extra}).")
    if dropout:
        raise ConfigError(f"fcos_small takes no dropout (train.dropout is {dropout}); set it to 0.")
    if channels % 32:
        raise ConfigError(f"fcos_small needs channels divisible by 32 (the FCOS head's group norm), got {channels}.")
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    from radflow.tasks.detection import MAX_DETECTIONS, NMS_IOU, SCORE_THRESHOLD

    backbone = _SmallPyramid(in_chans, tuple(widths), channels)
    anchors = AnchorGenerator(sizes=((4,), (8,), (16,)), aspect_ratios=((1.0,),) * 3)
    fcos = FCOS(
        backbone,
        num_classes=num_outputs,
        image_mean=[0.0] * in_chans,
        image_std=[1.0] * in_chans,
        anchor_generator=anchors,
        head=FCOSHead(channels, 1, num_outputs, num_convs=2),
        score_thresh=SCORE_THRESHOLD,
        nms_thresh=NMS_IOU,
        detections_per_img=MAX_DETECTIONS,
    )
    return DetNet(fcos, num_outputs)


def load_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local state dict into ``model`` where names and shapes match; report the rest.

    Accepts a plain state dict, a radflow checkpoint (``model_state``), a torchvision file whose
    keys lack the ``body.`` prefix or a MONAI network's file whose keys lack ``net.``. An RGB first
    conv is summed over colour for a grey input.
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
        target = next((name for name in (key, f"body.{key}", f"net.{key}") if name in own), None)
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
