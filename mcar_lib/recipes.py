"""Cached building blocks of the robustness chapters: endpoints, curves and path tables, built once.

Chapters 4 (the robustness-loss barrier), 5 (input-Hessian curvature) and 6 (flatness) study the *same* networks:
regular and adversarially trained endpoints and the curves between them. Building them here, through the
checkpoint cache with the full configuration in every key, means each chapter gets exactly the models the
others measured, and only the first chapter to ask pays for training.

Pairs are named ``"regular-regular"``, ``"regular-adversarial"`` and ``"adversarial-adversarial"``; a pair's
first endpoint is t = 0. Member ``i`` of a kind is trained from seed ``seed + i`` (two members of one kind are
independent networks). Curves are trained on the training set with the standard loss or the robust loss;
batch-norm statistics along a path come from the defender's data (``bn_data``), never from the test set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Literal

import pandas as pd
import torch
from torch import nn

from mcar_lib import adversarial, attacks, cache, curves, models, paths, repro, train
from mcar_lib.data import LabeledImages, Splits, batches, loader, take
from mcar_lib.profiles import Profile

Kind = Literal["regular", "adversarial"]
Pair = Literal["regular-regular", "regular-adversarial", "adversarial-adversarial"]
CurveLoss = Literal["standard", "robust"]
#: Each pair's endpoints as (kind, member): t = 0 first.
PAIRS: dict[str, tuple[tuple[Kind, int], tuple[Kind, int]]] = {
    "regular-regular": (("regular", 0), ("regular", 1)),
    "regular-adversarial": (("regular", 0), ("adversarial", 0)),
    "adversarial-adversarial": (("adversarial", 0), ("adversarial", 1)),
}
CURVE_LOSSES = ("standard", "robust")


# --------------------------------------------------------------------------------------------- settings

def eval_attack(cfg: Profile) -> attacks.PGD:
    """The evaluation attack of the threat model: PGD-``eval_steps`` with a random start, eval mode."""
    return attacks.PGD(eps=cfg.rb.eps, steps=cfg.rb.eval_steps, norm=cfg.rb.norm)  # type: ignore[arg-type]


def training_loss(cfg: Profile, *, bn: attacks.BNMode = "eval") -> adversarial.RobustLoss:
    """The adversarial-training loss of the profile (``cfg.rb.at_method``): PGD-``at_steps`` or FGSM-RS.

    ``bn="eval"`` for training a network (Madry et al.), ``bn="batch"`` for training a curve (see
    :func:`mcar_lib.adversarial.pgd_loss`).
    """
    rb = cfg.rb
    if rb.at_method == "pgd":
        return adversarial.pgd_loss(rb.eps, steps=rb.at_steps, norm=rb.norm, bn=bn)  # type: ignore[arg-type]
    if rb.at_method == "fgsm_rs":
        if rb.norm != "linf":
            raise ValueError("fgsm_rs is an l∞ method; use at_method='pgd' for the l2 threat model")
        return adversarial.fgsm_rs_loss(rb.eps, bn=bn)
    raise ValueError(f"unknown at_method {rb.at_method!r} in the profile's rb section; choose 'pgd' or 'fgsm_rs'")


def curve_loss(cfg: Profile, loss: CurveLoss) -> train.LossFn:
    """The loss a curve is trained with: plain cross-entropy, or the endpoints' adversarial-training loss with
    batch statistics at the sampled t."""
    if loss == "standard":
        return train.cross_entropy_loss
    if loss == "robust":
        return training_loss(cfg, bn="batch")
    raise ValueError(f"unknown curve loss {loss!r}; choose 'standard' or 'robust'")


def bn_data(cfg: Profile, splits: Splits) -> LabeledImages:
    """The defender's images used for batch-norm statistics along a path (a seeded slice of the bonafide pool)."""
    n = min(cfg.rb.n_bn_images, len(splits.bonafide))
    return take(splits.bonafide, n, seed=splits.seed)


def eval_data(cfg: Profile, splits: Splits) -> LabeledImages:
    """The test images that are attacked at every point of a path (the first ``n_eval`` of the test split)."""
    return splits.test.subset(slice(0, min(cfg.rb.n_eval, len(splits.test))))


# -------------------------------------------------------------------------------------------- endpoints

def regular_model(cfg: Profile, splits: Splits, seed: int, *, member: int = 0, device: str | torch.device = "auto",
                  show_progress: bool = False) -> nn.Module:
    """A normally trained endpoint: ``models.trained`` with seed ``seed + member`` (shared with chapter 1)."""
    _check_member(member)
    return models.trained(cfg, splits, seed=seed + member, device=device, show_progress=show_progress)


