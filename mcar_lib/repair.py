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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcar_lib import cache, curves
from mcar_lib.batchnorm import recalibrated
from mcar_lib.checks import check_finite_weights, check_has_parameters, check_same_architecture
from mcar_lib.data import Augmented, LabeledImages, StepBatches, batches, split_off
from mcar_lib.data import folds as data_folds
from mcar_lib.models import last_conv_name
from mcar_lib.modes import evaluation_mode
from mcar_lib.repro import model_device
from mcar_lib.train import LossFn, Schedule, SGDConfig, cross_entropy_loss, evaluate, fit


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


PruneCriterion = Literal["activation", "weight_norm"]
PRUNE_NAMES = {"activation": "fine-pruning", "weight_norm": "filter pruning + fine-tuning"}


@torch.no_grad()
def _filter_norms(model: nn.Module, site: _PruneSite) -> Tensor:
    """L1 norm of each filter of the pruned convolution (Li et al. 2017 rank filters by it)."""
    weight = dict(model.named_modules())[site.conv].weight
    return weight.abs().flatten(1).sum(1)


def fine_prune(model: nn.Module, bonafide: LabeledImages, *, criterion: PruneCriterion = "activation",
               layer: str | None = None, tolerance: float = 4.0, prune_step: int = 1, steps: int = 300,
               sgd: SGDConfig = SGDConfig(lr=0.01), batch_size: int = 128, seed: int = 0,
               cache: bool = False) -> RepairResult:
    """Pruning followed by fine-tuning, on a copy of ``model``; both steps see all of the bonafide data.

    1. Rank the channels of ``layer`` (default: the last convolution): ``criterion="activation"`` by their mean
       activation on bonafide data (fine-pruning, Liu et al. 2018: backdoor neurons tend to be dormant on clean
       inputs); ``"weight_norm"`` by the L1 norm of their filters (filter pruning, Li et al. 2017, the pruning
       baseline of Zhao et al.).
    2. Prune the lowest-ranked channels, ``prune_step`` at a time, while the accuracy on the bonafide data stays
       within ``tolerance`` points of the unpruned model's (pruning trains nothing, so the bonafide images are
       still unseen by the model being judged).
    3. Fine-tune on the bonafide data with the pruned channels held at zero.

    ``details["pruned_only"]`` is the pruned model before fine-tuning (to tell the two steps apart).

    Pruning zeroes the convolution's filters and, where a batch norm reads the convolution directly, its
    scale and shift, so the pruned channels output exactly zero. (In a residual block the skip connection
    still carries information around a pruned convolution.)
    """
    check_finite_weights(model)
    _check_bonafide(bonafide)
    if criterion not in PRUNE_NAMES:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {tuple(PRUNE_NAMES)}")
    if tolerance < 0:
        raise ValueError(f"tolerance is an accuracy drop in percentage points and must be >= 0, got {tolerance}")
    name = PRUNE_NAMES[criterion]
    device = model_device(model)
    conv_name = layer or last_conv_name(model)
    net = copy.deepcopy(model).eval()
    site = _find_prune_site(net, conv_name, bonafide.x[:2].to(device))
    score = (_channel_activity(net, site, bonafide, batch_size) if criterion == "activation"
             else _filter_norms(net, site))
    order = torch.argsort(score)  # lowest first
    n_channels = len(order)
    base = _heldout_accuracy(net, bonafide, batch_size)
    rows = [{"n_pruned": 0, "bonafide_accuracy": base}]
    n_pruned = 0
    for k in range(prune_step, n_channels, prune_step):
        trial = copy.deepcopy(net)
        _zero_channels_(trial, site, order[:k])
        acc = _heldout_accuracy(trial, bonafide, batch_size)
        rows.append({"n_pruned": k, "bonafide_accuracy": acc})
        if acc < base - tolerance:
            break
        n_pruned = k
    pruned = order[:n_pruned]
    _zero_channels_(net, site, pruned)
    pruned_only = copy.deepcopy(net)

    def masked_loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        _zero_channels_(m, site, pruned)  # undo what the last optimizer step did to the pruned channels
        return cross_entropy_loss(m, x, y)

    tuned = finetune(net, bonafide, steps=steps, sgd=sgd, batch_size=batch_size, seed=seed, loss_fn=masked_loss,
                     name=name, cache=cache).model
    _zero_channels_(tuned, site, pruned)
    return RepairResult(tuned, name, table=pd.DataFrame(rows),
                        details={"layer": conv_name, "norm": site.norm, "n_pruned": n_pruned, "criterion": criterion,
                                 "n_channels": n_channels, "pruned_channels": pruned.tolist(), "steps": steps,
                                 "pruned_only": pruned_only})


# --------------------------------------------------------------------------------------------- path repair

