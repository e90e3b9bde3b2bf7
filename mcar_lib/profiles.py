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
from mcar_lib.repair import PathTraining, TSelection, default_ts
from mcar_lib.train import Schedule

ProfileName = Literal["cpu", "smoke", "gpu", "gpu_smoke", "paper", "paper_smoke", "paper_svhn", "paper_svhn_smoke"]
PROFILES: tuple[str, ...] = typing.get_args(ProfileName)
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
    n_points: int = 21  # values of t per path
    grid_size: int = 9  # points per axis of the 2-D surface
    plane_margin: float = 0.2
    n_plane_test: int = 500  # test images per point of the 2-D surface

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "curve_epochs", "curve_lr", "grid_size", "n_plane_test")
        if self.n_points < 2:
            raise ValueError(f"ConnectivitySettings.n_points must be at least 2 (the endpoints), got {self.n_points}")


@dataclass(frozen=True)
class PathRepairSettings:
    """The defender's side, shared by chapters 2 and 3: how the repair path is trained, how t is chosen without
    test data (k-fold cross-validation on the bonafide set; the single held-out slice of the first edition for
    comparison), and the baselines it is compared with, all on the same N bonafide images."""

    # path training (Bezier, one bend): the same budget in steps for every N; an L2 penalty on w(t) as in the
    # paper, a hundred times stronger at this scale (weaker penalties leave the backdoor in the middle)
    path: PathTraining = PathTraining(steps=500, batch_size=64, lr=0.3, weight_decay=1e-2, schedule="cosine")
    folds: int = 3  # k of the k-fold cross-validation that chooses t (the paper used 5)
    holdout_fraction: float = 0.2  # the single-slice rule, shown for comparison
    n_t: int = 11  # candidate and plotted t, evenly spaced in [0, 1]
    t_tolerance: float = 3.0  # points of estimated accuracy the t rule may give up
    # fine-tuning with the path's budget, batch, schedule and L2 at the midpoint's effective step (lr / 4), and
    # with the reference code's gentle recipe; the noisy model's scale
    finetune_lr: float = 0.075
    reference_finetune_lr: float = 0.01
    reference_finetune_weight_decay: float = 5e-4
    noisy_scale: float = 0.5

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "finetune_lr", "reference_finetune_lr")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.n_t < 2:
            raise ValueError(f"n_t must be at least 2 (the endpoints), got {self.n_t}")
        TSelection(folds=self.folds, tolerance=self.t_tolerance)  # checks the values

    @property
    def ts(self) -> tuple[float, ...]:
        """The candidate (and plotted) values of t."""
        return default_ts(self.n_t)

    @property
    def selection(self) -> TSelection:
        """The book's rule: k-fold cross-validated accuracy, farthest t within the tolerance."""
        return TSelection(folds=self.folds, ts=self.ts, tolerance=self.t_tolerance)

    @property
    def single_slice_selection(self) -> TSelection:
        """The first edition's rule: one held-out slice of the bonafide set, the path trained on the rest."""
        return TSelection(folds=0, holdout_fraction=self.holdout_fraction, ts=self.ts, tolerance=self.t_tolerance)


@dataclass(frozen=True)
class BackdoorSettings(PathRepairSettings):
    """Chapter 2, backdoor repair: the BadNets attack, the endpoints, path repair and its baselines, the
    path-aware attacker, the relapse test and the near-endpoint study."""

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
    bonafide_sizes: tuple[int, ...] = (2500, 500, 50)
    headline_size: int = 500  # the paper's claim is judged here: ASR <= 10 % at <= 5 points below clean
    repeated_sizes: tuple[int, ...] = (2500, 500)  # sizes repeated n_repeats times (the others: repetition 0)
    # baselines only this chapter has: training from scratch, pruning (+ fine-tuning)
    scratch_steps: int = 300
    scratch_lr: float = 0.05
    prune_tolerance: float = 4.0
    prune_step: int = 1
    prune_finetune_steps: int = 300
    one_model_size: int = 2500  # bonafide size for the one-tampered-model variant
    # the path-aware attacker: a curve trained on its poisoned data, two interior points released
    adaptive_steps: int = 600
    adaptive_release: tuple[float, float] = (0.25, 0.75)
    # relapse: a returning attacker fine-tunes on a handful of poisoned images mixed with clean ones
    relapse_poisoned: int = 20
    relapse_clean: int = 180
    relapse_steps: int = 60
    relapse_every: int = 5
    relapse_lr: float = 0.01
    # near-endpoint repair: the path at N = max(bonafide_sizes) trained for these budgets (steps), with the book's
    # recipe and with the paper's (its learning rate, L2 and schedule, for its budget in steps)
    trace_steps: tuple[int, ...] = (250, 500, 2000)
    paper_path: PathTraining = PathTraining(steps=7900, batch_size=64, lr=0.01, weight_decay=1e-4, schedule="garipov")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.headline_size not in self.bonafide_sizes or self.one_model_size not in self.bonafide_sizes:
            raise ValueError("headline_size and one_model_size must be among bonafide_sizes")
        if not set(self.repeated_sizes) <= set(self.bonafide_sizes) or self.headline_size not in self.repeated_sizes:
            raise ValueError("repeated_sizes must be among bonafide_sizes and include headline_size")
        if self.relapse_every > self.relapse_steps:
            raise ValueError("relapse_every must not exceed relapse_steps")


