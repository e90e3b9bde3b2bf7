"""Repairing tampered models with a little clean data: path connection and the baselines it is compared with.

The defender has one or two tampered models (backdoored, or with injected errors) and a small **bonafide**
data set. Every method here sees only that data set:

* :func:`path_repair`: train a curve between the two models on bonafide data (Zhao et al. 2020) and take a
  model from its interior; the point t is chosen on a held-out slice of the bonafide data, never on test data;
* :func:`finetune`: fine-tune one tampered model;
* :func:`train_from_scratch`: forget the tampered weights and train on the bonafide data alone;
* :func:`noisy_model`: a random model as far from the endpoints as the path's interior (Gaussian noise with
  per-weight scale ``|w_b − w_a|``), to show that *where* the path goes matters, not just how far;
* :func:`fine_prune`: fine-pruning (Liu et al. 2018): prune the last convolution's channels that are dormant
  on clean data, then fine-tune.

All return a :class:`RepairResult`; none changes the models it is given. Batch-norm statistics of any new
weights are recomputed from bonafide data only.

**Choosing t without test data.** A defender cannot measure the attack success rate (they do not know the
trigger), only clean accuracy on their own data. The tampering lives at the endpoints and, along a trained
path, fades as one moves away from them; clean accuracy is usually lowest in the middle. So the default rule
(``select="farthest_within_tolerance"``) holds out a slice of the bonafide data, evaluates candidate t on it,
and takes the candidate *farthest from both endpoints* whose held-out accuracy is within ``tolerance`` points
of the best candidate's, endpoints included: "give up at most ``tolerance`` points of accuracy, and move as far
from the tampered models as that allows". ``select="best_interior"`` takes the most accurate candidate with
``min(t, 1 − t) >= min_distance`` instead. Both are heuristics; the book reports how the chosen t fares.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import cache, curves
from mcar_lib.batchnorm import recalibrated
from mcar_lib.checks import check_finite_weights, check_has_parameters, check_same_architecture
from mcar_lib.data import LabeledImages, StepBatches, batches, split_off
from mcar_lib.models import last_conv_name
from mcar_lib.modes import evaluation_mode
from mcar_lib.repro import model_device
from mcar_lib.train import LossFn, SGDConfig, cross_entropy_loss, evaluate, fit

SELECTION_RULES = ("farthest_within_tolerance", "best_interior")


@dataclass(frozen=True)
class RepairResult:
    """A repaired model and how it was obtained.

    ``model`` is a new model in eval mode. ``t`` is the chosen point (path repair only); ``table`` records the
    defender-side selection (held-out accuracy per candidate t, or per number of pruned channels); ``curve``
    is the trained curve and ``bn_data`` the bonafide data its batch-norm statistics come from (path repair
    only: ``curve.at(t, bn_data=result.bn_data)`` gives the model at any other t); ``details`` holds anything
    else worth reporting (numbers of steps, pruned channels, ...).
    """

    model: nn.Module
    name: str
    t: float | None = None
    table: pd.DataFrame | None = None
    curve: Any = None
    bn_data: LabeledImages | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers

def _check_bonafide(bonafide: LabeledImages) -> None:
    if not isinstance(bonafide, LabeledImages):
        raise TypeError(f"bonafide must be a mcar_lib.data.LabeledImages (images in [0, 1] and labels), got "
                        f"{type(bonafide).__name__}; wrap tensors with data.LabeledImages(x, y)")
    if len(bonafide) == 0:
        raise ValueError("the bonafide data set is empty: repair needs some clean, correctly labelled images")


def _heldout_accuracy(model: nn.Module, data: LabeledImages, batch_size: int) -> float:
    return evaluate(model, batches(data, batch_size))["accuracy"]


def _trained(use_cache: bool, key: Mapping[str, Any], build: Callable[[], nn.Module],
             train: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``train(build())``, or the same through the checkpoint cache, keyed by every input in ``key``."""
    if not use_cache:
        return train(build())
    return cache.load_or_train(key, build, train)


# ----------------------------------------------------------------------------------------------- baselines