RULES = ("farthest_within_tolerance", "best_interior")
SelectionRule = Literal["farthest_within_tolerance", "best_interior"]


def select_t(table: pd.DataFrame, *, rule: SelectionRule = "farthest_within_tolerance", tolerance: float = 3.0,
             min_distance: float = 0.1, column: str = "heldout_accuracy") -> float:
    """Pick t from a defender-side table (columns ``t`` and ``column``) without any test data.

    * ``"farthest_within_tolerance"``: among candidates whose accuracy is within ``tolerance`` points of the
      best candidate's (endpoints included), the one farthest from both endpoints (``min(t, 1 − t)`` largest;
      ties go to the more accurate one).
    * ``"best_interior"``: the most accurate candidate with ``min(t, 1 − t) >= min_distance`` (ties go to the
      one farther from the endpoints).
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
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


def default_ts(n: int = 11) -> tuple[float, ...]:
    """``n`` evenly spaced t from 0 to 1, as exact decimals (0.1, not float32's 0.10000000149)."""
    if n < 2:
        raise ValueError(f"a grid of t needs at least the two endpoints, got n = {n}")
    return tuple(round(i / (n - 1), 12) for i in range(n))


@dataclass(frozen=True)
class PathTraining:
    """How a repair path is trained on the bonafide data: the curve, the budget in SGD steps (the same for every
    data-set size, as the reference code's tiling did), and the explicit L2 penalty on w(t)."""

    kind: curves.CurveKind = "bezier"
    n_bends: int = 1
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.3
    weight_decay: float = 1e-2
    schedule: Schedule = "cosine"
    augment: bool = False  # random 2-pixel shifts and horizontal flips of the bonafide images

    def __post_init__(self) -> None:
        if self.kind not in curves.CURVE_KINDS:
            raise ValueError(f"kind must be one of {curves.CURVE_KINDS}, got {self.kind!r}")
        if self.n_bends < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"n_bends, steps and batch_size must be positive, got {self.n_bends}, {self.steps}, "
                             f"{self.batch_size}")
        SGDConfig(lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule)  # checks the values

    @property
    def sgd(self) -> SGDConfig:
        return SGDConfig(lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule)


@dataclass(frozen=True)
class TSelection:
    """How the defender picks t without test data or the trigger.

    ``folds >= 2``: k-fold cross-validation on the bonafide set (the paper used five folds): each fold trains a
    path on the other folds and scores every candidate t on its own fold; the scores are pooled over all N
    images; the final path is then trained on all N images, so the repair sees exactly the data the baselines
    see. ``folds = 0``: a single held-out slice (``holdout_fraction``) scores the candidates and the path is
    trained on the rest. Either way :func:`select_t` applies ``rule`` with ``tolerance`` (points of accuracy).
    """

    folds: int = 5
    holdout_fraction: float = 0.2
    ts: tuple[float, ...] = default_ts(11)
    rule: SelectionRule = "farthest_within_tolerance"
    tolerance: float = 3.0
    min_distance: float = 0.1

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (one held-out slice) or at least 2, got {self.folds}")
        if self.folds == 0 and not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.rule not in RULES:
            raise ValueError(f"unknown selection rule {self.rule!r}; choose one of {RULES}")
        if len(self.ts) < 2 or any(not 0 <= t <= 1 for t in self.ts):
            raise ValueError(f"ts must hold at least two values in [0, 1], got {self.ts}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance is in points of accuracy and must be >= 0, got {self.tolerance}")


def train_path(a: nn.Module, b: nn.Module, data: LabeledImages, *, training: PathTraining = PathTraining(),
               seed: int = 0, loss_fn: LossFn = cross_entropy_loss, cache: bool = False) -> curves.Curve:
    """A curve between ``a`` and ``b`` trained on ``data`` (see :func:`mcar_lib.curves.fit_curve`); with
    ``cache=True`` through the checkpoint cache, keyed by every input."""
    check_same_architecture(a, b)
    _check_bonafide(data)

    def train_curve(curve: nn.Module) -> nn.Module:
        batches_: Iterable = StepBatches(data, training.batch_size, training.steps, seed=seed)
        if training.augment:
            batches_ = Augmented(batches_, seed=seed)
        trained, _ = curves.fit_curve(curve, batches_, steps=training.steps, sgd=training.sgd,  # type: ignore[arg-type]
                                      loss_fn=loss_fn, seed=seed, show_progress=False)
        return trained

    key = {"name": f"path-{training.kind}-{training.n_bends}", "a": a, "b": b, "data": data, "training": training,
           "seed": seed, "loss_fn": loss_fn}
    build = lambda: curves.Curve.between(a, b, kind=training.kind, n_bends=training.n_bends)  # noqa: E731
    return _trained(cache, key, build, train_curve)  # type: ignore[return-value]


