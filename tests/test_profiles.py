"""Profiles: every named profile builds and passes its own checks, its architecture fits its data, ``tiny`` keeps
what a code-path run must keep (data set, architecture's layers, schedules, threat model), and bad settings are
refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from mcar_lib import models, profiles, repair
from mcar_lib.data import DATASET_INFO
from mcar_lib.profiles import BackdoorSettings, FaultSettings, Profile, RobustnessSettings


def leaves(settings: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted name, value) of a settings object, nested settings included."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


@pytest.mark.parametrize("name", profiles.PROFILES)
def test_every_profile_builds_validates_and_fits_its_data(name: str) -> None:
    cfg = profiles.get(name)
    assert cfg.name == name
    assert dataclasses.replace(cfg) == cfg  # building it again runs every check again, and passes
    assert cfg.image_shape == DATASET_INFO[cfg.dataset].image_shape
    with torch.device("meta"):  # shapes only, no memory, no time
        model = models.build(cfg.model, **cfg.architecture_kwargs())
        logits = model(torch.zeros(2, *cfg.image_shape))
    assert tuple(logits.shape) == (2, 10)
    names = dict(model.named_parameters())
    for site in (cfg.faults.param_names, cfg.faults.conv_param_names):
        assert all(n in names for n in site)
    for section in (cfg.backdoor, cfg.faults):
        assert section.selection.folds == section.folds and section.selection.ts == repair.default_ts(section.n_t)
        assert isinstance(section.path, repair.PathTraining)
    assert cfg.n_bn_images <= cfg.n_bonafide_pool and cfg.n_repeats >= 1


def test_an_unknown_profile_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="choose one of") as info:
        profiles.get("laptop")
    assert all(name in str(info.value) for name in profiles.PROFILES)


@pytest.mark.parametrize("name", profiles.PROFILES)
def test_is_smoke_means_the_name_ends_in_smoke(name: str) -> None:
    assert profiles.get(name).is_smoke == name.endswith("smoke")


def test_smoke_and_full_profiles() -> None:
    assert profiles.get("smoke").is_smoke and not profiles.get("cpu").is_smoke and not profiles.get("paper").is_smoke
    assert profiles.tiny(profiles.get("cpu"), "smoke").is_smoke  # a name ending in "smoke" (names are checked)


#: Fields (by their own name, in any section) a code-path run must keep: schedules, curve families, the threat model.
KEPT = {"schedule", "curve_schedule", "sneak_schedule", "kind", "curve_kind", "at_method", "norm", "eps", "target",
        "flip_bit"}


@pytest.mark.parametrize("name", [n for n in profiles.PROFILES if not n.endswith("smoke")])
def test_tiny_keeps_data_architecture_schedules_and_threat_model(name: str) -> None:
    full = profiles.get(name)
    small = profiles.tiny(full, "smoke")
    assert (small.dataset, small.model) == (full.dataset, full.model) and small.width <= full.width
    # the same layers under the same names (a narrower network may be cheaper, but runs the same code path)
    assert models.parameter_names(small.model, **small.architecture_kwargs()) == \
        models.parameter_names(full.model, **full.architecture_kwargs())
    full_leaves, small_leaves = dict(leaves(full)), dict(leaves(small))
    kept = [key for key in full_leaves if key.rsplit(".", 1)[-1] in KEPT]
    assert {key.rsplit(".", 1)[-1] for key in kept} == KEPT
    for key in kept:
        assert small_leaves[key] == full_leaves[key], key
    for size in ("n_train", "n_bonafide_pool", "n_test", "n_bn_images"):
        assert getattr(small, size) <= getattr(full, size), size
    assert small.endpoints.epochs <= full.endpoints.epochs
    assert small.backdoor.path.steps <= full.backdoor.path.steps and small.faults.path.steps <= full.faults.path.steps


@pytest.mark.parametrize("name", [n for n in profiles.PROFILES if n.endswith("_smoke")])
def test_the_named_code_path_profiles_are_tiny_versions_of_their_full_profile(name: str) -> None:
    full = profiles.get(name.removesuffix("_smoke"))
    assert profiles.get(name) == profiles.tiny(full, name)


def test_the_defenders_selection_rules_follow_the_section() -> None:
    section = BackdoorSettings(n_t=5, folds=4, t_tolerance=2.0, holdout_fraction=0.25)
    assert section.ts == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert section.selection == repair.TSelection(folds=4, ts=section.ts, tolerance=2.0)
    single = section.single_slice_selection
    assert (single.folds, single.holdout_fraction, single.ts, single.tolerance) == (0, 0.25, section.ts, 2.0)


def _cpu(**changes: Any) -> Profile:
    return dataclasses.replace(profiles.get("cpu"), **changes)


@pytest.mark.parametrize("build, message", [
    (lambda: _cpu(n_bn_images=10_000), "n_bn_images = 10000 exceeds n_bonafide_pool"),
    (lambda: _cpu(n_repeats=0), "n_repeats must be positive"),
    (lambda: _cpu(dataset="mnist"), "dataset = 'mnist' is not one of"),
    (lambda: _cpu(faults=FaultSettings(conv_param_names=("conv9.weight",))), r"conv_param_names \['conv9.weight'\]"),
    (lambda: _cpu(faults=FaultSettings(n_sneak=16, n_keep=30_000)), "n_sneak \\+ n_keep"),
    (lambda: BackdoorSettings(folds=1), "folds must be 0 .* or at least 2"),
    (lambda: BackdoorSettings(t_tolerance=-1.0), "tolerance"),
    (lambda: BackdoorSettings(headline_size=123), "headline_size"),
    (lambda: BackdoorSettings(relapse_every=100, relapse_steps=60), "relapse_every"),
    (lambda: BackdoorSettings(path=repair.PathTraining(steps=0)), "positive"),
    (lambda: BackdoorSettings(n_t=1), "n_t must be at least 2"),
    (lambda: RobustnessSettings(strong_steps=0), "strong_steps must be positive"),
    (lambda: RobustnessSettings(strong_restarts=0), "strong_restarts must be positive"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_settings_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