@dataclass(frozen=True)
class FaultSettings(PathRepairSettings):
    """Chapter 3, error injection: fault sneaking into the clean endpoints of chapter 1 (in the classifier and in a
    convolution), path repair and its baselines, and single bit flips."""

    # the attack, on the attacker's data (the training split): S images sent to random wrong labels by editing
    # only the named parameters (plain gradient descent on a margin loss), while a keep-set stays correct
    n_sneak: int = 16
    n_keep: int = 5_000
    keep_sample: int | None = 250  # keep-set images per step (a fresh seeded sample); None: all of them
    param_names: tuple[str, ...] = ("fc.weight",)  # the classifier site
    sneak_steps: int = 400
    sneak_lr: float = 0.1
    sneak_schedule: Schedule = "cosine"
    kappa: float = 1.0  # margin of the C&W loss, in logits
    # the convolution site: a convolution changes every image's features, so the keep-set weighs more there
    conv_param_names: tuple[str, ...] = ("conv2.weight",)
    conv_sneak_lr: float = 0.05
    conv_keep_weight: float = 5.0
    # the defender: bonafide set sizes; t rule and baselines as in chapter 2 (PathRepairSettings), with a shorter
    # training budget than chapter 2's (the baselines get the same) to keep the chapter within its CPU time
    path: PathTraining = PathTraining(steps=300, batch_size=64, lr=0.3, weight_decay=1e-2, schedule="cosine")
    bonafide_sizes: tuple[int, ...] = (2500, 500, 50)
    repeated_sizes: tuple[int, ...] = (500,)  # sizes repeated n_repeats times (the others: repetition 0)
    conv_sizes: tuple[int, ...] = (500,)  # sizes at which the convolution site is repaired
    # bit flips: exponent bit 30 of single weights drawn at random, one at a time
    flip_bit: int = 30
    n_flips: int = 100  # 40 random weights found no destroying flip for seed 2 (worst 21.9 %); 100 found 15 below 50 %
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
    at_lr: float = 0.02  # at 0.05, FGSM-RS training diverged to chance level in the first epoch for 3 of 5 inits
    # curves between the endpoints, trained on the training set
    curve_kind: CurveKind = "bezier"
    curve_steps: int = 1500
    curve_lr: float = 0.03
    robust_curve_steps: int = 1000
    # evaluation along the paths
    eval_steps: int = 10  # PGD-10, along the paths
    n_eval: int = 500  # test images attacked per point of the path
    # the endpoints' robustness under a converged attack: PGD with more steps (step eps / 20) and restarts
    strong_steps: int = 50
    strong_restarts: int = 5
    n_points: int = 11  # values of t per path
    ensemble_size: int = 5  # models along the path averaged into an ensemble

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "eps", "at_epochs", "at_lr", "curve_steps", "curve_lr", "robust_curve_steps",
                        "n_eval", "strong_steps", "strong_restarts")
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
    lr: float = 0.02  # at 0.05, PGD training collapsed to chance level for 2 of 3 seeds (SEED = 2), AWP with it
    schedule: Schedule = "garipov"  # constant for half the run, then decaying (AWP trains with step decays)
    weight_decay: float = 5e-4
    at_steps: int = 3  # PGD steps per training example
    gamma: float = 0.01  # AWP's layer-wise relative radius (Wu et al.: 0.01 for PGD-AT)
    warmup_epochs: int = 10  # AWP-free epochs first: AWP from the first AT epoch can collapse to chance here
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
        _check_positive(self, "n_train", "epochs", "batch_size", "lr", "eval_every", "n_eval_test",
                        "n_flatness", "n_weight_samples", "n_curve", "path_points", "path_weight_samples", "n_path")


