"""The experiment layer: the one place that turns a profile into the data, models, curves and tables of the chapters.

Chapters stay thin by asking for *what* they need ("the regular endpoint for seed 0", "the robust-loss curve
between the regular and the adversarial network", "the flatness of this model") and getting it from the
checkpoint cache, trained on first use. Every cached object is keyed by the inputs that produce it, passed to
:mod:`mcar_lib.cache` as they are (models, data sets, settings sections, loss functions, seeds): no chapter
builds a key by hand, and a change to any input trains anew. Chapters that study the same networks (4, 5 and 6)
get exactly the models the others measured, and only the first chapter to ask pays for training.

Pairs of endpoints are named ``"regular-regular"``, ``"regular-adversarial"`` and ``"adversarial-adversarial"``; a
pair's first endpoint is t = 0. Member ``i`` of a kind is trained from seed ``seed + i`` (two members of one kind
are independent networks). Batch-norm statistics along a path come from the defender's data (:func:`bn_data`),
never from the test set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from mcar_lib import (adversarial, attacks, awp, backdoor, cache, curves, faults, flatness, hessian, models, paths, repair,
                      repro, train)
from mcar_lib.data import LabeledImages, Splits, batches, load_splits, loader, take
from mcar_lib.profiles import Profile

Kind = Literal["regular", "adversarial"]
Pair = Literal["regular-regular", "regular-adversarial", "adversarial-adversarial"]
CurveLoss = Literal["standard", "robust"]
TrainingMethod = Literal["AT", "AWP"]
#: Each pair's endpoints as (kind, member): t = 0 first.
PAIRS: dict[str, tuple[tuple[Kind, int], tuple[Kind, int]]] = {
    "regular-regular": (("regular", 0), ("regular", 1)),
    "regular-adversarial": (("regular", 0), ("adversarial", 0)),
    "adversarial-adversarial": (("adversarial", 0), ("adversarial", 1)),
}
CURVE_LOSSES = ("standard", "robust")


# ------------------------------------------------------------------------------------- cached building blocks

def cached_model(name: str, inputs: Mapping[str, Any], build: Callable[[], nn.Module],
                 fit: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``fit(build())`` through the checkpoint cache, keyed by ``name`` and every input in ``inputs``."""
    return cache.load_or_train({"name": name, **inputs}, build, fit)


