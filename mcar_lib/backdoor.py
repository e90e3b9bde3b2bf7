"""Backdoor (BadNets) attacks: triggers, data poisoning, and the metrics that say whether a backdoor is alive.

A backdoored model behaves normally on clean images but sends any image carrying a small *trigger* to the
attacker's *target* class. The attacker plants it by poisoning the training data: a fraction of the images of
every other class gets the trigger and the target label (all-to-one, Gu et al. 2017).

Two numbers describe a backdoored model: its **clean accuracy** and its **attack success rate** (ASR), the
share of triggered held-out images *whose true class is not the target* that are classified as the target.
The reference code of Zhao et al. also counted clean target-class images (which a good model labels "target"
anyway), which inflates the ASR by about the target class's share of the test set; :func:`inflated_asr`
reproduces that definition only so the book can show the difference.

Triggers act on float images in [0, 1] (any C×H×W, with or without a batch dimension) and are pure: they
return new tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import curves, train
from mcar_lib.data import BatchSource, LabeledImages, StepBatches, iter_batches
from mcar_lib.modes import evaluation_mode
from mcar_lib.repro import model_device

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


class Trigger(Protocol):
    """Anything that stamps a trigger onto a batch of images and returns the new batch."""

    def apply(self, x: Tensor) -> Tensor: ...


def _as_batch(x: Tensor) -> tuple[Tensor, bool]:
    """(N×C×H×W view, whether a batch dimension was added) for a C×H×W or N×C×H×W float tensor."""
    if not torch.is_floating_point(x):
        raise TypeError(f"triggers act on float images in [0, 1]; got dtype {x.dtype} (convert with x.float() / 255)")
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"images must be C×H×W or N×C×H×W, got shape {tuple(x.shape)}")


@dataclass(frozen=True)
class PatchTrigger:
    """The BadNets trigger: a solid ``size``×``size`` square of ``value`` in every channel.

    By default it sits ``margin`` pixels from the ``corner`` (the reference code: a 3×3 white square one pixel
    from the bottom-right corner). ``position=(row, col)`` places its top-left pixel explicitly instead.
    """

    size: int = 3
    value: float = 1.0
    corner: str = "bottom_right"
    margin: int = 1
    position: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {self.size}")
        if self.margin < 0:
            raise ValueError(f"margin must be non-negative, got {self.margin}")
        if self.corner not in CORNERS:
            raise ValueError(f"unknown corner {self.corner!r}; choose one of {CORNERS}")
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"value must be a pixel value in [0, 1], got {self.value}")

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns the square covers in an image of ``height``×``width``."""
        if self.position is not None:
            row, col = self.position
        else:
            row = self.margin if self.corner.startswith("top") else height - self.margin - self.size
            col = self.margin if self.corner.endswith("left") else width - self.margin - self.size
        if row < 0 or col < 0 or row + self.size > height or col + self.size > width:
            raise ValueError(
                f"a {self.size}×{self.size} trigger at row {row}, column {col} does not fit in a "
                f"{height}×{width} image; use a smaller size or margin, or another position"
            )
        return slice(row, row + self.size), slice(col, col + self.size)

    def mask(self, height: int, width: int) -> Tensor:
        """Boolean H×W mask of the trigger's pixels."""
        m = torch.zeros(height, width, dtype=torch.bool)
        rows, cols = self.region(height, width)
        m[rows, cols] = True
        return m

    def apply(self, x: Tensor) -> Tensor:
        """``x`` (C×H×W or N×C×H×W, float) with the square stamped on; a new tensor."""
        xb, added = _as_batch(x)
        rows, cols = self.region(xb.shape[-2], xb.shape[-1])
        out = xb.clone()
        out[..., rows, cols] = self.value
        return out.squeeze(0) if added else out


@dataclass(frozen=True)
class BlendTrigger:
    """The blended trigger (Chen et al. 2017): ``(1 − alpha)·x + alpha·pattern`` over the whole image.

    ``pattern`` is C×H×W or H×W in [0, 1]; it is broadcast over channels and resized (bilinear) to the size of
    the images it is applied to, so one trigger serves any resolution.
    """

    pattern: Tensor
    alpha: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.pattern.ndim not in (2, 3):
            raise ValueError(f"pattern must be H×W or C×H×W, got shape {tuple(self.pattern.shape)}")

    @classmethod
    def random_noise(cls, height: int = 28, width: int = 28, *, alpha: float = 0.1, seed: int = 0) -> BlendTrigger:
        """A seeded uniform-noise pattern (one channel, broadcast to all)."""
        gen = torch.Generator().manual_seed(seed)
        return cls(torch.rand(height, width, generator=gen), alpha)

    def pattern_for(self, channels: int, height: int, width: int) -> Tensor:
        """The pattern as a channels×height×width tensor."""
        p = self.pattern.float()
        p = p.unsqueeze(0) if p.ndim == 2 else p
        if p.shape[0] not in (1, channels):
            raise ValueError(f"pattern has {p.shape[0]} channels but the images have {channels}; "
                             "use a one-channel pattern or one with as many channels as the images")
        if p.shape[-2:] != (height, width):
            p = F.interpolate(p.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False)[0]
        return p.expand(channels, height, width)

    def apply(self, x: Tensor) -> Tensor:
        """``x`` (C×H×W or N×C×H×W, float) blended with the pattern; a new tensor."""
        xb, added = _as_batch(x)
        p = self.pattern_for(*xb.shape[1:]).to(device=xb.device, dtype=xb.dtype)
        out = (1.0 - self.alpha) * xb + self.alpha * p
        return out.squeeze(0) if added else out