@dataclass(frozen=True)
class Profile:
    """Everything a chapter needs to size its experiments; checked against the data set and the architecture
    when it is built."""

    name: ProfileName
    dataset: DatasetName
    model: Architecture
    width: int  # channels of the first layer: small_cnn 16, vgg16 64 and preresnet26 16 in their usual sizes
    n_train: int
    n_bonafide_pool: int
    n_test: int
    batch_size: int
    eval_batch_size: int = 1000
    n_bends: int = 1  # bends of every trained curve of the book (one bend: the paper's quadratic Bezier)
    n_bn_images: int = 2_000  # the defender's images (bonafide pool) for batch-norm statistics along a path
    n_repeats: int = 3  # independent repetitions (seeds SEED, SEED + 1, ...) behind every headline mean ± sd
    endpoints: EndpointSettings = field(default_factory=EndpointSettings)
    connectivity: ConnectivitySettings = field(default_factory=ConnectivitySettings)
    backdoor: BackdoorSettings = field(default_factory=BackdoorSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    robustness: RobustnessSettings = field(default_factory=RobustnessSettings)
    curvature: CurvatureSettings = field(default_factory=CurvatureSettings)
    flatness: FlatnessSettings = field(default_factory=FlatnessSettings)

    @property
    def is_smoke(self) -> bool:
        """Whether this is a seconds-long run of a code path (claims are shown but not enforced)."""
        return self.name.endswith("smoke")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """C, H, W of the profile's images."""
        return DATASET_INFO[self.dataset].image_shape

    def architecture_kwargs(self) -> dict[str, object]:
        """The arguments that build the profile's architecture for its data (``models.build(cfg.model, **...)``)."""
        return models.architecture_kwargs(self.model, self.image_shape, width=self.width)

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_positive(self, "width", "n_train", "n_bonafide_pool", "n_test", "batch_size", "eval_batch_size",
                        "n_bn_images", "n_repeats")
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
            "n_bn_images": (self.n_bn_images, "n_bonafide_pool", self.n_bonafide_pool),
            "connectivity.n_plane_test": (self.connectivity.n_plane_test, "n_test", self.n_test),
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
        for field_name in ("param_names", "conv_param_names"):
            unknown = [n for n in getattr(self.faults, field_name) if n not in names]
            if unknown:
                raise ValueError(f"profile {self.name!r}: faults.{field_name} {unknown} are not parameters of "
                                 f"{self.model}; it has {names}")


_CPU = Profile(name="cpu", dataset="fashion_mnist", model="small_cnn", width=16,
               n_train=20_000, n_bonafide_pool=5_000, n_test=2_000, batch_size=128)

_SMOKE = replace(
    _CPU, name="smoke", n_train=512, n_bonafide_pool=256, n_test=128, batch_size=64, width=4, n_bn_images=128,
    n_repeats=2,
    endpoints=EndpointSettings(epochs=1),
    connectivity=ConnectivitySettings(curve_epochs=1, n_points=3, grid_size=3, n_plane_test=64),
    backdoor=BackdoorSettings(endpoint_epochs=1, bonafide_sizes=(128, 32), headline_size=32, repeated_sizes=(32,),
                              n_t=3,
                              path=PathTraining(steps=4, batch_size=32), folds=2, scratch_steps=2, prune_step=4,
                              prune_finetune_steps=2, one_model_size=128, adaptive_steps=2, relapse_poisoned=4,
                              relapse_clean=12, relapse_steps=4, relapse_every=2, trace_steps=(2, 4),
                              paper_path=PathTraining(steps=4, batch_size=32, lr=0.01, weight_decay=1e-4,
                                                      schedule="garipov")),
    faults=FaultSettings(n_sneak=4, n_keep=64, keep_sample=32, sneak_steps=5, bonafide_sizes=(128, 32),
                         repeated_sizes=(32,), conv_sizes=(32,), n_t=3, path=PathTraining(steps=4, batch_size=32),
                         folds=2, n_flips=4),
    robustness=RobustnessSettings(at_steps=2, at_epochs=1, curve_steps=8, robust_curve_steps=4, eval_steps=2,
                                  n_eval=64, n_points=3, ensemble_size=2, strong_steps=3, strong_restarts=2),
    curvature=CurvatureSettings(n_samples=8, batch_size=8, n_power_check=4, power_iters=10, reference_batch_size=4),
    flatness=FlatnessSettings(n_train=32, clean_epochs=1, epochs=2, warmup_epochs=1, batch_size=16, at_steps=1,
                              eval_every=1, n_eval_test=32, n_flatness=32, n_weight_samples=1, worst_steps=1,
                              alphas=(-0.2, 0.0, 0.2), n_curve=16, path_points=2, path_weight_samples=1, n_path=16),
)

# The paper's settings (a GPU profile): CIFAR-10 and VGG16 (no batch norm), the reference code's schedules and
# budgets; one repetition (three would take days on a free GPU).
_PAPER_PATH = PathTraining(steps=7_900, batch_size=128, lr=0.01, weight_decay=1e-4, schedule="garipov")
_PAPER_SIZES = (2500, 1000, 500, 250, 50)  # the paper's bonafide sizes (the CPU profile keeps three of them)
_PAPER = Profile(
    name="paper", dataset="cifar10", model="vgg16", width=64, n_train=45_000, n_bonafide_pool=5_000,
    n_test=10_000, batch_size=128, n_bn_images=5_000, n_repeats=1,
    endpoints=EndpointSettings(epochs=100, lr=0.05, schedule="garipov"),
    connectivity=ConnectivitySettings(curve_epochs=100, curve_lr=0.015, curve_schedule="garipov", n_points=31,
                                      grid_size=21, n_plane_test=2_000),
    backdoor=BackdoorSettings(poison_rate=0.1, endpoint_epochs=100, endpoint_lr=0.005,
                              bonafide_sizes=_PAPER_SIZES, n_t=31, path=_PAPER_PATH,
                              folds=5, finetune_lr=0.015, reference_finetune_lr=0.015,
                              reference_finetune_weight_decay=1e-4, scratch_steps=7_900, scratch_lr=0.02,
                              prune_finetune_steps=1_500, adaptive_steps=7_900, trace_steps=(1_000, 2_000, 7_900),
                              paper_path=_PAPER_PATH),
    faults=FaultSettings(n_keep=996, keep_sample=None, bonafide_sizes=_PAPER_SIZES,
                         param_names=("classifier.6.weight",),
                         conv_param_names=("features.26.weight",), sneak_steps=500, n_t=31,
                         path=replace(_PAPER_PATH, steps=2_340), folds=5, finetune_lr=0.01, reference_finetune_lr=0.01,
                         reference_finetune_weight_decay=1e-4),
    robustness=RobustnessSettings(eps=8 / 255, at_method="pgd", at_steps=10, at_epochs=100, at_lr=0.05,
                                  curve_steps=35_000, curve_lr=0.015, robust_curve_steps=35_000, eval_steps=10,
                                  n_eval=10_000, n_points=31, ensemble_size=11),
    curvature=CurvatureSettings(n_samples=1000, batch_size=200, n_power_check=200, power_tol=1e-4,
                                reference_batch_size=200, reference_batches=50),
    flatness=FlatnessSettings(n_train=45_000, clean_epochs=0, epochs=200, warmup_epochs=0, batch_size=128, lr=0.1,
                              at_steps=10, gamma=0.01, eval_every=10, n_eval_test=1000, n_flatness=1000,
                              n_weight_samples=10, worst_steps=20, n_curve=1000, path_points=11, path_weight_samples=5,
                              n_path=1000),
)

def tiny(profile: Profile, name: str) -> Profile:
    """A seconds-long version of ``profile`` that runs every chapter's code path with the same data set,
    architecture (an eighth of its width: the same layers and parameter names), loaders and schedules (CI runs
    the paper's code this way, on synthetic CIFAR-10 and SVHN files)."""
    return replace(
        profile, name=name, width=max(1, profile.width // 8), n_train=192, n_bonafide_pool=64, n_test=64,
        batch_size=32, eval_batch_size=64,
        n_bn_images=64, n_repeats=2,
        endpoints=replace(profile.endpoints, epochs=1),
        connectivity=replace(profile.connectivity, curve_epochs=1, n_points=3, grid_size=3, n_plane_test=32),
        backdoor=replace(profile.backdoor, endpoint_epochs=1, bonafide_sizes=(64, 16), headline_size=16,
                         repeated_sizes=(16,), n_t=3,
                         path=replace(profile.backdoor.path, steps=2, batch_size=16), folds=2, scratch_steps=2,
                         prune_step=16, prune_finetune_steps=2, one_model_size=64, adaptive_steps=2,
                         relapse_poisoned=4, relapse_clean=12, relapse_steps=4, relapse_every=2, trace_steps=(2, 3),
                         paper_path=replace(profile.backdoor.paper_path, steps=2, batch_size=16)),
        faults=replace(profile.faults, n_sneak=4, n_keep=32, keep_sample=16, sneak_steps=3, bonafide_sizes=(64, 16),
                       repeated_sizes=(16,), conv_sizes=(16,), n_t=3,
                       path=replace(profile.faults.path, steps=2, batch_size=16), folds=2, n_flips=3),
        robustness=replace(profile.robustness, at_steps=1, at_epochs=1, curve_steps=3, robust_curve_steps=2,
                           eval_steps=1, n_eval=32, n_points=3, ensemble_size=2, strong_steps=2, strong_restarts=1),
        curvature=replace(profile.curvature, n_samples=4, batch_size=4, n_power_check=2, power_iters=3,
                          reference_batch_size=2, reference_batches=1),
        flatness=replace(profile.flatness, n_train=16, clean_epochs=1, epochs=2, warmup_epochs=1, batch_size=8,
                         at_steps=1, eval_every=1, n_eval_test=16, n_flatness=16, n_weight_samples=1, worst_steps=1,
                         alphas=(-0.2, 0.0, 0.2), n_curve=8, path_points=2, path_weight_samples=1, n_path=8),
    )


# The paper's SVHN setting: the pre-activation ResNet-26 the reference code actually trained (batch norm), the
# reference code's SVHN learning rates.
_PAPER_SVHN = replace(
    _PAPER, name="paper_svhn", dataset="svhn", model="preresnet26", width=16, n_train=65_000, n_bonafide_pool=5_000,
    n_test=10_000,
    backdoor=replace(_PAPER.backdoor, endpoint_lr=0.02),
    faults=replace(_PAPER.faults, param_names=("fc.weight",), conv_param_names=("layer3.3.conv2.weight",),
                   path=replace(_PAPER.faults.path, lr=0.015)),
)

# Between the laptop and the paper: the paper's ResNet on all of Fashion-MNIST padded to 32×32, sized for a free
# Colab GPU (a T4: at most about 15 minutes per chapter, estimated from step costs; not yet measured on one).
_GPU = Profile(
    name="gpu", dataset="fashion_mnist32", model="preresnet26", width=16, n_train=50_000, n_bonafide_pool=10_000,
    n_test=10_000, batch_size=128, eval_batch_size=1000, n_bn_images=5_000, n_repeats=3,
    endpoints=EndpointSettings(epochs=6, lr=0.1, schedule="cosine"),
    connectivity=ConnectivitySettings(curve_epochs=3, curve_lr=0.2, n_points=21, grid_size=11, n_plane_test=2_000),
    backdoor=BackdoorSettings(endpoint_epochs=6, endpoint_lr=0.1, folds=5,
                              path=PathTraining(steps=2_000, batch_size=128, lr=0.2, weight_decay=5e-3),
                              finetune_lr=0.05, scratch_steps=2_000, prune_finetune_steps=1_000, adaptive_steps=2_000,
                              trace_steps=(500, 2_000, 8_000),
                              paper_path=PathTraining(steps=7_900, batch_size=128, lr=0.01, weight_decay=1e-4,
                                                      schedule="garipov")),
    faults=FaultSettings(param_names=("fc.weight",), conv_param_names=("layer3.3.conv2.weight",), folds=5,
                         path=PathTraining(steps=2_000, batch_size=128, lr=0.2, weight_decay=5e-3), finetune_lr=0.05),
    robustness=RobustnessSettings(at_epochs=8, at_lr=0.1, curve_steps=4_000, curve_lr=0.05, robust_curve_steps=2_000,
                                  n_eval=2_000),
    curvature=CurvatureSettings(n_samples=512, batch_size=256),
    flatness=FlatnessSettings(n_train=500, epochs=100, batch_size=64, n_eval_test=1_000, n_flatness=1_000,
                              n_curve=500, n_path=500),
)

_BY_NAME = {p.name: p for p in (_CPU, _SMOKE, _GPU, tiny(_GPU, "gpu_smoke"), _PAPER, tiny(_PAPER, "paper_smoke"),
                                _PAPER_SVHN, tiny(_PAPER_SVHN, "paper_svhn_smoke"))}


def get(name: str) -> Profile:
    """The profile called ``name`` (one of :data:`PROFILES`)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {PROFILES}") from None