def finetune(model: nn.Module, bonafide: LabeledImages, *, steps: int, sgd: SGDConfig = SGDConfig(lr=0.01),
             batch_size: int = 128, seed: int = 0, loss_fn: LossFn = cross_entropy_loss,
             name: str = "fine-tuning", cache: bool = False) -> RepairResult:
    """Fine-tune a copy of ``model`` on the bonafide data for ``steps`` SGD steps.

    With ``cache=True`` the result goes through :func:`mcar_lib.cache.load_or_train`, keyed by every input
    here (the model's and the data's hashes, every hyper-parameter, the loss function).
    """
    check_has_parameters(model)
    _check_bonafide(bonafide)
    losses: list[float] = []

    def train_copy(net: nn.Module) -> nn.Module:
        trained, history = fit(net, StepBatches(bonafide, batch_size, steps, seed=seed), steps=steps, sgd=sgd,
                               loss_fn=loss_fn, show_progress=False)
        losses.extend(history.column("train_loss"))
        return trained

    key = {"name": name, "model": model, "bonafide": bonafide, "steps": steps, "sgd": sgd,
           "batch_size": batch_size, "seed": seed, "loss_fn": loss_fn}
    trained = _trained(cache, key, lambda: copy.deepcopy(model), train_copy)
    return RepairResult(trained.eval(), name,
                        details={"steps": steps, "train_loss": losses[-1] if losses else float("nan")})


def _fresh_copy(template: nn.Module, seed: int) -> nn.Module:
    net = copy.deepcopy(template)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_parameters") and module is not net:
                module.reset_parameters()
    return net


def train_from_scratch(template: nn.Module | Callable[[], nn.Module], bonafide: LabeledImages, *, steps: int,
                       sgd: SGDConfig = SGDConfig(lr=0.05), batch_size: int = 128, seed: int = 0,
                       cache: bool = False) -> RepairResult:
    """Throw the tampered weights away: train a freshly initialised model on the bonafide data alone.

    ``template`` is either a model (copied, every layer re-initialised with a seeded ``reset_parameters``,
    on the same device) or a zero-argument factory (called under ``torch.manual_seed(seed)``).
    """
    if isinstance(template, nn.Module):
        fresh = _fresh_copy(template, seed)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = template()
    return finetune(fresh, bonafide, steps=steps, sgd=sgd, batch_size=batch_size, seed=seed, name="from scratch",
                    cache=cache)


@torch.no_grad()
def noisy_model(a: nn.Module, b: nn.Module, bonafide: LabeledImages, *, scale: float = 0.5, centre: float = 0.5,
                seed: int = 0, batch_size: int = 256) -> RepairResult:
    """A random model near the segment between ``a`` and ``b``: ``w = (1−c)·w_a + c·w_b + scale·|w_b − w_a|·ε``
    with ``ε ~ N(0, I)`` per weight, then batch norm recomputed from the bonafide data.

    This is the reference code's "noisy model" control (c = 0.5, scale = 0.5), with its missing batch-norm
    recalibration added (:func:`mcar_lib.batchnorm.recalibrated`, from the bonafide data): a random model around
    the midpoint of the segment, with per-weight noise of ``scale`` times the endpoints' difference.
    """
    check_same_architecture(a, b)
    check_finite_weights(a, "endpoint a")
    check_finite_weights(b, "endpoint b")
    _check_bonafide(bonafide)
    if scale < 0:
        raise ValueError(f"scale must be non-negative, got {scale}")
    net = copy.deepcopy(a)
    params_b = dict(b.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        wa, wb = p.detach(), params_b[name].detach().to(p.device)
        noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        p.copy_((1.0 - centre) * wa + centre * wb + scale * (wb - wa).abs() * noise)
    net = recalibrated(net, bonafide, batch_size=batch_size)
    return RepairResult(net, "noisy model", details={"scale": scale, "centre": centre, "seed": seed})


# --------------------------------------------------------------------------------------------- fine-pruning

@dataclass(frozen=True)
class _PruneSite:
    conv: str
    norm: str | None  # the batch norm that reads the convolution's output directly, if any


def _find_prune_site(model: nn.Module, conv_name: str, x: Tensor) -> _PruneSite:
    """Find the batch norm (if any) that takes ``conv_name``'s output as its input, by tracing one forward."""
    modules = dict(model.named_modules())
    if conv_name not in modules or not isinstance(modules[conv_name], nn.Conv2d):
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"{conv_name!r} is not an nn.Conv2d of this model; its convolutions are {convs}")
    produced: dict[str, Tensor] = {}
    reader: list[str] = []
    handles = [modules[conv_name].register_forward_hook(lambda m, i, o: produced.setdefault("out", o))]
    for name, module in modules.items():
        if isinstance(module, nn.BatchNorm2d):
            def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor, name: str = name) -> None:
                if "out" in produced and inputs[0] is produced["out"] and not reader:
                    reader.append(name)
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), evaluation_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return _PruneSite(conv_name, reader[0] if reader else None)