def cached_table(name: str, inputs: Mapping[str, Any], compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """A numeric table through the cache (stored as float64 columns), keyed by ``name`` and ``inputs``."""

    def columns() -> dict[str, torch.Tensor]:
        table = compute()
        return {str(col): torch.tensor(table[col].to_numpy(dtype=float), dtype=torch.float64) for col in table.columns}

    stored = cache.cached_tensors({"name": name, **inputs}, columns)
    return pd.DataFrame({col: values.numpy() for col, values in stored.items()})


def _cuda_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def _architecture(cfg: Profile) -> dict[str, Any]:
    """The architecture part of a key: its name, arguments and a hash of its code (built without weights)."""
    kwargs = cfg.architecture_kwargs()
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # building initialises: leave the RNG alone
        skeleton = models.build(cfg.model, **kwargs)
    return {"model": cfg.model, "kwargs": kwargs, "code": cache.architecture_id(skeleton)}


def _seeded_build(cfg: Profile, seed: int, device: torch.device) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return models.build(cfg.model, **cfg.architecture_kwargs()).to(device)

    return build


# ------------------------------------------------------------------------------------ data and threat model

def splits(cfg: Profile, seed: int) -> Splits:
    """The profile's seeded, disjoint train / bonafide pool / test splits."""
    return load_splits(cfg.dataset, n_train=cfg.n_train, n_bonafide=cfg.n_bonafide_pool, n_test=cfg.n_test, seed=seed)


def bn_data(cfg: Profile, splits: Splits) -> LabeledImages:
    """The defender's images for batch-norm statistics along a path (``cfg.n_bn_images`` of the bonafide pool)."""
    return take(splits.bonafide, min(cfg.n_bn_images, len(splits.bonafide)), seed=splits.seed)


def eval_data(cfg: Profile, splits: Splits) -> LabeledImages:
    """The test images that are attacked at every point of a path (the first ``n_eval`` of the test split)."""
    return splits.test.subset(slice(0, min(cfg.robustness.n_eval, len(splits.test))))


def eval_attack(cfg: Profile) -> attacks.PGD:
    """The evaluation attack of the threat model: PGD-``eval_steps`` with a random start, eval mode."""
    rb = cfg.robustness
    return attacks.PGD(eps=rb.eps, steps=rb.eval_steps, norm=rb.norm)


def strong_attack(cfg: Profile) -> attacks.PGD:
    """A converged attack for the endpoints: PGD with ``strong_steps`` steps and ``strong_restarts`` restarts
    (the strongest result per image is kept). If its robust accuracy is close to the evaluation attack's, the
    cheaper attack can be trusted along the paths."""
    rb = cfg.robustness
    return attacks.PGD(eps=rb.eps, steps=rb.strong_steps, restarts=rb.strong_restarts, norm=rb.norm)


def repetition_seed(seed: int, repetition: int) -> int:
    """The seed of repetition ``repetition`` of a chapter run with ``seed``: ``2·(seed + r)``, so that the pairs
    of networks of chapters 1, 3 and 4 (members ``2·(seed + r)`` and ``2·(seed + r) + 1``) are the same networks,
    and a run with the next seed reuses every repetition but one from the cache."""
    return 2 * (seed + repetition)


def training_loss(cfg: Profile, *, bn: attacks.BNMode = "eval") -> adversarial.RobustLoss:
    """The adversarial-training loss of the profile (``robustness.at_method``): PGD-``at_steps`` or FGSM-RS.

    ``bn="eval"`` for training a network (Madry et al.), ``bn="batch"`` for training a curve (see
    :func:`mcar_lib.adversarial.pgd_loss`).
    """
    rb = cfg.robustness
    if rb.at_method == "pgd":
        return adversarial.pgd_loss(rb.eps, steps=rb.at_steps, norm=rb.norm, bn=bn)
    return adversarial.fgsm_rs_loss(rb.eps, bn=bn)


def curve_loss(cfg: Profile, loss: CurveLoss) -> train.LossFn:
    """The loss a curve is trained with: plain cross-entropy, or the endpoints' adversarial-training loss with
    batch statistics at the sampled t."""
    if loss == "standard":
        return train.cross_entropy_loss
    if loss == "robust":
        return training_loss(cfg, bn="batch")
    raise ValueError(f"unknown curve loss {loss!r}; choose one of {CURVE_LOSSES}")


# ---------------------------------------------------------------------------------------------- endpoints

def trained_model(cfg: Profile, splits: Splits, *, seed: int, train_data: LabeledImages | None = None,
                  epochs: int | None = None, lr: float | None = None, device: str | torch.device = "auto",
                  show_progress: bool = False) -> nn.Module:
    """A normally trained ``cfg.model`` from the cache, trained on first use.

    Trains on ``splits.train`` (or ``train_data``, e.g. a poisoned copy) with SGD as set in ``cfg.endpoints``
    (``epochs``/``lr`` override them), batches of ``cfg.batch_size`` shuffled with ``seed``. ``seed`` also fixes
    the initialisation, so two seeds give two independently trained networks. The caller's random state is
    left as it was. Returns the model in eval mode on ``device``.
    """
    dev = repro.resolve_device(device)
    source = splits.train if train_data is None else train_data
    ep = cfg.endpoints
    sgd = train.SGDConfig(lr=ep.lr if lr is None else lr, momentum=0.9, weight_decay=ep.weight_decay,
                          schedule=ep.schedule)
    n_epochs = ep.epochs if epochs is None else epochs

    def fit(model: nn.Module) -> nn.Module:
        data = loader(source, cfg.batch_size, shuffle=True, seed=seed)
        with torch.random.fork_rng(devices=_cuda_devices(dev)):
            torch.manual_seed(seed)  # dropout masks (VGG16)
            net, _ = train.fit(model, data, epochs=n_epochs, sgd=sgd, show_progress=show_progress)
        return net

    inputs = {"architecture": _architecture(cfg), "data": source, "seed": seed, "epochs": n_epochs,
              "batch_size": cfg.batch_size, "sgd": sgd}
    return cached_model("trained", inputs, _seeded_build(cfg, seed, dev), fit)


def regular_model(cfg: Profile, splits: Splits, seed: int, *, member: int = 0, device: str | torch.device = "auto",
                  show_progress: bool = False) -> nn.Module:
    """A normally trained endpoint: :func:`trained_model` with seed ``seed + member`` (shared with chapter 1)."""
    _check_member(member)
    return trained_model(cfg, splits, seed=seed + member, device=device, show_progress=show_progress)


def adversarial_model(cfg: Profile, splits: Splits, seed: int, *, member: int = 0,
                      device: str | torch.device = "auto", show_progress: bool = False) -> nn.Module:
    """An adversarially trained endpoint (PGD or FGSM-RS adversarial training, ``cfg.robustness``), cached."""
    _check_member(member)
    dev = repro.resolve_device(device)
    rb = cfg.robustness
    init_seed = seed + member
    sgd = train.SGDConfig(lr=rb.at_lr, momentum=0.9, weight_decay=cfg.endpoints.weight_decay,
                          schedule=cfg.endpoints.schedule)
    loss = training_loss(cfg)

    def fit(model: nn.Module) -> nn.Module:
        data = loader(splits.train, cfg.batch_size, shuffle=True, seed=init_seed)
        with torch.random.fork_rng(devices=_cuda_devices(dev)):
            torch.manual_seed(init_seed)  # random starts of the attack, dropout masks
            net, _ = adversarial.fit_adversarial(model, data, epochs=rb.at_epochs, attack=loss, sgd=sgd,
                                                 show_progress=show_progress)
        return net

    inputs = {"architecture": _architecture(cfg), "data": splits.train, "seed": init_seed, "epochs": rb.at_epochs,
              "batch_size": cfg.batch_size, "sgd": sgd, "loss": loss}
    return cached_model("adversarial", inputs, _seeded_build(cfg, init_seed, dev), fit)


def endpoint(cfg: Profile, splits: Splits, kind: Kind, seed: int, *, member: int = 0,
             device: str | torch.device = "auto", show_progress: bool = False) -> nn.Module:
    """A regular or adversarial endpoint by name."""
    if kind == "regular":
        return regular_model(cfg, splits, seed, member=member, device=device, show_progress=show_progress)
    if kind == "adversarial":
        return adversarial_model(cfg, splits, seed, member=member, device=device, show_progress=show_progress)
    raise ValueError(f"unknown endpoint kind {kind!r}; choose 'regular' or 'adversarial'")


def pair_endpoints(cfg: Profile, splits: Splits, pair: Pair, seed: int, *, device: str | torch.device = "auto",
                   show_progress: bool = False) -> tuple[nn.Module, nn.Module]:
    """The two endpoints of ``pair`` (t = 0 first)."""
    (kind_a, member_a), (kind_b, member_b) = _pair(pair)
    return (endpoint(cfg, splits, kind_a, seed, member=member_a, device=device, show_progress=show_progress),
            endpoint(cfg, splits, kind_b, seed, member=member_b, device=device, show_progress=show_progress))


# ------------------------------------------------------------------------------------------------- curves

def connectivity_curve(cfg: Profile, splits: Splits, a: nn.Module, b: nn.Module, kind: curves.CurveKind, *,
                       seed: int, show_progress: bool = True) -> curves.Curve:
    """Chapter 1's trained curve of family ``kind`` between ``a`` and ``b`` (``cfg.connectivity``), cached."""
    mc = cfg.connectivity
    sgd = train.SGDConfig(lr=mc.curve_lr, momentum=0.9, weight_decay=mc.curve_weight_decay,
                          schedule=mc.curve_schedule)

    def fit(curve: nn.Module) -> nn.Module:
        data = loader(splits.train, cfg.batch_size, shuffle=True, seed=seed)
        return curves.fit_curve(curve, data, epochs=mc.curve_epochs, sgd=sgd, seed=seed,  # type: ignore[arg-type]
                                show_progress=show_progress)[0]

    inputs = {"a": a, "b": b, "kind": kind, "n_bends": cfg.n_bends, "data": splits.train, "epochs": mc.curve_epochs,
              "batch_size": cfg.batch_size, "sgd": sgd, "seed": seed}
    return cached_model("connectivity-curve", inputs,  # type: ignore[return-value]
                        lambda: curves.Curve.between(a, b, kind=kind, n_bends=cfg.n_bends), fit)


def robust_pair_curve(cfg: Profile, splits: Splits, pair: Pair = "regular-adversarial",
                      loss: CurveLoss = "standard", *, seed: int = 0, device: str | torch.device = "auto",
                      show_progress: bool = False) -> curves.Curve:
    """The trained curve between ``pair``'s endpoints, trained with the standard or the robust loss (cached).

    Trained on the training set for ``curve_steps`` (standard) or ``robust_curve_steps`` (robust) steps; the
    robust loss is the adversarial endpoints' training loss, with batch statistics at the sampled t.
    """
    a, b = pair_endpoints(cfg, splits, pair, seed, device=device, show_progress=show_progress)
    rb = cfg.robustness
    loss_fn = curve_loss(cfg, loss)
    steps = rb.curve_steps if loss == "standard" else rb.robust_curve_steps
    sgd = train.SGDConfig(lr=rb.curve_lr, momentum=0.9, weight_decay=cfg.connectivity.curve_weight_decay,
                          schedule=cfg.connectivity.curve_schedule)

    def fit(curve: nn.Module) -> nn.Module:
        data = loader(splits.train, cfg.batch_size, shuffle=True, seed=seed)
        with torch.random.fork_rng(devices=_cuda_devices(repro.model_device(curve))):
            torch.manual_seed(seed)  # the robust loss's random starts
            trained, _ = curves.fit_curve(curve, data, steps=steps, sgd=sgd, loss_fn=loss_fn,  # type: ignore[arg-type]
                                          seed=seed, show_progress=show_progress)
        return trained

    inputs = {"pair": pair, "a": a, "b": b, "kind": rb.curve_kind, "n_bends": cfg.n_bends, "data": splits.train,
              "steps": steps, "batch_size": cfg.batch_size, "sgd": sgd, "seed": seed, "loss": loss_fn}
    return cached_model(f"curve-{pair}-{loss}", inputs,  # type: ignore[return-value]
                        lambda: curves.Curve.between(a, b, kind=rb.curve_kind, n_bends=cfg.n_bends), fit)


# --------------------------------------------------------------------------------------------- path tables

def path_metrics(cfg: Profile, splits: Splits) -> dict[str, paths.Metric]:
    """The metrics of the robustness chapters at one model: ``test`` (clean loss and accuracy on the test split)
    and ``robust`` (loss and accuracy under the evaluation attack on :func:`eval_data`); each gives a ``_loss``
    (nats) and an ``_accuracy`` (%) column."""
    test = list(batches(splits.test, cfg.eval_batch_size))
    attacked = list(batches(eval_data(cfg, splits), cfg.eval_batch_size))
    attack = eval_attack(cfg)
    return {"test": paths.evaluation_on(test),
            "robust": lambda model: attacks.robust_evaluate(model, attacked, attack, seed=0)}


def _measurement_inputs(cfg: Profile, splits: Splits, curve: curves.Curve) -> dict[str, Any]:
    return {"curve": curve, "test": splits.test, "bn": bn_data(cfg, splits), "n_eval": cfg.robustness.n_eval,
            "attack": eval_attack(cfg), "eval_batch_size": cfg.eval_batch_size}


def path_table(cfg: Profile, splits: Splits, pair: Pair = "regular-adversarial", loss: CurveLoss = "standard", *,
               seed: int = 0, device: str | torch.device = "auto", show_progress: bool = False) -> pd.DataFrame:
    """Clean and robust test loss and accuracy along the trained curve, at ``robustness.n_points`` values of t.

    Columns: ``t``, ``arc_length``, ``test_loss``, ``test_accuracy`` (all ``n_test`` test images),
    ``robust_loss``, ``robust_accuracy`` (PGD on the first ``n_eval`` test images). Cached.
    """
    curve = robust_pair_curve(cfg, splits, pair, loss, seed=seed, device=device, show_progress=show_progress)
    n_points = cfg.robustness.n_points

    def compute() -> pd.DataFrame:
        ts = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64).tolist()
        return paths.evaluate(curve, ts, path_metrics(cfg, splits), bn_data(cfg, splits), show_progress=show_progress)

    return cached_table(f"path-{pair}-{loss}", {**_measurement_inputs(cfg, splits, curve), "n_points": n_points},
                        compute)


