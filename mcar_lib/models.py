"""The three architectures of the book, as plain ``nn.Module``s, and a cached way to get trained ones.

* ``small_cnn``: two conv-BN-ReLU blocks (the first with stride 2) for 28×28 grayscale images
  (Fashion-MNIST), cheap enough for a laptop CPU; it has batch norm, so it shows why statistics must be
  recomputed along a path.
* ``vgg16``: the CIFAR VGG16 of Garipov et al. (13 3×3 convolutions, **no** batch norm, classifier
  dropout-512-ReLU-dropout-512-ReLU-10), as used by the reference code for 32×32 RGB images.
* ``preresnet26``: the pre-activation ResNet the reference code actually trained (class ``PreResNet110``
  called with depth 26): BasicBlocks, 4 per stage, widths 16/32/64, batch norm.

Inputs are [0, 1] tensors; none of the models normalises (the reference code did not either, so attack
budgets stay in pixel units). :func:`last_conv_name` names the last convolution, the layer fine-pruning
prunes. Trained endpoints come from :mod:`mcar_lib.recipes`, which turns a profile into cached models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Architecture = Literal["small_cnn", "vgg16", "preresnet26"]
ARCHITECTURES: tuple[str, ...] = ("small_cnn", "vgg16", "preresnet26")

# ------------------------------------------------------------------------------------------- small CNN


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU blocks (``width`` and 2·``width`` channels), a 2×2 max-pool and a linear classifier.

    The first convolution has stride 2, so both blocks work at 14×14 for 28×28 inputs: on a CPU the cost of
    such a small network is dominated by memory traffic at full resolution, and this halves it. Flattening
    the 7×7 features (rather than global pooling) makes the network learn Fashion-MNIST in a couple of
    epochs. ``conv2`` is the last convolution (the layer fine-pruning looks at; see :func:`last_conv_name`).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 28) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (a stride-2 convolution and a 2×2 max-pool), "
                             f"got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.fc(torch.flatten(h, 1))


# ----------------------------------------------------------------------------------------------- VGG16

_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """Garipov's CIFAR VGG16 without batch norm (≈15.2 M parameters for 10 classes at ``width`` 64).

    ``width`` is the first block's channels (the paper's 64); every layer scales with it, so a narrow VGG16 has the
    same layers, names and code path at a fraction of the cost (the ``*_smoke`` profiles use one).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = max(1, int(item) * width // 64)
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(channels, channels), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(channels, channels), nn.ReLU(inplace=True),
            nn.Linear(channels, num_classes),
        )
        for module in self.modules():  # He initialisation of the convolutions, as in the reference code
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---------------------------------------------------------------------------------------- PreResNet-26


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with an identity (or 1×1-conv) shortcut: the pre-activation BasicBlock."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
                           if stride != 1 or in_planes != planes else None)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreResNet(nn.Module):
    """Pre-activation ResNet for 32×32 images; ``depth = 6n + 2`` gives n BasicBlocks per stage, with
    ``width``, 2·``width`` and 4·``width`` channels (16/32/64 in the paper)."""

    def __init__(self, depth: int = 26, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (e.g. 26 or 110), got {depth}")
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        stages, in_planes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = [PreActBlock(in_planes, planes, stride)] + [PreActBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        h = torch.relu(self.bn(h))
        return self.fc(h.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------------------ public API

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "vgg16": VGG16,
    "preresnet26": lambda **kw: PreResNet(depth=26, **kw),
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised model by name (see :data:`ARCHITECTURES`); ``kwargs`` go to its constructor.

    ``small_cnn`` takes ``in_channels`` (1), ``num_classes`` (10), ``width`` (16), ``image_size`` (28); ``vgg16`` and
    ``preresnet26`` take ``in_channels`` (3), ``num_classes`` (10) and ``width`` (64 and 16). Seed torch first for a repeatable
    initialisation (``mcar_lib.repro.seed_everything``).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {ARCHITECTURES}")
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"bad keyword arguments for {name!r}: {err}") from err


def last_conv_name(model: nn.Module) -> str:
    """The qualified name of the last ``nn.Conv2d`` in ``model`` (registration order), e.g. ``"conv2"``.

    Fine-pruning prunes the channels of this layer. Works for any model, not only the ones built here.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")
    return names[-1]


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ trained endpoints

_DEFAULT_WIDTH = {"vgg16": 64, "preresnet26": 16}


def architecture_kwargs(name: str, image_shape: tuple[int, int, int], *, width: int | None = None,
                        num_classes: int = 10) -> dict[str, Any]:
    """The :func:`build` arguments that fit images of ``image_shape`` (C, H, W) for architecture ``name``."""
    channels, height, width_px = image_shape
    if name == "small_cnn":
        if height != width_px:
            raise ValueError(f"small_cnn expects square images, got {height}×{width_px}")
        kwargs: dict[str, Any] = {"in_channels": channels, "num_classes": num_classes, "image_size": height}
        if width is not None:
            kwargs["width"] = width
        return kwargs
    if name in ("vgg16", "preresnet26"):
        if (height, width_px) != (32, 32):
            raise ValueError(f"{name} is built for 32×32 images, got {height}×{width_px}: pad or resize the data")
        kwargs = {"in_channels": channels, "num_classes": num_classes}
        if width is not None and width != _DEFAULT_WIDTH[name]:  # the paper's width keeps its old cache key
            kwargs["width"] = width
        return kwargs
    raise ValueError(f"unknown architecture {name!r}; choose one of {ARCHITECTURES}")


def parameter_names(name: str, **kwargs: Any) -> list[str]:
    """The parameter names of architecture ``name`` built with ``kwargs``, without allocating its weights
    (built on the ``meta`` device): for checking settings that name parameters."""
    with torch.device("meta"):
        return [n for n, _ in build(name, **kwargs).named_parameters()]
