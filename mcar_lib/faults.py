"""Faults injected into a model's weights: fault sneaking and float32 bit flips.

A model downloaded from a third party can carry *tampered weights*. Two kinds are modelled here.

**Fault sneaking** (Zhao et al., DAC 2019, in the simplified form of Zhao et al., ICLR 2020): the attacker
edits a few chosen parameter tensors so that a small set S of images is sent to labels of the attacker's
choice, while a larger keep-set stays correctly classified, so the tampering is invisible on ordinary
accuracy checks. The edit is found by gradient descent on a Carlini-Wagner margin loss, optionally with an
L2 or L1 penalty on the modification. Parameters are chosen **by name**: the reference code picked "the
74th tensor of ``model.parameters()``", which silently points at another layer when the architecture changes.

**Bit flips** (the "terminal brain damage" of Hong et al., USENIX Security 2019): flipping one exponent bit
of a float32 weight (bit 30) multiplies it by about 2^128, which is enough to destroy a network.

Every function returns new tensors or a new model; the model it is given is never changed, and the
optimisation runs in eval mode so batch-norm statistics are never touched.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mcar_lib.data import LabeledImages
from mcar_lib.modes import evaluation_mode
from mcar_lib.repro import model_device
from mcar_lib.train import lr_factor, predict

Penalty = Literal["none", "l2", "l1"]
#: ``{parameter or buffer name: (flat indices, bit or one bit per index)}``.
FlipSpec = dict[str, tuple[Tensor, int | Tensor]]


# ------------------------------------------------------------------------------------------ name lookup

def _named_tensors(model: nn.Module, *, buffers: bool) -> dict[str, Tensor]:
    tensors = dict(model.named_parameters())
    if buffers:
        tensors.update(dict(model.named_buffers()))
    return tensors


def resolve_names(model: nn.Module, names: Iterable[str], *, buffers: bool = False) -> list[str]:
    """Check that every name is a parameter (or, with ``buffers``, a buffer) of ``model``; return them in order.

    Selecting tensors by name rather than by position is the whole point: an unknown name is an error that
    lists the closest matches and the available names, never a silent fallback.
    """
    if isinstance(names, str):
        raise TypeError(f"pass a list of parameter names, not the single string {names!r}; e.g. [{names!r}]")
    available = _named_tensors(model, buffers=buffers)
    chosen = list(names)
    if not chosen:
        raise ValueError("no parameter names given; choose at least one of " + _listing(available))
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"parameter names repeat in {chosen}; name each tensor once")
    for name in chosen:
        if name not in available:
            close = difflib.get_close_matches(name, list(available), n=3, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            kind = "parameter or buffer" if buffers else "parameter"
            raise KeyError(f"the model has no {kind} named {name!r}.{hint} Available: {_listing(available)}")
    return chosen


def _listing(tensors: Mapping[str, Tensor], limit: int = 40) -> str:
    names = [f"{k} {tuple(v.shape)}" for k, v in tensors.items()]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------------ targets of sneaking

@dataclass(frozen=True)
class SneakTargets:
    """The images an attacker wants misclassified (S, with their wrong target labels) and a keep-set.

    Independent of any model, so the very same errors can be injected into two models.
    """

    x: Tensor
    true_labels: Tensor
    target_labels: Tensor
    keep: LabeledImages

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or len(self.x) == 0:
            raise ValueError(f"S must be a non-empty N×C×H×W batch, got shape {tuple(self.x.shape)}")
        if self.true_labels.shape != (len(self.x),) or self.target_labels.shape != (len(self.x),):
            raise ValueError(f"need one true and one target label per S image ({len(self.x)}), got shapes "
                             f"{tuple(self.true_labels.shape)} and {tuple(self.target_labels.shape)}")
        if bool((self.true_labels == self.target_labels).any()):
            raise ValueError("a target label equals the true label; injected errors must be wrong labels")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: str | torch.device) -> SneakTargets:
        return SneakTargets(self.x.to(device), self.true_labels.to(device), self.target_labels.to(device),
                            self.keep.to(device))


def pick_targets(models: nn.Module | Sequence[nn.Module], data: LabeledImages, *, n_sneak: int = 4,
                 n_keep: int = 1000, num_classes: int = 10, seed: int = 0,
                 among_correct: bool = True) -> SneakTargets:
    """Seeded S and keep-set, both drawn among images that **every** given model classifies correctly.

    S gets uniformly random wrong labels; the keep-set keeps its true labels and is disjoint from S. Passing
    both endpoints ensures the same errors are genuine errors for each of them. The same seed always gives
    the same choice (for the same models and data). ``among_correct=False`` draws from all images instead:
    only for exercising the code on networks that have learned nothing (the smoke profiles).
    """
    group = [models] if isinstance(models, nn.Module) else list(models)
    if not group:
        raise ValueError("pick_targets needs at least one model")
    if n_sneak < 1 or n_keep < 0:
        raise ValueError(f"need n_sneak >= 1 and n_keep >= 0, got {n_sneak} and {n_keep}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    correct = torch.ones(len(data), dtype=torch.bool)
    for model in group if among_correct else ():
        correct &= predict(model, data.x).cpu() == data.y.cpu()
    pool = torch.nonzero(correct).flatten()
    if len(pool) < n_sneak + n_keep:
        raise ValueError(f"only {len(pool)} images are classified correctly by every model, fewer than "
                         f"n_sneak + n_keep = {n_sneak + n_keep}; pass more data or lower n_keep")
    gen = torch.Generator().manual_seed(seed)
    chosen = pool[torch.randperm(len(pool), generator=gen)[:n_sneak + n_keep]]
    s_idx, keep_idx = chosen[:n_sneak], chosen[n_sneak:]
    true = data.y[s_idx].cpu()
    # a uniform wrong label: shift the true label by 1..num_classes-1
    shift = torch.randint(1, num_classes, (n_sneak,), generator=gen)
    target = (true + shift) % num_classes
    return SneakTargets(data.x[s_idx], data.y[s_idx], target.to(data.y.device), data.subset(keep_idx))


# ----------------------------------------------------------------------------------------- metrics

def sneak_success(model: nn.Module, targets: SneakTargets) -> float:
    """Percent of S images the model sends to their injected labels (the attack's success rate)."""
    pred = predict(model, targets.x).cpu()
    return 100.0 * int((pred == targets.target_labels.cpu()).sum()) / len(pred)


def keep_accuracy(model: nn.Module, targets: SneakTargets) -> float:
    """Percent of keep-set images still classified correctly."""
    if len(targets.keep) == 0:
        raise ValueError("the keep-set is empty; pick targets with n_keep > 0")
    pred = predict(model, targets.keep.x).cpu()
    return 100.0 * int((pred == targets.keep.y.cpu()).sum()) / len(pred)


def margin_loss(logits: Tensor, labels: Tensor, kappa: float = 1.0) -> Tensor:
    """Carlini-Wagner margin per sample: ``max(0, max_{j≠y} z_j − z_y + κ)``; zero once y wins by κ."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(others.max(1).values - own + kappa, min=0.0)


@dataclass(frozen=True)
class WeightChange:
    """How much two models of the same architecture differ in the named tensors."""

    l2_norm: float
    n_modified: int
    n_total: int


def weight_change(before: nn.Module, after: nn.Module, names: Sequence[str] | None = None) -> WeightChange:
    """L2 norm of ``after − before`` and the count of entries that differ (all parameters unless named)."""
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    if set(a) != set(b):
        raise ValueError("the two models have different parameter names: are they the same architecture?")
    chosen = resolve_names(before, names) if names is not None else list(a)
    sq, changed, total = 0.0, 0, 0
    for name in chosen:
        old, new = a[name].detach(), b[name].detach().to(a[name].device)
        sq += float(((new - old).double() ** 2).sum())
        changed += int((new != old).sum())
        total += old.numel()
    return WeightChange(l2_norm=sq ** 0.5, n_modified=changed, n_total=total)


# ---------------------------------------------------------------------------------------- fault sneaking

@dataclass(frozen=True)
class SneakReport:
    """What an injection achieved: success on S (%), keep-set accuracy (%), and the size of the edit."""

    success: float
    keep_accuracy: float
    l2_norm: float
    n_modified: int
    n_selected: int
    steps: int
    param_names: tuple[str, ...]


def sneak(model: nn.Module, targets: SneakTargets, *, param_names: Sequence[str], steps: int = 500,
          lr: float = 0.1, optimizer: Literal["gd", "adam"] = "gd", schedule: str = "constant", sneak_weight: float = 1.0,
          keep_loss: Literal["margin", "logits"] = "margin", keep_weight: float = 1.0, kappa: float = 1.0,
          keep_kappa: float | None = None, penalty: Penalty = "none", penalty_weight: float = 0.0, patience: int = 10,
          keep_sample: int | None = None, seed: int = 0, keep_batch_size: int = 1000,
          ) -> tuple[nn.Module, SneakReport]:
    """Inject the errors of ``targets`` by editing only ``param_names``; return ``(new_model, report)``.

    Minimises ``sneak_weight · mean_S margin(target) + keep_weight · keep term + λ·penalty(δ)`` over the
    modification δ of the named tensors, in eval mode (batch-norm statistics untouched). The keep term is
    the mean margin loss of the keep-set's true labels (``keep_loss="margin"``, the reference code's choice:
    only the labels must survive), or the mean squared change of its logits (``"logits"``: the whole
    function must survive, which hides the edit better on images outside the keep-set). The L2 penalty is
    ``λ‖δ‖²``; the L1 penalty is applied as a proximal soft-threshold step (threshold ``lr·λ``), which sets
    small changes exactly to zero, so fewer weights are modified.

    Stops when the loss is zero (margin keep term, no penalty, every margin met), or once every S image has
    reached its target with margin κ while keep-set accuracy is no lower than before the edit, for more than
    ``patience`` consecutive steps. ``optimizer="gd"`` is the plain gradient descent of the reference code.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if penalty not in ("none", "l2", "l1"):
        raise ValueError(f"penalty must be 'none', 'l2' or 'l1', got {penalty!r}")
    if penalty != "none" and penalty_weight <= 0:
        raise ValueError(f"penalty {penalty!r} needs penalty_weight > 0, got {penalty_weight}")
    lr_factor(schedule, 0.0)  # fails early, with the list of schedules, on an unknown name
    if optimizer not in ("adam", "gd"):
        raise ValueError(f"optimizer must be 'gd' or 'adam', got {optimizer!r}")
    if keep_loss not in ("margin", "logits"):
        raise ValueError(f"keep_loss must be 'margin' or 'logits', got {keep_loss!r}")
    names = resolve_names(model, param_names)
    net = copy.deepcopy(model)
    device = model_device(net)
    params = dict(net.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    for name, p in params.items():
        p.requires_grad_(name in names)
    chosen = [params[name] for name in names]
    originals = [p.detach().clone() for p in chosen]
    opt: torch.optim.Optimizer = (torch.optim.Adam(chosen, lr=lr) if optimizer == "adam"
                                  else torch.optim.SGD(chosen, lr=lr, momentum=0.0))
    tg = targets.to(device)
    n_keep = len(tg.keep)
    if keep_sample is not None and not 0 < keep_sample <= n_keep:
        raise ValueError(f"keep_sample must be in [1, {n_keep}] (the keep-set size) or None, got {keep_sample}")
    keep_floor = keep_accuracy(net, tg) if n_keep else 100.0
    reference = None
    if keep_loss == "logits":
        with torch.no_grad(), evaluation_mode(net):
            reference = torch.cat([net(tg.keep.x[i:i + keep_batch_size]) for i in range(0, n_keep, keep_batch_size)])
    gen = torch.Generator().manual_seed(seed)
    streak, step = 0, 0
    with evaluation_mode(net):
        for step in range(1, steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(schedule, (step - 1) / steps)
            opt.zero_grad(set_to_none=True)
            s_margin = margin_loss(net(tg.x), tg.target_labels, kappa)
            (sneak_weight * s_margin.mean()).backward()
            s_met = bool((s_margin == 0).all())
            used = (torch.arange(n_keep) if keep_sample is None
                    else torch.randperm(n_keep, generator=gen)[:keep_sample]).to(device)
            kept, keep_unmet = 0, 0
            for i in range(0, len(used), keep_batch_size):  # accumulated: the keep-set need not fit in memory
                idx = used[i:i + keep_batch_size]
                k_logits = net(tg.keep.x[idx])
                yk = tg.keep.y[idx]
                if reference is None:
                    k_margin = margin_loss(k_logits, yk, kappa if keep_kappa is None else keep_kappa)
                    term = k_margin.sum()
                    keep_unmet += int((k_margin > 0).sum())
                else:
                    term = ((k_logits - reference[idx]) ** 2).sum()
                (keep_weight * term / len(used)).backward()
                kept += int((k_logits.argmax(1) == yk).sum())
            if s_met and keep_loss == "margin" and keep_unmet == 0 and penalty == "none" and keep_sample is None:
                break  # every margin is met: the loss is zero and nothing is left to do
            keep_ok = 100.0 * kept / len(used) >= keep_floor if n_keep else True
            streak = streak + 1 if (s_met and keep_ok) else 0
            if streak > patience:
                break
            if penalty == "l2":
                sq = sum(((p - p0) ** 2).sum() for p, p0 in zip(chosen, originals))
                (penalty_weight * sq).backward()
            opt.step()
            if penalty == "l1":
                with torch.no_grad():
                    for p, p0 in zip(chosen, originals):
                        delta = p - p0
                        step_size = opt.param_groups[0]["lr"]
                        p.copy_(p0 + delta.sign() * (delta.abs() - step_size * penalty_weight).clamp(min=0.0))
    for name, p in params.items():
        p.requires_grad_(flags[name])
    net.eval()
    change = weight_change(model, net, names)
    report = SneakReport(success=sneak_success(net, targets),
                         keep_accuracy=keep_accuracy(net, targets) if n_keep else float("nan"),
                         l2_norm=change.l2_norm, n_modified=change.n_modified, n_selected=change.n_total,
                         steps=step, param_names=tuple(names))
    return net, report


# ------------------------------------------------------------------------------------------------ bit flips

def _bit_mask(bit: int | Tensor, n: int) -> Tensor:
    """int32 masks with one bit set (bit 31 is the sign bit, i.e. the most negative int32)."""
    bits = torch.as_tensor(bit, dtype=torch.long)
    if bits.ndim == 0:
        bits = bits.expand(n)
    if bits.shape != (n,):
        raise ValueError(f"give one bit for all indices or one per index ({n}), got shape {tuple(bits.shape)}")
    if n and (int(bits.min()) < 0 or int(bits.max()) > 31):
        raise ValueError(f"bits of a float32 are numbered 0..31 (31 = sign, 23..30 = exponent), got {bits.tolist()}")
    masks = torch.ones(n, dtype=torch.long) << bits  # in int64, then wrap into int32's two's complement
    return torch.where(masks >= 2**31, masks - 2**32, masks).to(torch.int32)


def flip_bits(tensor: Tensor, flat_indices: Tensor | Sequence[int], bit: int | Tensor) -> Tensor:
    """A copy of a float32 ``tensor`` with ``bit`` flipped in the entries at ``flat_indices`` (row-major).

    ``bit`` is one bit number for all entries or one per entry; bit 31 is the sign, 23-30 the exponent,
    0-22 the mantissa. Flipping the same bits again restores the tensor exactly.
    """
    if tensor.dtype != torch.float32:
        raise TypeError(f"flip_bits works on float32 tensors, got {tensor.dtype}; convert with .float() first")
    idx = torch.as_tensor(flat_indices, dtype=torch.long).flatten().cpu()
    if len(idx) and (int(idx.min()) < -tensor.numel() or int(idx.max()) >= tensor.numel()):
        raise IndexError(f"flat indices must lie in [0, {tensor.numel()}) for a tensor of shape "
                         f"{tuple(tensor.shape)}, got min {int(idx.min())}, max {int(idx.max())}")
    idx = idx % max(tensor.numel(), 1)
    if len(torch.unique(idx)) != len(idx):
        raise ValueError("flat indices repeat; flipping a bit twice undoes it, so give each entry once "
                         "(or one index per entry with its own bit)")
    masks = _bit_mask(bit, len(idx)).to(tensor.device)
    out = tensor.detach().clone().contiguous()
    words = out.view(torch.int32).view(-1)
    idx = idx.to(tensor.device)
    words[idx] = torch.bitwise_xor(words[idx], masks)
    return out


def flip_bits_in(model: nn.Module, flips: Mapping[str, tuple[Tensor | Sequence[int], int | Tensor]]) -> nn.Module:
    """A copy of ``model`` with bits flipped in the named parameters or buffers: ``{name: (indices, bit)}``."""
    names = resolve_names(model, list(flips), buffers=True)
    net = copy.deepcopy(model)
    tensors = _named_tensors(net, buffers=True)
    with torch.no_grad():
        for name in names:
            indices, bit = flips[name]
            tensors[name].copy_(flip_bits(tensors[name], indices, bit))
    return net


def random_flips(model: nn.Module, n: int, *, bits: Sequence[int] = (30,), param_names: Sequence[str] | None = None,
                 generator: torch.Generator | None = None) -> FlipSpec:
    """``n`` distinct weights drawn uniformly among the named float32 parameters (all if None), each with a
    bit drawn uniformly from ``bits``; returns the spec for :func:`flip_bits_in` (reproducible with a seeded
    generator)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    params = dict(model.named_parameters())
    names = (resolve_names(model, param_names) if param_names is not None
             else [k for k, v in params.items() if v.dtype == torch.float32])
    bad = [k for k in names if params[k].dtype != torch.float32]
    if bad:
        raise TypeError(f"bit flips need float32 parameters; these are not: {bad}")
    if not bits:
        raise ValueError("bits must name at least one bit (0..31)")
    sizes = torch.tensor([params[k].numel() for k in names])
    total = int(sizes.sum())
    if n > total:
        raise ValueError(f"cannot flip {n} distinct weights among {total}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    flat = torch.randperm(total, generator=gen)[:n]
    choice = torch.as_tensor(list(bits), dtype=torch.long)[torch.randint(len(bits), (n,), generator=gen)]
    starts = torch.cumsum(sizes, 0) - sizes
    owner = torch.searchsorted(torch.cumsum(sizes, 0), flat, right=True)
    spec: FlipSpec = {}
    for i, name in enumerate(names):
        here = owner == i
        if bool(here.any()):
            order = torch.argsort(flat[here])
            spec[name] = ((flat[here] - starts[i])[order], choice[here][order])
    return spec


@torch.no_grad()
def zero_implausible(model: nn.Module, max_abs: float) -> tuple[nn.Module, dict[str, int]]:
    """A copy of ``model`` with every non-finite parameter entry, or one larger than ``max_abs`` in magnitude,
    set to zero; also returns how many entries were zeroed per parameter name.

    An exponent bit flip turns a weight of order 1 into one of order 2^128 or into inf: far outside anything
    training produces, so a range check finds it. Zeroing such an entry is a crude repair (the weight is
    lost, not restored) that makes the model usable again, and usable as an endpoint of a path.
    """
    if not max_abs > 0:
        raise ValueError(f"max_abs must be a positive magnitude, got {max_abs}")
    net = copy.deepcopy(model)
    zeroed: dict[str, int] = {}
    for name, p in net.named_parameters():
        if not p.is_floating_point():
            continue
        bad = ~torch.isfinite(p) | (p.abs() > max_abs)
        if bool(bad.any()):
            zeroed[name] = int(bad.sum())
            p.masked_fill_(bad, 0.0)
    return net, zeroed