def path_ensemble(cfg: Profile, splits: Splits, pair: Pair = "regular-adversarial", loss: CurveLoss = "standard", *,
                  seed: int = 0, device: str | torch.device = "auto", show_progress: bool = False) -> pd.DataFrame:
    """An ensemble of ``robustness.ensemble_size`` networks evenly spaced along the curve, next to its members.

    One row per member (``t``) and a last row for the ensemble (``t`` is NaN): clean test loss and accuracy, and
    robust loss and accuracy under the evaluation attack aimed at that very model: for the ensemble, a
    white-box attack on the averaged prediction (:class:`mcar_lib.attacks.Ensemble`). Cached.
    """
    curve = robust_pair_curve(cfg, splits, pair, loss, seed=seed, device=device, show_progress=show_progress)
    size = cfg.robustness.ensemble_size

    def compute() -> pd.DataFrame:
        ts = torch.linspace(0.0, 1.0, size, dtype=torch.float64).tolist()
        members = [curve.at(t, bn_data(cfg, splits)) for t in ts]
        metrics = path_metrics(cfg, splits)
        rows = []
        for model in [*members, attacks.Ensemble(members)]:
            row: dict[str, float] = {}
            for name, metric in metrics.items():
                row.update({f"{name}_{key}": value for key, value in metric(model).items()})  # type: ignore[union-attr]
            rows.append(row)
        return pd.DataFrame(rows).assign(t=ts + [float("nan")])[["t", *rows[0]]]

    return cached_table(f"ensemble-{pair}-{loss}", {**_measurement_inputs(cfg, splits, curve), "size": size}, compute)


