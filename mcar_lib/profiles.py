"""The run profiles, defined once: ``cpu`` (the default), ``smoke`` (seconds, CI sanity) and ``paper``.

A chapter picks a profile in its papermill ``parameters`` cell and derives every size from it:
``cfg = profiles.get(PROFILE)``. The common part (data set, model, split sizes, how endpoints are trained, the
curves' family) sits on :class:`Profile`; each chapter owns one section named after what it teaches
(``cfg.connectivity``, ``cfg.backdoor``, ``cfg.faults``, ``cfg.robustness``, ``cfg.curvature``,
``cfg.flatness``). Each setting has one home. ``paper`` follows the paper's data sets, models and
hyper-parameters and is meant for a GPU.

Profiles are checked when they are built: every option against its allowed values (the ``Literal`` types),
every size against the data set it draws from, and every parameter name a section names against the
profile's architecture (built on the ``meta`` device, so the check is free).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, replace
from typing import Literal

from mcar_lib import models
from mcar_lib.attacks import Norm
from mcar_lib.curves import CurveKind
from mcar_lib.data import DATASET_INFO, DatasetName
from mcar_lib.models import Architecture
from mcar_lib.train import Schedule

PROFILES = ("cpu", "smoke", "paper")
ProfileName = Literal["cpu", "smoke", "paper"]
TrainingMethod = Literal["pgd", "fgsm_rs"]


def _check_choices(settings: object) -> None:
    """Every field typed with a ``Literal`` must hold one of its values (typing does not check at run time)."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
        value = getattr(settings, f.name)
        if allowed and value not in allowed:
            raise ValueError(f"{type(settings).__name__}.{f.name} = {value!r} is not one of {allowed}")


def _check_positive(settings: object, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if not value > 0:
            raise ValueError(f"{type(settings).__name__}.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class EndpointSettings:
    """How the book's normally trained endpoints are trained (shared by every chapter, and by the
    adversarially trained endpoints for their weight decay and schedule)."""

    epochs: int = 3
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "epochs", "lr")


@dataclass(frozen=True)
class ConnectivitySettings:
    """Chapter 1, mode connectivity: curves between two normally trained endpoints, path evaluation, the plane.

    The curve's learning rate is higher than the endpoints': a bend moves w(t) by only its coefficient
    (0.5 at the middle of a one-bend Bezier curve) times its own step, so lr 0.2 gives the middle of the curve
    about the endpoints' effective step (0.2 · 0.5² = 0.05).
    """

    curve_epochs: int = 2
    curve_lr: float = 0.2
    curve_weight_decay: float = 5e-4
    curve_schedule: Schedule = "cosine"
    n_bn_images: int = 1_000  # from the defender's bonafide pool, for batch-norm statistics along the path
    n_points: int = 21  # values of t per path
    grid_size: int = 9  # points per axis of the 2-D surface
    plane_margin: float = 0.2
    n_plane_test: int = 500  # test images per point of the 2-D surface

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "curve_epochs", "curve_lr", "n_bn_images", "grid_size", "n_plane_test")
        if self.n_points < 2:
            raise ValueError(f"ConnectivitySettings.n_points must be at least 2 (the endpoints), got {self.n_points}")


@dataclass(frozen=True)
class PathRepairSettings:
    """The defender's side, shared by chapters 2 and 3: the held-out slice and the rule that choose t, path
    training (Bezier, one bend) and the baselines it is compared with."""

    holdout_fraction: float = 0.2  # share of each bonafide set kept aside to choose t
    n_t: int = 11  # candidate and plotted t, evenly spaced in [0, 1]
    t_tolerance: float = 3.0  # points of held-out accuracy the t rule may give up
    # path training; L2 penalty on w(t) as in the paper, stronger at this scale
    curve_steps: int = 500
    curve_batch_size: int = 64
    curve_lr: float = 0.3
    curve_schedule: Schedule = "cosine"
    curve_weight_decay: float = 1e-2
    # fine-tuning with the path's optimiser at the midpoint's effective step (curve_lr / 4), and with the
    # reference code's gentle recipe; the noisy model's scale
    finetune_lr: float = 0.075
    reference_finetune_lr: float = 0.01
    reference_finetune_weight_decay: float = 5e-4
    noisy_scale: float = 0.5

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "curve_steps", "curve_batch_size", "curve_lr", "finetune_lr", "reference_finetune_lr")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.n_t < 2:
            raise ValueError(f"n_t must be at least 2 (the endpoints), got {self.n_t}")


