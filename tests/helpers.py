"""What many test files need, in one place: tiny models, synthetic data, a snapshot of a model's whole state.

Test files import it as ``from helpers import ...``: ``tests/`` has no ``__init__.py``, so pytest (default
``prepend`` import mode) puts the folder on ``sys.path`` before it imports a test file.

Everything here is small enough for one CPU core: 8×8 (or 6×6) one-channel images, a few thousand weights.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mcar_lib import models, profiles
from mcar_lib.data import LabeledImages, Splits

Batch = tuple[Tensor, Tensor]


# ------------------------------------------------------------------------------------------------ models

def tiny_cnn(seed: int | None = 0, *, widths: Sequence[int] = (4, 6), size: int = 8, classes: int = 3,
             in_channels: int = 1, batch_norm: bool = True, dropout: float = 0.0,
             activation: type[nn.Module] = nn.ReLU, hidden: int | None = None) -> nn.Sequential:
    """A tiny CNN for ``in_channels``×``size``×``size`` images, initialised from ``seed`` (``None``: from torch's
    global random state as it is).

    ``conv1`` (3×3, stride 1) and then one 3×3 convolution of stride 2 without bias per further width
    (``conv2``, ...), each followed by ``bn<i>`` (unless ``batch_norm=False``) and ``act<i>``; then
    ``flatten``, ``drop`` (if ``dropout``), a ``hidden`` linear layer with ``bn_hidden`` and ``act_hidden``
    (if ``hidden``), and the classifier ``fc``. Modules are named (``model.fc``, ``"conv1.weight"``) and
    can also be indexed (``model[1]`` is ``bn1`` when there is batch norm).
    """
    if seed is not None:
        torch.manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, side = in_channels, size
    for i, width in enumerate(widths, start=1):
        stride = 1 if i == 1 else 2
        layers[f"conv{i}"] = nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=i == 1)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(width)
        layers[f"act{i}"] = activation()
        channels, side = width, (side + 2 - 3) // stride + 1
    layers["flatten"] = nn.Flatten()
    if dropout:
        layers["drop"] = nn.Dropout(dropout)
    features = channels * side * side
    if hidden:
        layers["hidden"] = nn.Linear(features, hidden)
        if batch_norm:
            layers["bn_hidden"] = nn.BatchNorm1d(hidden)
        layers["act_hidden"] = activation()
        features = hidden
    layers["fc"] = nn.Linear(features, classes)
    return nn.Sequential(layers)


def small_cnn(seed: int = 0, *, width: int = 2, classes: int = 3, size: int = 8) -> nn.Module:
    """The book's own architecture (:class:`mcar_lib.models.SmallCNN`), tiny, initialised from ``seed``."""
    torch.manual_seed(seed)
    return models.build("small_cnn", width=width, num_classes=classes, image_size=size)


class ConstantClassifier(nn.Module):
    """Answers class ``answer`` (of ``n_classes``) for every input, whatever it is. One dummy parameter, so that
    device look-ups and no-mutation checks have something to look at."""

    def __init__(self, answer: int, n_classes: int = 4) -> None:
        super().__init__()
        self.answer, self.n_classes = answer, n_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.zeros(len(x), self.n_classes, device=x.device) + 0 * self.dummy
        logits[:, self.answer] = 1.0
        return logits


def warm_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch-norm layer random, non-default running statistics (mean in ±0.2, variance in
    [0.5, 1.5], a few batches counted), so that "the model's own statistics" and "recomputed statistics" or
    "batch statistics" really differ. The model's mode is left as it was; returns the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.track_running_stats:
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(3)
    return model


# -------------------------------------------------------------------------------------------------- data

def batch(n: int = 12, seed: int = 1, *, shape: Sequence[int] = (1, 8, 8), classes: int = 3) -> Batch:
    """``n`` uniform images in [0, 1] of ``shape`` and uniform labels in ``range(classes)``, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def images(n: int = 32, seed: int = 0, *, shape: Sequence[int] = (1, 8, 8), classes: int = 3) -> LabeledImages:
    """:func:`batch` as a :class:`~mcar_lib.data.LabeledImages`."""
    return LabeledImages(*batch(n, seed, shape=shape, classes=classes))


def chunks(x: Tensor, y: Tensor, size: int) -> list[Batch]:
    """``(x, y)`` cut into consecutive batches of ``size`` (the last one may be smaller)."""
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def learnable(n: int = 96, seed: int = 0, *, size: int = 8, classes: int = 3) -> LabeledImages:
    """Images a tiny CNN can learn in a few steps: faint noise plus one bright row whose position is the class."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, 1, size, size, generator=gen) * 0.3
    for c in range(classes):
        x[y == c, 0, (2 * c + 1) % size, :] += 0.7
    return LabeledImages(x, y)


def synthetic_splits(seed: int = 0, *, n_train: int = 128, n_bonafide: int = 64, n_test: int = 48) -> Splits:
    """Random 1×28×28 splits the size of a tiny profile (for :mod:`mcar_lib.recipes`)."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int) -> LabeledImages:
        return LabeledImages(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))

    return Splits(train=make(n_train), bonafide=make(n_bonafide), test=make(n_test), dataset="synthetic", seed=seed)


def tiny_profile() -> profiles.Profile:
    """The smoke profile cut down further: one epoch, one or two steps, a few dozen images everywhere."""
    cfg = profiles.get("smoke")
    return dataclasses.replace(
        cfg, batch_size=64, eval_batch_size=64, n_bn_images=32,
        endpoints=dataclasses.replace(cfg.endpoints, epochs=1),
        robustness=dataclasses.replace(cfg.robustness, at_epochs=1, at_steps=1, curve_steps=2, robust_curve_steps=2,
                                       eval_steps=1, n_eval=16, n_points=3))


# --------------------------------------------------------------------------------------- model snapshots

@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything a library function must leave as it found it: every parameter and buffer (cloned), each
    submodule's train/eval flag, each parameter's ``requires_grad`` and the identity of its ``.grad``."""

    state: dict[str, Tensor]
    modes: dict[str, bool]
    requires_grad: dict[str, bool]
    grads: dict[str, Tensor | None]


def snapshot(model: nn.Module) -> Snapshot:
    return Snapshot(state={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
                    modes={name: m.training for name, m in model.named_modules()},
                    requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
                    grads={name: p.grad for name, p in model.named_parameters()})


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    """Fail, naming what changed, unless ``model`` is exactly as it was when ``before`` was taken."""
    state = model.state_dict()
    assert set(state) == set(before.state), "parameters or buffers were added or removed"
    for key, value in state.items():
        assert torch.equal(value, before.state[key]), f"{key} changed"
    assert {name: m.training for name, m in model.named_modules()} == before.modes, "train/eval flags changed"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before.requires_grad, \
        "requires_grad flags changed"
    for name, p in model.named_parameters():
        assert p.grad is before.grads[name], f"{name}.grad changed"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold bit-identical parameters and buffers under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