@torch.no_grad()
def _channel_activity(model: nn.Module, site: _PruneSite, data: LabeledImages, batch_size: int) -> Tensor:
    """Mean ReLU activation per channel of the pruned layer (after its batch norm, if any) on clean data."""
    modules = dict(model.named_modules())
    layer = modules[site.norm or site.conv]
    total: list[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: total.append(F.relu(o).mean(dim=(0, 2, 3)) * len(o)))
    device = model_device(model)
    try:
        with evaluation_mode(model):
            for x, _ in batches(data, batch_size):
                model(x.to(device))
    finally:
        handle.remove()
    return torch.stack(total).sum(0) / len(data)


@torch.no_grad()
def _zero_channels_(model: nn.Module, site: _PruneSite, channels: Tensor) -> None:
    """Make ``channels`` of the site output exactly zero (conv weights/bias and the following BN's affine)."""
    modules = dict(model.named_modules())
    conv = modules[site.conv]
    conv.weight[channels] = 0.0
    if conv.bias is not None:
        conv.bias[channels] = 0.0
    if site.norm is not None:
        norm = modules[site.norm]
        norm.weight[channels] = 0.0
        norm.bias[channels] = 0.0


def fine_prune(model: nn.Module, bonafide: LabeledImages, *, layer: str | None = None, tolerance: float = 4.0,
               prune_step: int = 1, holdout_fraction: float = 0.2, steps: int = 300,
               sgd: SGDConfig = SGDConfig(lr=0.01), batch_size: int = 128, seed: int = 0,
               cache: bool = False) -> RepairResult:
    """Fine-pruning (Liu et al. 2018) on a copy of ``model``.

    1. Rank the channels of ``layer`` (default: the last convolution) by their mean activation on bonafide
       data; backdoor neurons tend to be dormant on clean inputs.
    2. Prune the least active channels, ``prune_step`` at a time, while the accuracy on a held-out slice of
       the bonafide data stays within ``tolerance`` points of the unpruned model's.
    3. Fine-tune on the rest of the bonafide data with the pruned channels held at zero.

    ``details["pruned_only"]`` is the pruned model before fine-tuning (to tell the two steps apart).

    Pruning zeroes the convolution's filters and, where a batch norm reads the convolution directly, its
    scale and shift, so the pruned channels output exactly zero. (In a residual block the skip connection
    still carries information around a pruned convolution.)
    """
    check_finite_weights(model)
    _check_bonafide(bonafide)
    if tolerance < 0:
        raise ValueError(f"tolerance is an accuracy drop in percentage points and must be >= 0, got {tolerance}")
    rest, held = split_off(bonafide, holdout_fraction, seed=seed)
    device = model_device(model)
    conv_name = layer or last_conv_name(model)
    net = copy.deepcopy(model).eval()
    site = _find_prune_site(net, conv_name, rest.x[:2].to(device))
    activity = _channel_activity(net, site, rest, batch_size)
    order = torch.argsort(activity)  # least active first
    n_channels = len(order)
    base = _heldout_accuracy(net, held, batch_size)
    rows = [{"n_pruned": 0, "heldout_accuracy": base}]
    n_pruned = 0
    for k in range(prune_step, n_channels, prune_step):
        trial = copy.deepcopy(net)
        _zero_channels_(trial, site, order[:k])
        acc = _heldout_accuracy(trial, held, batch_size)
        rows.append({"n_pruned": k, "heldout_accuracy": acc})
        if acc < base - tolerance:
            break
        n_pruned = k
    pruned = order[:n_pruned]
    _zero_channels_(net, site, pruned)
    pruned_only = copy.deepcopy(net)

    def masked_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        _zero_channels_(m, site, pruned)  # undo what the last optimizer step did to the pruned channels
        return cross_entropy_loss(m, x, y)

    tuned = finetune(net, rest, steps=steps, sgd=sgd, batch_size=batch_size, seed=seed, loss_fn=masked_loss,
                     name="fine-pruning", cache=cache).model
    _zero_channels_(tuned, site, pruned)
    return RepairResult(tuned, "fine-pruning", table=pd.DataFrame(rows),
                        details={"layer": conv_name, "norm": site.norm, "n_pruned": n_pruned,
                                 "n_channels": n_channels, "pruned_channels": pruned.tolist(), "steps": steps,
                                 "pruned_only": pruned_only})