@dataclass(frozen=True)
class BackdoorSettings(PathRepairSettings):
    """Chapter 2, backdoor repair: the BadNets attack, the endpoints, path repair and its baselines."""

    # the attack: all-to-one BadNets with a white square near the bottom-right corner
    target: int = 1
    poison_rate: float = 0.05  # share of every non-target class that gets the trigger and the target label
    trigger_size: int = 3
    trigger_margin: int = 1
    # the attacker's training recipe for the two backdoored endpoints and their clean twins (same seeds, clean
    # data); the paper's attacker trained with its own learning rate, so these are the attacker's settings
    endpoint_epochs: int = 3
    endpoint_lr: float = 0.05
    # the defender: bonafide set sizes (the rest of the defender's settings: PathRepairSettings)
    bonafide_sizes: tuple[int, ...] = (2500, 1000, 500, 250, 50)
    # baselines only this chapter has: training from scratch, fine-pruning
    scratch_steps: int = 300
    scratch_lr: float = 0.05
    prune_tolerance: float = 4.0
    prune_step: int = 1
    prune_finetune_steps: int = 300
    one_model_size: int = 2500  # bonafide size for the one-tampered-model variant


@dataclass(frozen=True)
class FaultSettings(PathRepairSettings):
    """Chapter 3, error injection: fault sneaking into the two clean endpoints of chapter 1, path repair and its
    baselines, and single bit flips."""

    # the attack, on the attacker's data (the training split): S images sent to random wrong labels by editing
    # only the named parameters (plain gradient descent on a margin loss), while a keep-set stays correct
    n_sneak: int = 4
    n_keep: int = 5_000
    keep_sample: int | None = 250  # keep-set images per step (a fresh seeded sample); None: all of them
    param_names: tuple[str, ...] = ("fc.weight",)
    sneak_steps: int = 400
    sneak_lr: float = 0.1
    sneak_schedule: Schedule = "cosine"
    kappa: float = 1.0  # margin of the C&W loss, in logits
    # the defender: bonafide set sizes; t rule, path training and baselines as in chapter 2 (PathRepairSettings)
    bonafide_sizes: tuple[int, ...] = (2500, 250)
    # bit flips: exponent bit 30 of single weights drawn at random, one at a time
    flip_bit: int = 30
    n_flips: int = 40
    max_abs_weight: float = 1e3  # the range check: trained weights are orders of magnitude smaller


@dataclass(frozen=True)
class RobustnessSettings:
    """Chapter 4, evasion attacks and the robustness-loss barrier (shared with chapters 5 and 6 via recipes).

    Regular endpoints are the book's normally trained ones (:class:`EndpointSettings`); the rest is set here.
    """

    eps: float = 0.1  # threat model: l∞ budget in pixel units
    norm: Norm = "linf"
    # adversarially trained endpoints
    at_method: TrainingMethod = "fgsm_rs"  # "pgd" (Madry et al.) or "fgsm_rs" (Wong et al.; a third of PGD-5's cost)
    at_steps: int = 5  # PGD steps per training example (ignored by fgsm_rs)
    at_epochs: int = 6
    at_lr: float = 0.05
    # curves between the endpoints, trained on the training set
    curve_kind: CurveKind = "bezier"
    curve_steps: int = 1500
    curve_lr: float = 0.03
    robust_curve_steps: int = 1000
    # evaluation along the paths
    eval_steps: int = 10  # PGD-10
    n_eval: int = 500  # test images attacked per point of the path
    n_bn_images: int = 2_000  # defender's images for batch-norm statistics along the path
    n_points: int = 11  # values of t per path
    ensemble_size: int = 5  # models along the path averaged into an ensemble

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "eps", "at_epochs", "at_lr", "curve_steps", "curve_lr", "robust_curve_steps",
                        "n_eval", "n_bn_images")
        if self.at_method == "fgsm_rs" and self.norm != "linf":
            raise ValueError("at_method 'fgsm_rs' is an l∞ method; use 'pgd' for the l2 threat model")
        if self.n_points < 2 or self.ensemble_size < 2:
            raise ValueError(f"n_points and ensemble_size must be at least 2, got {self.n_points} and "
                             f"{self.ensemble_size}")