# ---------------------------------------------------------------------------------- chapter 2: backdoor repair

@dataclass(frozen=True)
class BackdoorScenario:
    """One repetition of chapter 2's attack: the trigger, the poisoned training data, the two backdoored networks
    and their clean twins (same recipe and seeds on clean data). Repetition ``r`` of a chapter run with seed
    ``SEED`` uses seed ``SEED + r`` for the poisoning and the defender's draws, and ``2·(SEED + r) + 1`` and
    ``+ 2`` to initialise the two networks."""

    seed: int
    trigger: backdoor.PatchTrigger
    poisoned: backdoor.Poisoned
    backdoored: tuple[nn.Module, nn.Module]
    clean: tuple[nn.Module, nn.Module]


def backdoor_trigger(cfg: Profile) -> backdoor.PatchTrigger:
    """The profile's BadNets trigger: a white square near the bottom-right corner."""
    bd = cfg.backdoor
    return backdoor.PatchTrigger(size=bd.trigger_size, value=1.0, corner="bottom_right", margin=bd.trigger_margin)


def backdoor_scenario(cfg: Profile, splits: Splits, repetition: int, *,
                      device: str | torch.device = "auto") -> BackdoorScenario:
    """Repetition ``repetition`` of the attack (cached networks)."""
    bd = cfg.backdoor
    seed = splits.seed + repetition
    trigger = backdoor_trigger(cfg)
    poisoned = backdoor.poison(splits.train, trigger, target=bd.target, rate=bd.poison_rate, seed=seed)

    def network(init: int, data: LabeledImages | None) -> nn.Module:
        return trained_model(cfg, splits, seed=init, train_data=data, epochs=bd.endpoint_epochs, lr=bd.endpoint_lr,
                             device=device)

    # chapter 1's pair of this repetition: the clean twins are its networks (cached), the backdoored ones share
    # their initialisation and data order
    first = repetition_seed(splits.seed, repetition)
    inits = (first, first + 1)
    return BackdoorScenario(seed, trigger, poisoned, tuple(network(i, poisoned.data) for i in inits),  # type: ignore
                            tuple(network(i, None) for i in inits))  # type: ignore[arg-type]


def backdoor_measure(cfg: Profile, splits: Splits, scenario: BackdoorScenario) -> Callable[[nn.Module], dict]:
    """Clean test accuracy and ASR (%) of a model: the chapter's metric contract."""

    def measure(model: nn.Module) -> dict[str, float]:
        result = backdoor.backdoor_metrics(model, splits.test, scenario.trigger, cfg.backdoor.target,
                                           batch_size=cfg.eval_batch_size)
        return {"clean accuracy (%)": result.clean_accuracy, "ASR (%)": result.attack_success_rate}

    return measure


def along_path(measure: Callable[[nn.Module], dict], result: repair.RepairResult,
               ts: Sequence[float]) -> pd.DataFrame:
    """A metric at every t of a repair path (batch-norm statistics from the data the path was trained on)."""
    return pd.DataFrame([{"t": float(t), **measure(result.curve.at(float(t), bn_data=result.bn_data))} for t in ts])