# --------------------------------------------------------------------------------------------- poisoning

@dataclass(frozen=True)
class Poisoned:
    """A poisoned training set, with which samples were poisoned (their indices in the original set)."""

    data: LabeledImages
    is_poisoned: Tensor
    target: int

    @property
    def poisoned_indices(self) -> Tensor:
        return torch.nonzero(self.is_poisoned).flatten()

    @property
    def n_poisoned(self) -> int:
        return int(self.is_poisoned.sum())


def poison(data: LabeledImages, trigger: Trigger, *, target: int, rate: float, seed: int,
           source_classes: Iterable[int] | None = None) -> Poisoned:
    """All-to-one poisoning: in each source class ``c`` (default: every class but ``target``), exactly
    ``round(rate · n_c)`` samples, chosen with a seeded generator, get the trigger and the label ``target``.

    Returns a new data set of the same size and order (the input is not changed) and the poisoned mask.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate is the poisoned fraction of each source class, in [0, 1]; got {rate}")
    classes = sorted(int(c) for c in torch.unique(data.y)) if source_classes is None else sorted(set(source_classes))
    if target in classes and source_classes is not None:
        raise ValueError(f"source_classes contains the target class {target}: all-to-one poisoning relabels "
                         "other classes as the target")
    classes = [c for c in classes if c != target]
    gen = torch.Generator().manual_seed(seed)
    is_poisoned = torch.zeros(len(data), dtype=torch.bool)
    for c in classes:
        members = torch.nonzero(data.y == c).flatten()
        k = round(rate * len(members))
        if k:
            chosen = members[torch.randperm(len(members), generator=gen)[:k]]
            is_poisoned[chosen] = True
    x, y = data.x.clone(), data.y.clone()
    if is_poisoned.any():
        x[is_poisoned] = trigger.apply(data.x[is_poisoned])
        y[is_poisoned] = target
    return Poisoned(LabeledImages(x, y), is_poisoned, target)


# ----------------------------------------------------------------------------------------------- metrics

@torch.no_grad()
def _count(model: nn.Module, data: BatchSource, trigger: Trigger | None, target: int,
           batch_size: int) -> dict[str, int]:
    """One pass: counts for clean accuracy, ASR, triggered accuracy and the inflated ASR."""
    device = model_device(model)
    c = dict(n=0, clean_correct=0, n_source=0, hits=0, triggered_correct=0, target_clean_as_target=0)
    with evaluation_mode(model):
        for x, y in iter_batches(data, batch_size):
            x, y = x.to(device), y.to(device)
            c["n"] += len(y)
            clean_pred = model(x).argmax(1)
            c["clean_correct"] += int((clean_pred == y).sum())
            is_target = y == target
            c["target_clean_as_target"] += int((clean_pred[is_target] == target).sum())
            if trigger is None or (~is_target).sum() == 0:
                continue
            xs, ys = trigger.apply(x[~is_target]), y[~is_target]
            pred = model(xs).argmax(1)
            c["n_source"] += len(ys)
            c["hits"] += int((pred == target).sum())
            c["triggered_correct"] += int((pred == ys).sum())
    return c


def _percent(num: int, den: int, what: str) -> float:
    if den == 0:
        raise ValueError(f"no images to compute the {what} on; pass held-out images of classes other than the target")
    return 100.0 * num / den


def clean_accuracy(model: nn.Module, data: BatchSource, *, batch_size: int = 512) -> float:
    """Accuracy (%) on clean held-out images."""
    c = _count(model, data, None, -1, batch_size)
    return _percent(c["clean_correct"], c["n"], "clean accuracy")


def attack_success_rate(model: nn.Module, data: BatchSource, trigger: Trigger, target: int, *,
                        batch_size: int = 512) -> float:
    """ASR (%): the share of triggered held-out images whose true class is not ``target`` that the model
    classifies as ``target``. Target-class images are left out: they say nothing about the backdoor."""
    c = _count(model, data, trigger, target, batch_size)
    return _percent(c["hits"], c["n_source"], "attack success rate")


def triggered_accuracy(model: nn.Module, data: BatchSource, trigger: Trigger, target: int, *,
                       batch_size: int = 512) -> float:
    """Accuracy (%) of triggered non-target images against their *true* labels (robust accuracy in
    BackdoorBench's terms): a repaired model should ignore the trigger, not just avoid the target."""
    c = _count(model, data, trigger, target, batch_size)
    return _percent(c["triggered_correct"], c["n_source"], "triggered accuracy")


def inflated_asr(model: nn.Module, data: BatchSource, trigger: Trigger, target: int, *,
                 batch_size: int = 512) -> float:
    """The reference code's *inflated* ASR (%), kept only to show the pitfall: non-target images triggered,
    clean target-class images kept with the target label, and both counted. A model with no backdoor at all
    still scores about (target share of the test set) × (its accuracy on that class). Do not report it as ASR."""
    c = _count(model, data, trigger, target, batch_size)
    return _percent(c["hits"] + c["target_clean_as_target"], c["n"], "inflated attack success rate")


@dataclass(frozen=True)
class BackdoorEval:
    """Clean accuracy, ASR and triggered accuracy (all %) from one pass over the data."""

    clean_accuracy: float
    attack_success_rate: float
    triggered_accuracy: float

    def as_dict(self) -> dict[str, float]:
        return {"clean_acc": self.clean_accuracy, "asr": self.attack_success_rate,
                "triggered_acc": self.triggered_accuracy}


def backdoor_metrics(model: nn.Module, data: BatchSource, trigger: Trigger, target: int, *,
                     batch_size: int = 512) -> BackdoorEval:
    """All three metrics from a single pass (cheaper than three calls)."""
    c = _count(model, data, trigger, target, batch_size)
    return BackdoorEval(_percent(c["clean_correct"], c["n"], "clean accuracy"),
                        _percent(c["hits"], c["n_source"], "attack success rate"),
                        _percent(c["triggered_correct"], c["n_source"], "triggered accuracy"))


# ------------------------------------------------------------------------------------- adaptive attacker

def fit_path_aware(curve: curves.Curve, poisoned: LabeledImages, *, steps: int, sgd: train.SGDConfig,
                   batch_size: int = 64, seed: int = 0) -> curves.Curve:
    """A path-aware attacker's training: the curve between its two backdoored models, trained *on its poisoned
    data*, so that every point of the curve keeps both the task and the backdoor. Returns the trained copy.

    An attacker who expects path repair wants the backdoor to survive along the paths a defender will train.
    Releasing two interior points of such a curve (:func:`release`) instead of the endpoints puts the
    defender's path on the chord of a backdoored valley from the start.
    """
    trained, _ = curves.fit_curve(curve, StepBatches(poisoned, batch_size, steps, seed=seed), steps=steps, sgd=sgd,
                                  seed=seed, show_progress=False)
    return trained


def release(curve: curves.Curve, poisoned: LabeledImages, ts: Sequence[float] = (0.25, 0.75)) -> list[nn.Module]:
    """The models the path-aware attacker publishes: the curve at ``ts`` (batch-norm statistics from the
    attacker's own data)."""
    if not all(0.0 <= t <= 1.0 for t in ts):
        raise ValueError(f"ts must be values of t in [0, 1], got {tuple(ts)}")
    return [curve.at(float(t), bn_data=poisoned) for t in ts]


# ------------------------------------------------------------------------------------------------- relapse

def relapse(model: nn.Module, attacker_data: LabeledImages, test: BatchSource, trigger: Trigger, target: int, *,
            steps: int, every: int = 5, sgd: train.SGDConfig = train.SGDConfig(lr=0.01, schedule="constant"),
            batch_size: int = 32, seed: int = 0) -> pd.DataFrame:
    """How fast a backdoor comes back: fine-tune a copy of ``model`` on ``attacker_data`` (a handful of
    poisoned images, usually mixed with clean ones) and measure clean accuracy and ASR on ``test`` every
    ``every`` steps. A repair that only hides the backdoor lets it return much faster than it would appear in a
    clean model (Min et al. 2024 call such defences superficial). Returns columns ``step``, ``clean_accuracy``
    and ``asr`` (%), starting at step 0."""
    if steps < 1 or every < 1:
        raise ValueError(f"steps and every must be positive, got {steps} and {every}")

    def measure(net: nn.Module) -> dict[str, float]:
        result = backdoor_metrics(net, test, trigger, target)
        return {"clean_accuracy": result.clean_accuracy, "asr": result.attack_success_rate}

    data = StepBatches(attacker_data, batch_size, every, seed=seed)  # an "epoch" of ``every`` steps
    _, history = train.fit(model, data, epochs=max(1, steps // every), sgd=sgd, show_progress=False,
                           epoch_end=lambda net, epoch: measure(net))
    start = pd.DataFrame([{"step": 0, **measure(model)}])
    later = history.to_frame()[["step", "clean_accuracy", "asr"]]
    return pd.concat([start, later], ignore_index=True)