@dataclass(frozen=True)
class CurvatureSettings:
    """Chapter 5, input-Hessian curvature along the robustness paths (models and paths from the ``rb`` section)."""

    n_samples: int = 128  # clean test images (the first of those attacked in chapter 4) whose λ_max is averaged
    batch_size: int = 128  # samples per batched eigen-solve
    pairs: tuple[str, ...] = ("regular-adversarial", "regular-regular", "adversarial-adversarial")
    # the batched power iteration, checked against the exact (Gauss-Newton) values at one model
    n_power_check: int = 32  # samples
    power_iters: int = 100  # at most this many Hessian-vector products per sample
    power_tol: float = 1e-3  # estimated remaining relative error that stops a sample
    # the reference code's batch-averaged estimate (HessianFlow settings)
    reference_batch_size: int = 32
    reference_batches: int = 2
    reference_iters: int = 10
    reference_tol: float = 1e-2


@dataclass(frozen=True)
class FlatnessSettings:
    """Chapter 6, weight-space flatness and AWP (threat model, evaluation attack and path from the ``rb`` section).

    Robust overfitting needs more capacity than data: the small CNN underfits the robust objective on
    thousands of images, so AT and AWP train on a tiny set for many epochs.
    """

    # adversarial training, identical for AT and AWP apart from the weight perturbation
    n_train: int = 100  # training images (a seeded subset of the training split)
    clean_epochs: int = 10  # ordinary training first: PGD training from scratch can stall at chance on so few
    clean_lr: float = 0.01
    epochs: int = 100  # adversarial-training epochs
    batch_size: int = 20
    lr: float = 0.05
    schedule: Schedule = "garipov"  # constant for half the run, then decaying (AWP trains with step decays)
    weight_decay: float = 5e-4
    at_steps: int = 3  # PGD steps per training example
    gamma: float = 0.01  # AWP's layer-wise relative radius (Wu et al.: 0.01 for PGD-AT)
    warmup_epochs: int = 10  # AWP-free epochs first: AWP from the first AT epoch can collapse to chance here
    n_seeds: int = 2  # training seeds SEED, SEED + 1, ... (data fixed by SEED)
    # robust accuracy during training (the rb section's PGD)
    eval_every: int = 10  # epochs
    n_eval_test: int = 500  # test images; the robust training accuracy uses the whole training set
    # flatness of the final networks (Stutz et al. 2021)
    n_flatness: int = 500  # test images
    xi: float = 0.5  # average-case: relative radius of the random weight perturbation
    n_weight_samples: int = 5
    worst_xi: float = 0.003  # worst-case: relative radius of the jointly optimised weight perturbation
    worst_steps: int = 10
    # 1-D robust-loss curves along a filter-normalised direction (Li et al. 2018)
    alphas: tuple[float, ...] = (-0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    n_curve: int = 200  # test images
    # flatness along the regular-adversarial path
    path_points: int = 6
    path_weight_samples: int = 3
    n_path: int = 200  # test images

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "n_train", "epochs", "batch_size", "lr", "n_seeds", "eval_every", "n_eval_test",
                        "n_flatness", "n_weight_samples", "n_curve", "path_points", "path_weight_samples", "n_path")