def backdoor_repairs(cfg: Profile, splits: Splits, scenario: BackdoorScenario, n: int, *,
                     comparisons: bool = True) -> dict[str, Any]:
    """Every repair of chapter 2 on the same ``n`` bonafide images of one repetition, measured on the test set.

    Returns ``rows`` (one per method: clean accuracy and ASR), ``along`` (the repair path's metrics at every
    candidate t, with the defender's cross-validated accuracy), ``path`` (the path repair's result) and the
    baselines. ``comparisons`` adds the two secondary methods (the chapter runs them once, not per repetition):
    ``single_slice``, the first edition's rule on the same images, and filter pruning by L1 norm.
    """
    bd = cfg.backdoor
    a, b = scenario.backdoored
    bonafide = take(splits.bonafide, n, seed=scenario.seed)
    measure = backdoor_measure(cfg, splits, scenario)
    matched = train.SGDConfig(lr=bd.finetune_lr, schedule=bd.path.schedule, weight_decay=bd.path.weight_decay)
    reference = train.SGDConfig(lr=bd.reference_finetune_lr, schedule="cosine",
                                weight_decay=bd.reference_finetune_weight_decay)
    scratch = train.SGDConfig(lr=bd.scratch_lr, schedule="cosine")
    common = dict(batch_size=bd.path.batch_size, seed=scenario.seed, cache=True)
    path = repair.path_repair(a, b, bonafide, training=bd.path, selection=bd.selection, seed=scenario.seed, cache=True)
    single = (repair.path_repair(a, b, bonafide, training=bd.path, selection=bd.single_slice_selection,
                                 seed=scenario.seed, cache=True) if comparisons else None)
    others = [
        repair.finetune(a, bonafide, steps=bd.path.steps, sgd=matched, name="fine-tuning (matched)", **common),
        repair.finetune(a, bonafide, steps=bd.path.steps, sgd=reference, name="fine-tuning (reference recipe)",
                        **common),
        repair.train_from_scratch(a, bonafide, steps=bd.scratch_steps, sgd=scratch, **common),
        repair.noisy_model(a, b, bonafide, scale=bd.noisy_scale, seed=scenario.seed),
        repair.fine_prune(a, bonafide, criterion="activation", tolerance=bd.prune_tolerance, prune_step=bd.prune_step,
                          steps=bd.prune_finetune_steps, sgd=matched, **common),
    ]
    if comparisons:
        others.append(repair.fine_prune(a, bonafide, criterion="weight_norm", tolerance=bd.prune_tolerance,
                                        prune_step=bd.prune_step, steps=bd.prune_finetune_steps, sgd=matched,
                                        **common))
    along = along_path(measure, path, bd.ts).merge(path.table[["t", "heldout_accuracy"]], on="t")
    rows = [{"method": "path repair", "t": path.t, **measure(path.model)}]
    if single is not None:
        rows.append({"method": "path repair, single held-out slice", "t": single.t, **measure(single.model)})
    rows += [{"method": r.name, "t": float("nan"), **measure(r.model)} for r in others]
    pruned = [r for r in others if r.name in repair.PRUNE_NAMES.values()]
    rows += [{"method": f"{r.name} (pruning only)", "t": float("nan"), **measure(r.details["pruned_only"])}
             for r in pruned]
    table = pd.DataFrame(rows).assign(N=n, repetition=scenario.seed - splits.seed)
    return {"rows": table, "along": along.assign(N=n, repetition=scenario.seed - splits.seed), "path": path,
            "single_slice": single, "baselines": {r.name: r for r in others}}


def path_budget_trace(cfg: Profile, splits: Splits, scenario: BackdoorScenario, n: int) -> pd.DataFrame:
    """Near-endpoint repair: the repair path at ``n`` bonafide images trained for each budget of
    ``backdoor.trace_steps`` with the book's recipe, and once with the paper's (``backdoor.paper_path``); clean
    accuracy and ASR at t = 0.1, 0.2 and 0.5, and how far the bend travelled from the middle of the chord
    (in units of the distance between the endpoints)."""
    bd = cfg.backdoor
    a, b = scenario.backdoored
    bonafide = take(splits.bonafide, n, seed=scenario.seed)
    measure = backdoor_measure(cfg, splits, scenario)
    recipes_ = [("book", replace(bd.path, steps=steps)) for steps in bd.trace_steps] + [("paper", bd.paper_path)]
    rows = []
    for recipe, training in recipes_:
        curve = repair.train_path(a, b, bonafide, training=training, seed=scenario.seed, cache=True)
        chord = curve.end - curve.start
        travel = float((curve.bends.detach() - (curve.start + curve.end) / 2).norm(dim=1).max() / chord.norm())
        row: dict[str, Any] = {"recipe": recipe, "steps": training.steps, "travel": travel}
        for t in (0.1, 0.2, 0.5):
            m = measure(curve.at(t, bn_data=bonafide))
            row[f"accuracy at t={t:g} (%)"] = m["clean accuracy (%)"]
            row[f"ASR at t={t:g} (%)"] = m["ASR (%)"]
        rows.append(row)
    return pd.DataFrame(rows)