# --------------------------------------------------------------------------------------------- path repair

def select_t(table: pd.DataFrame, *, rule: str = "farthest_within_tolerance", tolerance: float = 2.0,
             min_distance: float = 0.1, column: str = "heldout_accuracy") -> float:
    """Pick t from a defender-side table (columns ``t`` and ``column``) without any test data.

    * ``"farthest_within_tolerance"``: among candidates whose accuracy is within ``tolerance`` points of the
      best candidate's (endpoints included), the one farthest from both endpoints (``min(t, 1 − t)`` largest;
      ties go to the more accurate one).
    * ``"best_interior"``: the most accurate candidate with ``min(t, 1 − t) >= min_distance`` (ties go to the
      one farther from the endpoints).
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {SELECTION_RULES}")
    if table.empty or "t" not in table or column not in table:
        raise ValueError(f"the selection table needs columns 't' and {column!r} and at least one row")
    distance = table["t"].map(lambda t: round(min(t, 1.0 - t), 9))  # 0.2 and 0.8 are equally far
    if rule == "farthest_within_tolerance":
        ok = table[table[column] >= table[column].max() - tolerance]
        key = pd.DataFrame({"d": distance[ok.index], "acc": ok[column]})
    else:
        ok = table[distance >= min_distance - 1e-12]
        if ok.empty:
            raise ValueError(f"no candidate t has min(t, 1 - t) >= {min_distance}; lower min_distance or add "
                             "interior candidates")
        key = pd.DataFrame({"acc": ok[column], "d": distance[ok.index]})
    best = key.sort_values(list(key.columns), ascending=False, kind="mergesort").index[0]
    return float(table.loc[best, "t"])


def default_ts(n: int = 11) -> list[float]:
    """``n`` evenly spaced t from 0 to 1, as exact decimals (0.1, not float32's 0.10000000149)."""
    if n < 2:
        raise ValueError(f"a grid of t needs at least the two endpoints, got n = {n}")
    return [round(i / (n - 1), 12) for i in range(n)]


def train_path(a: nn.Module, b: nn.Module, data: LabeledImages, *, kind: curves.CurveKind = "bezier",
               n_bends: int = 1, steps: int = 1000,
               sgd: SGDConfig = SGDConfig(lr=0.03, weight_decay=5e-4, schedule="cosine"), batch_size: int = 128,
               seed: int = 0, loss_fn: LossFn = cross_entropy_loss, cache: bool = False) -> curves.Curve:
    """A curve between ``a`` and ``b`` trained on ``data`` for ``steps`` steps (see
    :func:`mcar_lib.curves.fit_curve`); with ``cache=True`` through the checkpoint cache, keyed by every input."""
    check_same_architecture(a, b)
    _check_bonafide(data)

    def train_curve(curve: nn.Module) -> nn.Module:
        trained, _ = curves.fit_curve(curve, StepBatches(data, batch_size, steps, seed=seed),  # type: ignore[arg-type]
                                      steps=steps, sgd=sgd, loss_fn=loss_fn, seed=seed, show_progress=False)
        return trained

    key = {"name": f"path-{kind}-{n_bends}", "a": a, "b": b, "data": data, "steps": steps, "sgd": sgd,
           "batch_size": batch_size, "seed": seed, "loss_fn": loss_fn}
    return _trained(cache, key, lambda: curves.Curve.between(a, b, kind=kind, n_bends=n_bends),  # type: ignore[return-value]
                    train_curve)


def heldout_table(curve: curves.Curve, held: LabeledImages, bn_data: LabeledImages,
                  ts: Sequence[float]) -> pd.DataFrame:
    """Held-out accuracy (%) and loss (nats) of the curve's model at each t (BN statistics from ``bn_data``):
    the defender's only view of the path."""
    rows = []
    for t in ts:
        result = evaluate(curve.at(float(t), bn_data=bn_data), batches(held, 512))
        rows.append({"t": float(t), "heldout_accuracy": result["accuracy"], "heldout_loss": result["loss"]})
    return pd.DataFrame(rows)


def path_repair(a: nn.Module, b: nn.Module, bonafide: LabeledImages, *, kind: curves.CurveKind = "bezier",
                n_bends: int = 1, steps: int = 1000,
                sgd: SGDConfig = SGDConfig(lr=0.03, weight_decay=5e-4, schedule="cosine"),
                batch_size: int = 128, holdout_fraction: float = 0.2, ts: Sequence[float] | None = None,
                select: str = "farthest_within_tolerance", tolerance: float = 2.0, min_distance: float = 0.1,
                seed: int = 0, loss_fn: LossFn = cross_entropy_loss, cache: bool = False) -> RepairResult:
    """Repair by path connection (Zhao et al. 2020): train a curve between ``a`` and ``b`` on bonafide data,
    then return the model at a t chosen on a held-out slice of the bonafide data (see :func:`select_t`).

    ``a`` and ``b`` are two tampered models, or a tampered model and its fine-tuned copy (see
    :func:`one_model_endpoints`). A ``holdout_fraction`` of the bonafide set is kept aside for choosing t;
    the curve is trained, and batch-norm statistics at each t are recomputed, on the rest. The endpoints stay
    fixed; only the bend(s) are trained. The returned ``table`` has, per candidate t, the held-out accuracy
    and loss the choice was based on. With ``cache=True`` the trained curve goes through the checkpoint
    cache (see :func:`train_path`).
    """
    _check_bonafide(bonafide)
    rest, held = split_off(bonafide, holdout_fraction, seed=seed)
    trained = train_path(a, b, rest, kind=kind, n_bends=n_bends, steps=steps, sgd=sgd, batch_size=batch_size,
                         seed=seed, loss_fn=loss_fn, cache=cache)
    grid = [float(t) for t in (ts if ts is not None else default_ts(11))]
    table = heldout_table(trained, held, rest, grid)
    t_star = select_t(table, rule=select, tolerance=tolerance, min_distance=min_distance)
    model = trained.at(t_star, bn_data=rest)
    return RepairResult(model, f"path repair ({kind})", t=t_star, table=table, curve=trained, bn_data=rest,
                        details={"steps": steps, "rule": select, "tolerance": tolerance, "n_train": len(rest),
                                 "n_heldout": len(held)})


def one_model_endpoints(tampered: nn.Module, bonafide: LabeledImages, *, steps: int,
                        sgd: SGDConfig = SGDConfig(lr=0.01), batch_size: int = 128, holdout_fraction: float = 0.2,
                        seed: int = 0, cache: bool = False) -> tuple[nn.Module, nn.Module]:
    """The one-tampered-model variant's endpoints: ``(tampered, tampered fine-tuned on bonafide data)``.

    Pass them to :func:`path_repair` with the same ``bonafide``, ``holdout_fraction`` and ``seed``: the copy is
    fine-tuned only on the part of the bonafide set that the path is trained on, so the held-out slice that
    chooses t stays unseen by both endpoints (otherwise the fine-tuned end would look better than it is and
    the rule would drift towards it).
    """
    rest, _ = split_off(bonafide, holdout_fraction, seed=seed)
    tuned = finetune(tampered, rest, steps=steps, sgd=sgd, batch_size=batch_size, seed=seed, cache=cache).model
    return tampered, tuned