@dataclass(frozen=True)
class Profile:
    """Everything a chapter needs to size its experiments; checked against the data set and the architecture
    when it is built."""

    name: ProfileName
    dataset: DatasetName
    model: Architecture
    width: int
    n_train: int
    n_bonafide_pool: int
    n_test: int
    batch_size: int
    eval_batch_size: int = 1000
    n_bends: int = 1  # bends of every trained curve of the book (one bend: the paper's quadratic Bezier)
    endpoints: EndpointSettings = field(default_factory=EndpointSettings)
    connectivity: ConnectivitySettings = field(default_factory=ConnectivitySettings)
    backdoor: BackdoorSettings = field(default_factory=BackdoorSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    curvature: CurvatureSettings = field(default_factory=CurvatureSettings)
    flatness: FlatnessSettings = field(default_factory=FlatnessSettings)

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C, H, W of the profile's images."""
        return DATASET_INFO[self.dataset].image_shape

    def architecture_kwargs(self) -> dict[str, object]:
        """The arguments that build the profile's architecture for its data (``models.build(cfg.model, **...)``)."""
        return models.architecture_kwargs(self.model, self.image_shape,
                                          width=self.width if self.model == "small_cnn" else None)

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "width", "n_train", "n_bonafide_pool", "n_test", "batch_size", "eval_batch_size")
        if self.n_bends < 1:
            raise ValueError(f"n_bends must be at least 1 (a trained curve needs a bend), got {self.n_bends}")
        info = DATASET_INFO[self.dataset]
        if self.n_train + self.n_bonafide_pool > info.n_train:
            raise ValueError(f"profile {self.name!r}: n_train + n_bonafide_pool = {self.n_train + self.n_bonafide_pool}"
                             f" exceeds the {info.n_train} training images of {self.dataset}")
        needs = {  # (what, how many, drawn from, available)
            "n_test": (self.n_test, "the test file", info.n_test),
            "backdoor.bonafide_sizes": (max(self.backdoor.bonafide_sizes), "n_bonafide_pool", self.n_bonafide_pool),
            "backdoor.one_model_size": (self.backdoor.one_model_size, "n_bonafide_pool", self.n_bonafide_pool),
            "faults.bonafide_sizes": (max(self.faults.bonafide_sizes), "n_bonafide_pool", self.n_bonafide_pool),
            "faults.n_sneak + n_keep": (self.faults.n_sneak + self.faults.n_keep, "n_train", self.n_train),
            "connectivity.n_bn_images": (self.connectivity.n_bn_images, "n_bonafide_pool", self.n_bonafide_pool),
            "connectivity.n_plane_test": (self.connectivity.n_plane_test, "n_test", self.n_test),
            "robustness.n_bn_images": (self.robustness.n_bn_images, "n_bonafide_pool", self.n_bonafide_pool),
            "robustness.n_eval": (self.robustness.n_eval, "n_test", self.n_test),
            "curvature.n_samples": (self.curvature.n_samples, "robustness.n_eval", self.robustness.n_eval),
            "flatness.n_train": (self.flatness.n_train, "n_train", self.n_train),
            "flatness.n_eval_test": (self.flatness.n_eval_test, "n_test", self.n_test),
            "flatness.n_flatness": (self.flatness.n_flatness, "n_test", self.n_test),
            "flatness.n_curve": (self.flatness.n_curve, "n_test", self.n_test),
            "flatness.n_path": (self.flatness.n_path, "n_test", self.n_test),
        }
        for what, (wanted, source, available) in needs.items():
            if wanted > available:
                raise ValueError(f"profile {self.name!r}: {what} = {wanted} exceeds {source} ({available})")
        names = models.parameter_names(self.model, **self.architecture_kwargs())
        unknown = [n for n in self.faults.param_names if n not in names]
        if unknown:
            raise ValueError(f"profile {self.name!r}: faults.param_names {unknown} are not parameters of "
                             f"{self.model}; it has {names}")


_CPU = Profile(name="cpu", dataset="fashion_mnist", model="small_cnn", width=16,
               n_train=20_000, n_bonafide_pool=5_000, n_test=2_000, batch_size=128)