def adversarial_model(cfg: Profile, splits: Splits, seed: int, *, member: int = 0,
                      device: str | torch.device = "auto", show_progress: bool = False) -> nn.Module:
    """An adversarially trained endpoint (PGD or FGSM-RS adversarial training, ``cfg.rb``), from the cache."""
    _check_member(member)
    dev = repro.resolve_device(device)
    rb = cfg.rb
    init_seed = seed + member
    arch = models.architecture_kwargs(cfg.model, splits.train,
                                      width=cfg.width if cfg.model == "small_cnn" else None)
    sgd = train.SGDConfig(lr=rb.at_lr, momentum=0.9, weight_decay=cfg.mc.endpoint_weight_decay,
                          schedule=cfg.mc.endpoint_schedule)
    loss = training_loss(cfg)
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        architecture = models.describe(models.build(cfg.model, **arch))
    key = {"name": f"{cfg.model}-adversarial", "profile": cfg.name, "dataset": splits.dataset,
           "data": models.fingerprint(splits.train), "n_train": len(splits.train), "model": cfg.model,
           "arch": arch, "seed": init_seed, "epochs": rb.at_epochs, "batch_size": cfg.batch_size,
           "sgd": asdict(sgd), "attack": asdict(loss.attack) if hasattr(loss.attack, "__dataclass_fields__") else
           repr(loss.attack), "architecture": architecture}

    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            return models.build(cfg.model, **arch).to(dev)

    def fit(model: nn.Module) -> nn.Module:
        data = loader(splits.train, cfg.batch_size, shuffle=True, seed=init_seed)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(init_seed)  # random starts of the attack, dropout masks
            net, _ = adversarial.fit_adversarial(model, data, epochs=rb.at_epochs, attack=loss, sgd=sgd,
                                                 show_progress=show_progress)
        return net

    return cache.load_or_train(key, make, fit)


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


# ----------------------------------------------------------------------------------------------- curves

def robust_pair_curve(cfg: Profile, splits: Splits, pair: Pair = "regular-adversarial",
                      loss: CurveLoss = "standard", *, seed: int = 0, device: str | torch.device = "auto",
                      show_progress: bool = False) -> curves.Curve:
    """The trained curve between ``pair``'s endpoints, trained with the standard or the robust loss (cached).

    Trained on the training set for ``curve_steps`` (standard) or ``robust_curve_steps`` (robust) steps; the
    robust loss is the adversarial endpoints' training loss, with batch statistics at the sampled t.
    """
    a, b = pair_endpoints(cfg, splits, pair, seed, device=device, show_progress=show_progress)
    rb = cfg.rb
    loss_fn = curve_loss(cfg, loss)
    steps = rb.curve_steps if loss == "standard" else rb.robust_curve_steps
    sgd = train.SGDConfig(lr=rb.curve_lr, momentum=0.9, weight_decay=cfg.mc.curve_weight_decay,
                          schedule=cfg.mc.curve_schedule)
    key = {"name": f"{cfg.model}-curve-{pair}-{loss}", "profile": cfg.name, "dataset": splits.dataset,
           "data": models.fingerprint(splits.train), "a": models.fingerprint(a), "b": models.fingerprint(b),
           "architecture": models.describe(a), "kind": rb.curve_kind, "n_bends": rb.n_bends, "steps": steps,
           "batch_size": cfg.batch_size, "sgd": asdict(sgd), "seed": seed,
           "loss": asdict(loss_fn.attack) if isinstance(loss_fn, adversarial.RobustLoss) else "cross_entropy"}

    def make() -> curves.Curve:
        return curves.Curve.between(a, b, kind=rb.curve_kind, n_bends=rb.n_bends)  # type: ignore[arg-type]

    def fit(curve: curves.Curve) -> curves.Curve:
        data = loader(splits.train, cfg.batch_size, shuffle=True, seed=seed)
        dev = curve.start.device
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)  # the robust loss's random starts
            trained, _ = curves.fit_curve(curve, data, steps=steps, sgd=sgd, loss_fn=loss_fn, seed=seed,
                                          show_progress=show_progress)
        return trained

    return cache.load_or_train(key, make, fit)


# ------------------------------------------------------------------------------------------ path tables

def path_metrics(cfg: Profile, splits: Splits) -> dict[str, paths.Metric]:
    """The metrics of the robustness chapters at one model: clean and robust loss (nats) and accuracy (%)."""
    test = list(batches(splits.test, cfg.eval_batch_size))
    attacked = list(batches(eval_data(cfg, splits), cfg.eval_batch_size))
    attack = eval_attack(cfg)
    memo = _LastModel()

    def clean(model: nn.Module) -> dict[str, float]:
        return memo.get(model, "clean", lambda: train.evaluate(model, test))

    def robust(model: nn.Module) -> dict[str, float]:
        return memo.get(model, "robust", lambda: attacks.robust_evaluate(model, attacked, attack, seed=0))

    return {"test_loss": lambda m: clean(m)["loss"], "test_accuracy": lambda m: clean(m)["accuracy"],
            "robust_loss": lambda m: robust(m)["loss"], "robust_accuracy": lambda m: robust(m)["accuracy"]}