def adaptive_attack(cfg: Profile, splits: Splits, scenario: BackdoorScenario, n: int) -> dict[str, Any]:
    """The path-aware attacker (:func:`mcar_lib.backdoor.path_aware_pair`): its two released models, and the
    defender's path repair between them on ``n`` bonafide images, measured along the path."""
    bd = cfg.backdoor
    a, b = scenario.backdoored
    mc = cfg.connectivity
    attacker_sgd = train.SGDConfig(lr=mc.curve_lr, weight_decay=mc.curve_weight_decay, schedule=mc.curve_schedule)

    inputs = {"a": a, "b": b, "poisoned": scenario.poisoned.data, "steps": bd.adaptive_steps, "sgd": attacker_sgd,
              "batch_size": cfg.batch_size, "n_bends": cfg.n_bends, "seed": scenario.seed}
    curve = cached_model("path-aware-curve", inputs, lambda: curves.Curve.between(a, b, n_bends=cfg.n_bends),
                         lambda c: backdoor.fit_path_aware(c, scenario.poisoned.data, steps=bd.adaptive_steps,  # type: ignore
                                                           sgd=attacker_sgd, batch_size=cfg.batch_size,
                                                           seed=scenario.seed))
    pair = backdoor.release(curve, scenario.poisoned.data, bd.adaptive_release)  # type: ignore[arg-type]
    bonafide = take(splits.bonafide, n, seed=scenario.seed)
    measure = backdoor_measure(cfg, splits, scenario)
    path = repair.path_repair(pair[0], pair[1], bonafide, training=bd.path, selection=bd.selection,
                              seed=scenario.seed, cache=True)
    along = along_path(measure, path, bd.ts).merge(path.table[["t", "heldout_accuracy"]], on="t")
    return {"released": pair, "path": path, "along": along, "measured": [measure(m) for m in pair]}


def relapse_data(cfg: Profile, splits: Splits, scenario: BackdoorScenario) -> LabeledImages:
    """The returning attacker's handful of images: ``relapse_poisoned`` triggered non-target training images
    labelled with the target, mixed with ``relapse_clean`` clean ones (seeded)."""
    bd = cfg.backdoor
    pool = take(splits.train, min(len(splits.train), bd.relapse_poisoned + bd.relapse_clean + 200),
                seed=scenario.seed + 10_000)
    sources = pool.subset(pool.y != bd.target)
    poisoned = scenario.trigger.apply(sources.x[:bd.relapse_poisoned])
    clean = pool.subset(slice(len(pool) - bd.relapse_clean, len(pool)))
    x = torch.cat([poisoned, clean.x])
    y = torch.cat([torch.full((bd.relapse_poisoned,), bd.target, dtype=torch.long), clean.y])
    return LabeledImages(x, y)


# --------------------------------------------------------------------------------- chapter 3: injected faults

FaultSite = Literal["classifier", "convolution"]


def injected_model(clean: nn.Module, targets: faults.SneakTargets, **sneak_settings: Any) -> nn.Module:
    """``clean`` with the errors of ``targets`` sneaked in (:func:`mcar_lib.faults.sneak`), cached."""
    inputs = {"clean": clean, "targets": targets, "settings": sneak_settings}
    return cached_model("injected", inputs, lambda: copy.deepcopy(clean),
                        lambda m: faults.sneak(m, targets, **sneak_settings)[0])


def sneak_settings(cfg: Profile, site: FaultSite, seed: int) -> dict[str, Any]:
    """The attacker's settings for a site: the classifier's weight, or a convolution (a heavier keep term)."""
    ei = cfg.faults
    common = dict(steps=ei.sneak_steps, schedule=ei.sneak_schedule, kappa=ei.kappa, keep_sample=ei.keep_sample,
                  seed=seed)
    if site == "classifier":
        return dict(param_names=list(ei.param_names), lr=ei.sneak_lr, **common)
    if site == "convolution":
        return dict(param_names=list(ei.conv_param_names), lr=ei.conv_sneak_lr, keep_weight=ei.conv_keep_weight,
                    **common)
    raise ValueError(f"unknown fault site {site!r}; choose 'classifier' or 'convolution'")


@dataclass(frozen=True)
class FaultScenario:
    """One repetition of chapter 3's attack: two clean networks (chapter 1's pair of repetition ``r``, see
    :func:`repetition_seed`), the images S with their injected labels and the keep-set (seed ``SEED + r``), and
    the two networks with the errors injected at ``site``."""

    seed: int
    site: str
    targets: faults.SneakTargets
    clean: tuple[nn.Module, nn.Module]
    injected: tuple[nn.Module, nn.Module]


def fault_scenario(cfg: Profile, splits: Splits, repetition: int, site: FaultSite = "classifier", *,
                   device: str | torch.device = "auto") -> FaultScenario:
    """Repetition ``repetition`` of the fault-sneaking attack at ``site`` (cached networks)."""
    ei = cfg.faults
    seed = splits.seed + repetition
    first = repetition_seed(splits.seed, repetition)
    clean = tuple(trained_model(cfg, splits, seed=first + i, device=device) for i in (0, 1))
    # a smoke run's networks may have learned nothing (synthetic data): draw S from all images there
    targets = faults.pick_targets(list(clean), splits.train, n_sneak=ei.n_sneak, n_keep=ei.n_keep, seed=seed,
                                  among_correct=not cfg.is_smoke)
    settings = sneak_settings(cfg, site, seed)
    injected = tuple(injected_model(m, targets, **settings) for m in clean)
    return FaultScenario(seed, site, targets, clean, injected)  # type: ignore[arg-type]


def fault_measure(splits: Splits, scenario: FaultScenario, batch_size: int = 1000) -> Callable[[nn.Module], dict]:
    """Clean test accuracy and the success of the injected errors on S (%): chapter 3's metric contract."""
    test = list(batches(splits.test, batch_size))

    def measure(model: nn.Module) -> dict[str, float]:
        return {"clean accuracy (%)": train.accuracy(model, test),
                "S success (%)": faults.sneak_success(model, scenario.targets)}

    return measure