_SMOKE = replace(
    _CPU, name="smoke", n_train=512, n_bonafide_pool=256, n_test=128, batch_size=64, width=4,
    endpoints=EndpointSettings(epochs=1),
    connectivity=ConnectivitySettings(curve_epochs=1, n_bn_images=128, n_points=3, grid_size=3, n_plane_test=64),
    backdoor=BackdoorSettings(endpoint_epochs=1, bonafide_sizes=(128, 32), n_t=3, curve_steps=4, scratch_steps=2,
                        prune_step=4, prune_finetune_steps=2, one_model_size=128),
    faults=FaultSettings(n_keep=64, keep_sample=32, sneak_steps=5, bonafide_sizes=(128,), n_t=3, curve_steps=4,
                     n_flips=4),
    robustness=RobustnessSettings(at_steps=2, at_epochs=1, curve_steps=8, robust_curve_steps=4,
                          eval_steps=2, n_eval=64, n_bn_images=128, n_points=3, ensemble_size=2),
    curvature=CurvatureSettings(n_samples=8, batch_size=8, n_power_check=4, power_iters=10, reference_batch_size=4),
    flatness=FlatnessSettings(n_train=32, clean_epochs=1, epochs=2, warmup_epochs=1, batch_size=16, at_steps=1, n_seeds=2,
                         eval_every=1, n_eval_test=32, n_flatness=32, n_weight_samples=1, worst_steps=1, alphas=(-0.2, 0.0, 0.2),
                         n_curve=16, path_points=2, path_weight_samples=1, n_path=16),
)

_PAPER = Profile(
    name="paper", dataset="cifar10", model="vgg16", width=64, n_train=45_000, n_bonafide_pool=5_000,
    n_test=10_000, batch_size=128,
    endpoints=EndpointSettings(epochs=100, lr=0.05, schedule="garipov"),
    connectivity=ConnectivitySettings(curve_epochs=100, curve_lr=0.015, curve_schedule="garipov", n_bn_images=5_000,
                                      n_points=31, grid_size=21, n_plane_test=2_000),
    backdoor=BackdoorSettings(poison_rate=0.1, endpoint_epochs=100, endpoint_lr=0.005, n_t=31, curve_steps=7_900,
                        curve_batch_size=128, curve_lr=0.01, curve_schedule="garipov", curve_weight_decay=1e-4,
                        finetune_lr=0.015, reference_finetune_lr=0.015, reference_finetune_weight_decay=1e-4,
                        scratch_steps=7_900, scratch_lr=0.02, prune_finetune_steps=1_500),
    faults=FaultSettings(n_keep=996, keep_sample=None, param_names=("classifier.6.weight",), sneak_steps=500,
                     bonafide_sizes=(2500, 50), n_t=31, curve_steps=2_340, curve_batch_size=128, curve_lr=0.01,
                     curve_schedule="garipov", curve_weight_decay=1e-4, finetune_lr=0.01,
                     reference_finetune_lr=0.01, reference_finetune_weight_decay=1e-4),
    robustness=RobustnessSettings(eps=8 / 255, at_method="pgd", at_steps=10, at_epochs=100, at_lr=0.05,
                          curve_steps=35_000, curve_lr=0.015, robust_curve_steps=35_000, eval_steps=10,
                          n_eval=10_000, n_bn_images=5_000, n_points=31, ensemble_size=11),
    curvature=CurvatureSettings(n_samples=1000, batch_size=200, n_power_check=200, power_tol=1e-4, reference_batch_size=200,
                         reference_batches=50),
    flatness=FlatnessSettings(n_train=45_000, clean_epochs=0, epochs=200, warmup_epochs=0, batch_size=128, lr=0.1, at_steps=10,
                         gamma=0.01, n_seeds=2, eval_every=10, n_eval_test=1000, n_flatness=1000, n_weight_samples=10,
                         worst_steps=20, n_curve=1000, path_points=11, path_weight_samples=5, n_path=1000),
)

_BY_NAME = {p.name: p for p in (_CPU, _SMOKE, _PAPER)}


def get(name: str) -> Profile:
    """The profile called ``name`` (``"cpu"``, ``"smoke"`` or ``"paper"``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}") from None