def heldout_table(curve: curves.Curve, held: LabeledImages, bn_data: LabeledImages,
                  ts: Sequence[float]) -> pd.DataFrame:
    """Held-out accuracy (%), loss (nats) and number of images of the curve's model at each t (BN statistics
    from ``bn_data``): the defender's only view of the path."""
    rows = []
    for t in ts:
        result = evaluate(curve.at(float(t), bn_data=bn_data), batches(held, 512))
        rows.append({"t": float(t), "heldout_accuracy": result["accuracy"], "heldout_loss": result["loss"],
                     "n": len(held)})
    return pd.DataFrame(rows)


#: The second endpoint of a path: a model, or a function that makes it from the data it may see (the one-model
#: variant fine-tunes the tampered model on exactly the data the path is trained on).
SecondEndpoint = nn.Module | Callable[[LabeledImages], nn.Module]


def _endpoint(b: SecondEndpoint, data: LabeledImages) -> nn.Module:
    return b if isinstance(b, nn.Module) else b(data)


def cross_validated_table(a: nn.Module, b: SecondEndpoint, bonafide: LabeledImages, *, folds: int = 5,
                          ts: Sequence[float] = default_ts(11), training: PathTraining = PathTraining(),
                          seed: int = 0, loss_fn: LossFn = cross_entropy_loss, cache: bool = False) -> pd.DataFrame:
    """k-fold cross-validated accuracy of every candidate t: one path per fold, trained on the other folds and
    scored on its own (BN statistics from its training folds). Columns: ``t``, ``heldout_accuracy`` (correct
    answers pooled over all N images, %), ``heldout_loss`` (nats), ``fold_sd`` (standard deviation of the
    folds' accuracies, points)."""
    tables = []
    for i, (rest, held) in enumerate(data_folds(bonafide, folds, seed=seed)):
        curve = train_path(a, _endpoint(b, rest), rest, training=training, seed=seed + i, loss_fn=loss_fn, cache=cache)
        tables.append(heldout_table(curve, held, rest, ts).assign(fold=i))
    every = pd.concat(tables, ignore_index=True)
    every["correct"] = every["heldout_accuracy"] * every["n"] / 100.0
    every["loss_sum"] = every["heldout_loss"] * every["n"]
    pooled = every.groupby("t", sort=True).agg(correct=("correct", "sum"), loss_sum=("loss_sum", "sum"),
                                                n=("n", "sum"), fold_sd=("heldout_accuracy", "std"))
    return pd.DataFrame({"t": pooled.index.to_numpy(dtype=float),
                         "heldout_accuracy": (100.0 * pooled["correct"] / pooled["n"]).to_numpy(),
                         "heldout_loss": (pooled["loss_sum"] / pooled["n"]).to_numpy(),
                         "fold_sd": pooled["fold_sd"].to_numpy()})


def path_repair(a: nn.Module, b: SecondEndpoint, bonafide: LabeledImages, *, training: PathTraining = PathTraining(),
                selection: TSelection = TSelection(), seed: int = 0, loss_fn: LossFn = cross_entropy_loss,
                cache: bool = False) -> RepairResult:
    """Repair by path connection (Zhao et al. 2020): train a curve between ``a`` and ``b`` on bonafide data and
    return its model at a t chosen without test data or the trigger (:class:`TSelection`).

    ``a`` and ``b`` are two tampered models; or ``b`` makes the second endpoint from the data it may see (the
    one-model variant: :func:`finetuned_endpoint`), so that in cross-validation no fold is scored by an endpoint
    that was fine-tuned on it. Only the bend(s) are trained; batch-norm statistics of the returned model
    come from the data the final path was trained on. The returned ``table`` holds, per candidate t, the
    defender-side accuracy the choice was based on; ``curve`` gives the model at any other t.
    """
    check_has_parameters(a, "endpoint a")
    if isinstance(b, nn.Module):
        check_has_parameters(b, "endpoint b")
    _check_bonafide(bonafide)
    if selection.folds:
        table = cross_validated_table(a, b, bonafide, folds=selection.folds, ts=selection.ts, training=training,
                                      seed=seed, loss_fn=loss_fn, cache=cache)
        train_data = bonafide
    else:
        train_data, held = split_off(bonafide, selection.holdout_fraction, seed=seed)
    end = _endpoint(b, train_data)
    trained = train_path(a, end, train_data, training=training, seed=seed, loss_fn=loss_fn, cache=cache)
    if not selection.folds:
        table = heldout_table(trained, held, train_data, selection.ts)
    t_star = select_t(table, rule=selection.rule, tolerance=selection.tolerance, min_distance=selection.min_distance)
    model = trained.at(t_star, bn_data=train_data)
    return RepairResult(model, f"path repair ({training.kind})", t=t_star, table=table, curve=trained,
                        bn_data=train_data,
                        details={"training": training, "selection": selection, "n_train": len(train_data),
                                 "endpoint_b": end})