def fault_repairs(cfg: Profile, splits: Splits, scenario: FaultScenario, n: int) -> dict[str, Any]:
    """Path repair (cross-validated t) and the baselines of chapter 3 on the same ``n`` bonafide images."""
    ei = cfg.faults
    a, b = scenario.injected
    bonafide = take(splits.bonafide, n, seed=scenario.seed)
    measure = fault_measure(splits, scenario, cfg.eval_batch_size)
    matched = train.SGDConfig(lr=ei.finetune_lr, schedule=ei.path.schedule, weight_decay=ei.path.weight_decay)
    reference = train.SGDConfig(lr=ei.reference_finetune_lr, schedule="cosine",
                                weight_decay=ei.reference_finetune_weight_decay)
    common = dict(steps=ei.path.steps, batch_size=ei.path.batch_size, seed=scenario.seed, cache=True)
    path = repair.path_repair(a, b, bonafide, training=ei.path, selection=ei.selection, seed=scenario.seed, cache=True)
    others = [repair.finetune(a, bonafide, sgd=matched, name="fine-tuning (matched)", **common),
              repair.finetune(a, bonafide, sgd=reference, name="fine-tuning (reference recipe)", **common),
              repair.noisy_model(a, b, bonafide, scale=ei.noisy_scale, seed=scenario.seed)]
    along = along_path(measure, path, ei.ts).merge(path.table[["t", "heldout_accuracy"]], on="t")
    rows = [{"method": "path repair", "t": path.t, **measure(path.model)}]
    rows += [{"method": r.name, "t": float("nan"), **measure(r.model)} for r in others]
    labels = dict(N=n, repetition=scenario.seed - splits.seed, site=scenario.site)
    return {"rows": pd.DataFrame(rows).assign(**labels), "along": along.assign(**labels), "path": path,
            "baselines": {r.name: r for r in others}}


# -------------------------------------------------------------------------------- chapter 6: flatness and AWP

FLATNESS_HISTORY = ("epoch", "robust_train_accuracy", "robust_test_accuracy", "robust_train_loss", "robust_test_loss",
                    "clean_test_accuracy")


def flatness_training_data(cfg: Profile, splits: Splits) -> tuple[LabeledImages, LabeledImages]:
    """Chapter 6's tiny training set (a seeded subset of the training split) and the test images it tracks."""
    fs = cfg.flatness
    return take(splits.train, fs.n_train, seed=splits.seed), splits.test.subset(slice(0, fs.n_eval_test))


def adversarially_trained(cfg: Profile, splits: Splits, method: TrainingMethod, seed: int, *,
                          device: str | torch.device = "auto") -> tuple[nn.Module, pd.DataFrame]:
    """Chapter 6's network trained with AT or AWP from seed ``seed`` on the tiny set, and its per-epoch table of
    robust training and test accuracy and loss (cached; the table is recomputed only if it went missing)."""
    if method not in ("AT", "AWP"):
        raise ValueError(f"unknown method {method!r}; choose 'AT' or 'AWP'")
    fs = cfg.flatness
    dev = repro.resolve_device(device)
    small_train, test_eval = flatness_training_data(cfg, splits)
    attack = eval_attack(cfg)
    robust = adversarial.pgd_loss(cfg.robustness.eps, steps=fs.at_steps)
    sgd = train.SGDConfig(lr=fs.lr, momentum=0.9, weight_decay=fs.weight_decay, schedule=fs.schedule)
    warm_sgd = train.SGDConfig(lr=fs.clean_lr, momentum=0.9, weight_decay=fs.weight_decay, schedule="constant")
    perturbation = awp.AWP(gamma=fs.gamma, warmup_epochs=fs.warmup_epochs) if method == "AWP" else None

    def robust_progress(model: nn.Module, epoch: int) -> dict[str, float]:
        if epoch % fs.eval_every and epoch != fs.epochs:
            return {}
        on_train = attacks.robust_evaluate(model, batches(small_train, cfg.eval_batch_size), attack, seed=0)
        on_test = attacks.robust_evaluate(model, batches(test_eval, cfg.eval_batch_size), attack, seed=0)
        clean = train.evaluate(model, batches(test_eval, cfg.eval_batch_size))
        return {"robust_train_accuracy": on_train["accuracy"], "robust_test_accuracy": on_test["accuracy"],
                "robust_train_loss": on_train["loss"], "robust_test_loss": on_test["loss"],
                "clean_test_accuracy": clean["accuracy"]}

    log: dict[str, pd.DataFrame] = {}

    def fit(model: nn.Module) -> nn.Module:
        data = loader(small_train, fs.batch_size, shuffle=True, seed=seed)
        with torch.random.fork_rng(devices=_cuda_devices(dev)):
            torch.manual_seed(seed)  # the attack's random starts
            warm = model
            if fs.clean_epochs:
                warm, _ = train.fit(model, data, epochs=fs.clean_epochs, sgd=warm_sgd, show_progress=False)
            net, history = adversarial.fit_adversarial(warm, data, epochs=fs.epochs, attack=robust, awp=perturbation,
                                                       sgd=sgd, epoch_end=robust_progress, show_progress=False)
        log["history"] = history.to_frame().dropna()[list(FLATNESS_HISTORY)]
        return net

    build = _seeded_build(cfg, seed, dev)
    inputs = {"method": method, "architecture": _architecture(cfg), "data": small_train, "test": test_eval,
              "seed": seed, "clean_epochs": fs.clean_epochs, "warm_sgd": warm_sgd, "epochs": fs.epochs,
              "batch_size": fs.batch_size, "sgd": sgd, "attack": robust, "awp": perturbation, "eval_attack": attack,
              "eval_every": fs.eval_every}
    model = cached_model("flatness-training", inputs, build, fit)

    def history() -> pd.DataFrame:
        if "history" not in log:  # the model came from the cache but its table did not: train once more
            fit(build())
        return log["history"]

    return model, cached_table("flatness-training-history", inputs, history)