def _evaluation_key(name: str, cfg: Profile, splits: Splits, curve: curves.Curve, **extra: object) -> dict[str, object]:
    """The cache key of a measurement along ``curve``: the curve, the test and batch-norm data, the attack."""
    return {"name": name, "profile": cfg.name, "curve": models.fingerprint(curve),
            "architecture": models.describe(curve.template), "test": models.fingerprint(splits.test),
            "bn": models.fingerprint(bn_data(cfg, splits)), "n_eval": cfg.rb.n_eval,
            "attack": asdict(eval_attack(cfg)), "eval_batch_size": cfg.eval_batch_size, **extra}


def path_table(cfg: Profile, splits: Splits, pair: Pair = "regular-adversarial", loss: CurveLoss = "standard", *,
               seed: int = 0, device: str | torch.device = "auto", show_progress: bool = False) -> pd.DataFrame:
    """Clean and robust test loss and accuracy along the trained curve, at ``cfg.rb.n_points`` values of t (cached).

    Columns: ``t``, ``arc_length``, ``test_loss``, ``test_accuracy`` (all ``n_test`` test images),
    ``robust_loss``, ``robust_accuracy`` (PGD on the first ``n_eval`` test images).
    """
    curve = robust_pair_curve(cfg, splits, pair, loss, seed=seed, device=device, show_progress=show_progress)
    key = _evaluation_key(f"path-{pair}-{loss}", cfg, splits, curve, n_points=cfg.rb.n_points)

    def compute() -> dict[str, torch.Tensor]:
        ts = torch.linspace(0.0, 1.0, cfg.rb.n_points, dtype=torch.float64).tolist()
        table = paths.evaluate(curve, ts, path_metrics(cfg, splits), bn_data(cfg, splits),
                               show_progress=show_progress)
        return {col: torch.tensor(table[col].to_numpy(), dtype=torch.float64) for col in table.columns}

    columns = cache.cached_tensors(key, compute)
    return pd.DataFrame({col: values.numpy() for col, values in columns.items()})


def path_ensemble(cfg: Profile, splits: Splits, pair: Pair = "regular-adversarial", loss: CurveLoss = "standard", *,
                  seed: int = 0, device: str | torch.device = "auto", show_progress: bool = False) -> pd.DataFrame:
    """An ensemble of ``cfg.rb.ensemble_size`` networks evenly spaced along the curve, next to its members (cached).

    One row per member (``t``) and a last row for the ensemble (``t`` is NaN): clean test loss and accuracy, and
    robust loss and accuracy under the evaluation attack aimed at that very model: for the ensemble, a
    white-box attack on the averaged prediction (:class:`mcar_lib.attacks.Ensemble`).
    """
    curve = robust_pair_curve(cfg, splits, pair, loss, seed=seed, device=device, show_progress=show_progress)
    key = _evaluation_key(f"ensemble-{pair}-{loss}", cfg, splits, curve, size=cfg.rb.ensemble_size)

    def compute() -> dict[str, torch.Tensor]:
        if cfg.rb.ensemble_size < 2:
            raise ValueError(f"an ensemble along the path needs ensemble_size >= 2, got {cfg.rb.ensemble_size}")
        ts = torch.linspace(0.0, 1.0, cfg.rb.ensemble_size, dtype=torch.float64).tolist()
        members = [curve.at(t, bn_data(cfg, splits)) for t in ts]
        metrics = path_metrics(cfg, splits)
        rows = [{name: fn(m) for name, fn in metrics.items()} for m in members]
        rows.append({name: fn(attacks.Ensemble(members)) for name, fn in metrics.items()})
        out = {"t": torch.tensor(ts + [float("nan")], dtype=torch.float64)}
        out.update({name: torch.tensor([row[name] for row in rows], dtype=torch.float64) for name in metrics})
        return out

    columns = cache.cached_tensors(key, compute)
    return pd.DataFrame({col: values.numpy() for col, values in columns.items()})


# ---------------------------------------------------------------------------------------------- helpers

class _LastModel:
    """Results for the most recent model only (each evaluation gives loss and accuracy in one pass; the
    model is held, not its id, so a new model can never be mistaken for the previous one)."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.results: dict[str, dict[str, float]] = {}

    def get(self, model: nn.Module, what: str, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        if self.model is not model:
            self.model, self.results = model, {}
        if what not in self.results:
            self.results[what] = compute()
        return self.results[what]


def _check_member(member: int) -> None:
    if not isinstance(member, int) or member < 0:
        raise ValueError(f"member must be a non-negative int (which network of a kind), got {member!r}")


def _pair(pair: str) -> tuple[tuple[Kind, int], tuple[Kind, int]]:
    if pair not in PAIRS:
        raise ValueError(f"unknown pair {pair!r}; choose one of {sorted(PAIRS)}")
    return PAIRS[pair]
