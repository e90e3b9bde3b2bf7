"""Plain supervised training and evaluation: the loop every endpoint, baseline and fine-tune goes through.

``fit`` returns a trained *copy*; the model it is given is never changed. A ``loss_fn`` hook lets the same
loop do adversarial training (the hook crafts adversarial examples, in eval mode, before the loss) and AWP.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # the text bar: no ipywidgets needed in notebooks

from mcar_lib.repro import model_device

Batches = Iterable[tuple[Tensor, Tensor]]
#: ``loss_fn(model, x, y) -> scalar loss``, called with the model in train mode and (x, y) on its device.
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The standard loss: mean cross-entropy of the model's logits."""
    return F.cross_entropy(model(x), y)


def quiet() -> bool:
    """True when progress bars should stay silent (CI, papermill, ``MCAR_QUIET=1``)."""
    return bool(os.environ.get("CI") or os.environ.get("MCAR_QUIET") or os.environ.get("PAPERMILL_EXECUTION"))


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterable:
    """A tqdm bar unless quiet (see :func:`quiet`) or disabled."""
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not enabled or quiet())


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's own mode."""
    modes = {name: module.training for name, module in model.named_modules()}
    model.eval()
    try:
        yield model
    finally:
        for name, module in model.named_modules():
            module.training = modes.get(name, module.training)


def _to(device: torch.device, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: Callable[[Tensor], Tensor] | nn.Module, data: Batches, *,
             device: torch.device | None = None) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy (%) of ``model`` on ``data``, in eval mode, gradients off."""
    if device is None:
        device = model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    total_loss, correct, count = 0.0, 0, 0
    guard = evaluation_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with guard:
        for x, y in data:
            x, y = _to(device, x, y)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    if count == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return {"loss": total_loss / count, "accuracy": 100.0 * correct / count}


def accuracy(model: Callable[[Tensor], Tensor] | nn.Module, data: Batches) -> float:
    """Accuracy in percent (0 to 100)."""
    return evaluate(model, data)["accuracy"]


def mean_loss(model: Callable[[Tensor], Tensor] | nn.Module, data: Batches) -> float:
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
    raise ValueError(f"unknown schedule {schedule!r}; choose 'constant', 'cosine' or 'garipov'")


@dataclass
class History:
    """Per-epoch records of a training run (``epoch``, ``loss``, ``accuracy`` and any extra columns)."""

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
    """SGD with momentum, weight decay and a learning-rate schedule (per step)."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    nesterov: bool = False


def fit(model: nn.Module, train_data: Iterable[tuple[Tensor, Tensor]], *, epochs: int,
        sgd: SGDConfig = SGDConfig(), loss_fn: LossFn = cross_entropy_loss,
        epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
        amp_bf16: bool = False, channels_last: bool = False, show_progress: bool = True,
        ) -> tuple[nn.Module, History]:
    """Train a copy of ``model`` with SGD; return ``(trained_copy, history)``.

    ``train_data`` is re-iterated every epoch (a ``DataLoader`` with a seeded shuffle is reproducible).
    ``epoch_end(model, epoch)`` may return extra numbers to log (e.g. test accuracy). On CUDA, ``amp_bf16``
    runs forward passes under bf16 autocast and ``channels_last`` changes the memory format.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    net = copy.deepcopy(model)
    device = model_device(net)
    cuda = device.type == "cuda"
    if channels_last and cuda:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=sgd.lr, momentum=sgd.momentum,
                                weight_decay=sgd.weight_decay, nesterov=sgd.nesterov)
    try:
        steps_per_epoch = len(train_data)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total_steps = epochs * steps_per_epoch if steps_per_epoch else None
    history = History()
    step = 0
    net.train()
    for epoch in progress(range(epochs), desc="epochs", enabled=show_progress):
        loss_sum, count = 0.0, 0
        for x, y in train_data:
            x, y = _to(device, x, y)
            if channels_last and cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            if total_steps:
                for group in optimizer.param_groups:
                    group["lr"] = sgd.lr * lr_factor(sgd.schedule, step / total_steps)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp_bf16 and cuda) else contextlib.nullcontext()
            with autocast:
                loss = loss_fn(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            count += len(y)
            step += 1
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1)}
        if epoch_end is not None:
            with evaluation_mode(net):
                row.update(epoch_end(net, epoch + 1))
        history.append(**row)
    return net.eval(), history
