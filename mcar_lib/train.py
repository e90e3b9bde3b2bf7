"""Supervised training and evaluation: the one loop every network, curve, baseline and fine-tune goes through.

``fit`` trains a *copy* of any module whose trainable tensors are the ones to optimise: a network (all its
parameters), or a curve (only its bends; see :func:`mcar_lib.curves.fit_curve`). What is minimised is a loss
hook ``loss_fn(model, x, y)``: plain cross-entropy, a robust loss that crafts adversarial examples first
(:mod:`mcar_lib.adversarial`), AWP's perturbed loss, or a curve's loss at a random t. The budget is given in
epochs (passes over the data) or in steps (the data is cycled through). The loop reads nothing back from the
device during an epoch: the loss is summed where it is computed and read once per epoch, and learning-rate
updates are plain Python numbers, so a GPU is never kept waiting by the host.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # the text bar: no ipywidgets needed in notebooks

from mcar_lib.checks import check_finite_tensor, check_finite_weights
from mcar_lib.data import BatchSource, iter_batches
from mcar_lib.modes import evaluation_mode
from mcar_lib.repro import model_device

#: ``loss_fn(model, x, y) -> scalar loss``, called with the model in train mode and (x, y) on its device.
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
Schedule = Literal["constant", "cosine", "garipov"]
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "garipov")


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The standard loss: mean cross-entropy of the model's logits."""
    return F.cross_entropy(model(x), y)


def quiet() -> bool:
    """True when progress bars should stay silent (CI, papermill, ``MCAR_QUIET=1``)."""
    return bool(os.environ.get("CI") or os.environ.get("MCAR_QUIET") or os.environ.get("PAPERMILL_EXECUTION"))


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterable:
    """A tqdm bar unless quiet (see :func:`quiet`) or disabled."""
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not enabled or quiet())


@torch.no_grad()
def evaluate(model: Callable[[Tensor], Tensor] | nn.Module, data: BatchSource, *,
             device: torch.device | None = None, batch_size: int = 512) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy (%) of ``model`` on ``data``, in eval mode, gradients off.

    Sums stay on the device and are read once at the end.
    """
    if device is None:
        device = model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    guard = evaluation_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with guard:
        for x, y in iter_batches(data, batch_size):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
    if count == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return {"loss": float(total_loss) / count, "accuracy": 100.0 * int(correct) / count}


def accuracy(model: Callable[[Tensor], Tensor] | nn.Module, data: BatchSource) -> float:
    """Accuracy in percent (0 to 100)."""
    return evaluate(model, data)["accuracy"]


def mean_loss(model: Callable[[Tensor], Tensor] | nn.Module, data: BatchSource) -> float:
    """Mean cross-entropy in nats."""
    return evaluate(model, data)["loss"]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, batch_size: int = 512) -> Tensor:
    """Predicted labels for ``x``, in eval mode (on the model's device, returned on ``x``'s device)."""
    device = model_device(model)
    with evaluation_mode(model):
        out = [model(x[i:i + batch_size].to(device)).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).to(x.device)


def lr_factor(schedule: str, progress_fraction: float) -> float:
    """Learning-rate multiplier at a fraction of training done.

    ``"constant"``; ``"cosine"`` (to 0); ``"garipov"``: 1 for the first half, linear to 0.01 at 90 %, then 0.01
    (the schedule of Garipov et al. and of the reference code).
    """
    p = min(max(progress_fraction, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "garipov":
        if p <= 0.5:
            return 1.0
        if p <= 0.9:
            return 1.0 - 0.99 * (p - 0.5) / 0.4
        return 0.01
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


@dataclass
class History:
    """Per-epoch records of a training run (``epoch``, ``step``, ``train_loss`` and any extra columns)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def append(self, **row: float) -> None:
        self.rows.append(dict(row))

    def column(self, name: str) -> list[float]:
        return [row[name] for row in self.rows]

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        return pd.DataFrame(self.rows)