def finetuned_endpoint(tampered: nn.Module, *, steps: int, sgd: SGDConfig = SGDConfig(lr=0.01),
                       batch_size: int = 128, seed: int = 0, cache: bool = False) -> Callable[[LabeledImages], nn.Module]:
    """The one-tampered-model variant's second endpoint: ``tampered`` fine-tuned (gently, by default) on the
    data it is given. Pass it as ``b`` to :func:`path_repair`: each cross-validation fold, and the final path,
    gets an endpoint fine-tuned on its own training data only."""

    def make(data: LabeledImages) -> nn.Module:
        return finetune(tampered, data, steps=steps, sgd=sgd, batch_size=batch_size, seed=seed, cache=cache).model

    return make


# ------------------------------------------------------------------------------------- one call for users

@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` did, in the defender's own terms (no test data, no trigger).

    ``t`` is the chosen point of the path; ``accuracy_at_t`` its cross-validated accuracy on the bonafide data
    (%); ``endpoint_accuracy`` the better endpoint's (%); ``cost`` the difference (points of accuracy given up
    to move away from the tampered models, as estimated on the bonafide data); ``table`` the estimate for every
    candidate t; ``second_endpoint`` says where the other end of the path came from.
    """

    t: float
    accuracy_at_t: float
    endpoint_accuracy: float
    cost: float
    n_bonafide: int
    second_endpoint: str
    table: pd.DataFrame

    def __str__(self) -> str:
        return (f"path repair: t = {self.t:g}, cross-validated accuracy {self.accuracy_at_t:.1f} % (endpoints "
                f"{self.endpoint_accuracy:.1f} %, cost {self.cost:.1f} points) on {self.n_bonafide} bonafide images; "
                f"second endpoint: {self.second_endpoint}")


def repair(tampered: nn.Module | Sequence[nn.Module], bonafide: LabeledImages, *,
           training: PathTraining = PathTraining(), selection: TSelection = TSelection(),
           second_endpoint_steps: int = 500, seed: int = 0, cache: bool = False) -> tuple[nn.Module, RepairReport]:
    """Repair one or two tampered models with a little clean data; return ``(repaired_model, report)``.

    ``tampered`` is a model, or a pair of models of the same architecture (any ``nn.Module``: a torchvision ResNet,
    the book's CNNs, ...), in eval mode on the device to use. ``bonafide`` holds clean, correctly labelled
    images in [0, 1] (N×C×H×W) with their labels: ``mcar_lib.data.LabeledImages(x, y)``, or
    :func:`mcar_lib.data.from_dataset` of a torchvision data set such as ``ImageFolder(root, transform=ToTensor())``.
    With one model the second endpoint is a copy fine-tuned gently on the bonafide data (the paper's
    one-model variant). A path between the two is trained on the bonafide data (:class:`PathTraining`), and the
    point t is chosen by cross-validation on the same data (:class:`TSelection`): the farthest t from both
    tampered models whose accuracy stays within ``selection.tolerance`` points of the best. The defaults are the
    book's settings. Nothing given is modified.
    """
    models_ = [tampered] if isinstance(tampered, nn.Module) else list(tampered)
    if len(models_) not in (1, 2):
        raise ValueError(f"repair takes one or two tampered models, got {len(models_)}")
    for i, model in enumerate(models_):
        check_has_parameters(model, f"tampered model {i + 1}")
        check_finite_weights(model, f"tampered model {i + 1}")
    _check_bonafide(bonafide)
    b: SecondEndpoint
    if len(models_) == 2:
        check_same_architecture(models_[0], models_[1], labels=("1", "2"))
        a, b = models_
        second = "the second tampered model"
    else:
        a = models_[0]
        b = finetuned_endpoint(a, steps=second_endpoint_steps, sgd=SGDConfig(lr=0.01, weight_decay=5e-4),
                               batch_size=training.batch_size, seed=seed, cache=cache)
        second = f"the tampered model fine-tuned for {second_endpoint_steps} steps on the bonafide data"
    result = path_repair(a, b, bonafide, training=training, selection=selection, seed=seed, cache=cache)
    table = result.table
    assert table is not None and result.t is not None
    column = table.set_index("t")["heldout_accuracy"]
    ends = float(column[[t for t in column.index if t in (0.0, 1.0)]].max()) if {0.0, 1.0} & set(column.index) \
        else float(column.max())
    at_t = float(column[result.t])
    report = RepairReport(t=result.t, accuracy_at_t=at_t, endpoint_accuracy=ends, cost=ends - at_t,
                          n_bonafide=len(bonafide), second_endpoint=second, table=table)
    return result.model, report