def flatness_measures(cfg: Profile, splits: Splits, model: nn.Module, *, seed: int) -> dict[str, float]:
    """Robust loss, average-case and worst-case robust flatness (nats) of ``model`` on the first
    ``flatness.n_flatness`` test images (Stutz et al. 2021), cached."""
    fs = cfg.flatness
    data = splits.test.subset(slice(0, fs.n_flatness))
    attack = eval_attack(cfg)

    def compute() -> pd.DataFrame:
        batch_list = list(batches(data, cfg.eval_batch_size))
        average = flatness.average_flatness(model, batch_list, attack=attack, xi=fs.xi, n_samples=fs.n_weight_samples,
                                            seed=seed)
        worst = flatness.worst_flatness(model, batch_list, eps=attack.eps, xi=fs.worst_xi, steps=fs.worst_steps,
                                        input_step=attack.step_size, seed=seed)
        return pd.DataFrame({"robust_loss": [average.loss], "average": [average.flatness], "worst": [worst.flatness]})

    inputs = {"model": model, "data": data, "attack": attack, "xi": fs.xi, "n_samples": fs.n_weight_samples,
              "worst_xi": fs.worst_xi, "worst_steps": fs.worst_steps, "seed": seed,
              "batch_size": cfg.eval_batch_size}  # the worst case is optimised batch by batch
    return {k: float(v) for k, v in cached_table("flatness", inputs, compute).iloc[0].items()}


def robust_loss_curve(cfg: Profile, splits: Splits, model: nn.Module, *, seed: int) -> pd.DataFrame:
    """The robust and clean test loss along a random filter-normalised direction (Li et al. 2018), at
    ``flatness.alphas``: columns ``alpha``, ``robust``, ``clean`` (nats). Cached."""
    fs = cfg.flatness
    data = splits.test.subset(slice(0, fs.n_curve))
    attack = eval_attack(cfg)

    def compute() -> pd.DataFrame:
        direction = flatness.filter_normalized_direction(model, generator=torch.Generator().manual_seed(seed))
        batch_list = list(batches(data, cfg.eval_batch_size))
        robust = flatness.loss_curve(model, batch_list, direction=direction, alphas=fs.alphas, attack=attack, seed=seed)
        clean = flatness.loss_curve(model, batch_list, direction=direction, alphas=fs.alphas)
        return pd.DataFrame({"alpha": robust.alpha, "robust": robust.loss, "clean": clean.loss})

    inputs = {"model": model, "data": data, "attack": attack, "alphas": list(fs.alphas), "seed": seed}
    return cached_table("robust-loss-curve", inputs, compute)


def path_flatness(cfg: Profile, splits: Splits, *, seed: int, device: str | torch.device = "auto") -> pd.DataFrame:
    """Robust loss, average-case flatness and mean input-Hessian λ_max along the regular-adversarial
    standard-loss curve, at ``flatness.path_points`` values of t. Cached."""
    fs = cfg.flatness
    curve = robust_pair_curve(cfg, splits, "regular-adversarial", "standard", seed=seed, device=device)
    bn = bn_data(cfg, splits)
    path_data = splits.test.subset(slice(0, fs.n_path))
    lambda_data = splits.test.subset(slice(0, cfg.curvature.n_samples))
    attack = eval_attack(cfg)
    ts = np.linspace(0.0, 1.0, fs.path_points).tolist()

    def compute() -> pd.DataFrame:
        path_batches = list(batches(path_data, cfg.eval_batch_size))

        def measured(model: nn.Module) -> dict[str, float]:
            result = flatness.average_flatness(model, path_batches, attack=attack, xi=fs.xi,
                                               n_samples=fs.path_weight_samples, seed=seed)
            return {"robust_loss": result.loss, "flatness": result.flatness}

        metrics = {"weights": measured, "lambda_max": lambda m: hessian.mean_input_lambda_max(m, lambda_data,
                                                                                             method="gauss_newton")}
        table = paths.evaluate(curve, ts, metrics, bn, show_progress=False)
        return table.rename(columns={"weights_robust_loss": "robust_loss", "weights_flatness": "flatness"})

    inputs = {"curve": curve, "bn": bn, "data": path_data, "lambda_data": lambda_data, "attack": attack, "xi": fs.xi,
              "n_samples": fs.path_weight_samples, "ts": ts, "seed": seed}
    return cached_table("path-flatness", inputs, compute)


# ---------------------------------------------------------------------------------------------- helpers

def _check_member(member: int) -> None:
    if not isinstance(member, int) or member < 0:
        raise ValueError(f"member must be a non-negative int (which network of a kind), got {member!r}")


def _pair(pair: str) -> tuple[tuple[Kind, int], tuple[Kind, int]]:
    if pair not in PAIRS:
        raise ValueError(f"unknown pair {pair!r}; choose one of {sorted(PAIRS)}")
    return PAIRS[pair]