@dataclass(frozen=True)
class SGDConfig:
    """SGD with momentum, weight decay and a learning-rate schedule (updated every step)."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    nesterov: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite non-negative learning rate, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and non-negative, got {self.weight_decay}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")


def _length(data: Iterable) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def _batches_for(data: Iterable, steps: int | None, epochs: int | None,
                 per_epoch: int | None) -> Iterator[tuple[int, Iterator]]:
    """(epoch index, that pass's batches) until the budget is used up."""
    epoch = 0
    while epochs is None or epoch < epochs:
        yield epoch, iter(data)
        epoch += 1
        if steps is not None and per_epoch is not None and epoch * per_epoch >= steps:
            return


def fit(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *, epochs: int | None = None,
        steps: int | None = None, sgd: SGDConfig = SGDConfig(), loss_fn: LossFn = cross_entropy_loss,
        epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
        amp_bf16: bool = False, channels_last: bool = False, show_progress: bool = True,
        ) -> tuple[nn.Module, History]:
    """Train a copy of ``model``'s trainable tensors with SGD; return ``(trained_copy, history)``.

    Give ``epochs`` (passes over ``data``) or ``steps`` (the data is iterated again as often as needed).
    ``data`` is re-iterated every pass (a ``DataLoader`` with a seeded shuffle is reproducible). The learning
    rate follows ``sgd.schedule`` per step when the number of steps is known (a ``data`` with a ``len``, or
    ``steps``). ``epoch_end(model, epoch)`` may return extra numbers to log, computed in eval mode. On CUDA,
    ``amp_bf16`` runs the loss under bf16 autocast and ``channels_last`` changes the memory format.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps=")
    if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
        raise ValueError(f"epochs/steps must be at least 1, got epochs={epochs}, steps={steps}")
    check_finite_weights(model, "the model to train")
    net = copy.deepcopy(model)
    trainable = [p for p in net.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (requires_grad=True): nothing to fit")
    device = model_device(net)
    cuda = device.type == "cuda"
    if channels_last and cuda:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(trainable, lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay,
                                nesterov=sgd.nesterov)
    per_epoch = _length(data)
    if per_epoch == 0:
        raise ValueError("the training data yielded no batches")
    total = steps if steps is not None else (epochs * per_epoch if per_epoch else None)  # type: ignore[operator]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (amp_bf16 and cuda) \
        else contextlib.nullcontext
    history = History()
    step = 0
    checked_inputs = False
    ticker = iter(progress(range(total), total=total, desc="steps", enabled=show_progress)) if total else None
    net.train()
    for epoch, batches in _batches_for(data, steps, epochs, per_epoch):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for x, y in batches:
            if steps is not None and step >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if not checked_inputs:  # once, not per step: a check costs a host-device synchronisation
                check_finite_tensor(x, "the first training batch")
                checked_inputs = True
            if channels_last and cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            if total:
                for group in optimizer.param_groups:
                    group["lr"] = sgd.lr * lr_factor(sgd.schedule, step / total)
            with autocast():
                loss = loss_fn(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * len(y)
            count += len(y)
            step += 1
            if ticker is not None:
                next(ticker, None)
        if count == 0:
            raise ValueError("the training data yielded no batches")
        mean = float(loss_sum) / count  # the one read-back of the epoch
        if not math.isfinite(mean):
            raise FloatingPointError(f"the training loss became non-finite ({mean}) in epoch {epoch + 1}: lower the "
                                     "learning rate, or check the data and the loss for NaN/inf")
        row = {"epoch": epoch + 1, "step": step, "train_loss": mean}
        if epoch_end is not None:
            with evaluation_mode(net):
                row.update(epoch_end(net, epoch + 1))
        history.append(**row)
        if steps is not None and step >= steps:
            break
    check_finite_weights(net, "the trained model (its last update overflowed: lower the learning rate)")
    return net.eval(), history


__all__ = ["History", "LossFn", "SCHEDULES", "SGDConfig", "Schedule", "accuracy", "cross_entropy_loss",
           "evaluate", "fit", "lr_factor", "mean_loss", "predict", "progress", "quiet"]
