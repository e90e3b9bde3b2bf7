"""How long each chapter would take in the ``paper`` profile on a measured GPU: step costs × step counts.

The counts below follow what each chapter trains and attacks (read off the chapters and ``mcar_lib.recipes``),
in units of one batch of 128 images: a plain training step, a curve training step, one PGD step (a forward
and an input-gradient backward pass) and one evaluation forward pass. A step on a batch of another size
counts in proportion to its size. Models a later chapter takes from the cache (chapter 3 reuses chapter 1's
endpoints, chapter 4 its regular endpoints, chapter 5 chapter 4's curves) are counted once, where the book
first trains them. Left out: data loading, batch-norm bookkeeping, pruning and flatness measurements, and
chapter 5's Hessian-vector products (not measured by the suite; that chapter is not estimated). So the
estimates are lower bounds of the order of magnitude, not predictions to the minute.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcar_lib import profiles  # noqa: E402
from mcar_lib.profiles import Profile  # noqa: E402

#: The measured cost of each unit of work (seconds), by the name the GPU suite gives it for VGG16.
COST_KEYS = {"plain": "plain_step_seconds", "curve": "curve_step_seconds", "pgd": "pgd_step_seconds",
             "forward": "forward_seconds"}
UNIT_BATCH = 128


def _batches(n_images: int) -> int:
    return math.ceil(n_images / UNIT_BATCH)


def work(cfg: Profile) -> dict[str, dict[str, float]]:
    """Units of work per chapter: ``{chapter: {"plain": ..., "curve": ..., "pgd": ..., "forward": ...}}``."""
    spe = math.ceil(cfg.n_train / cfg.batch_size) * cfg.batch_size / UNIT_BATCH  # one epoch, in batches of 128
    ep, mc, bd, ei, rb, fs = (cfg.endpoints, cfg.connectivity, cfg.backdoor, cfg.faults, cfg.robustness,
                              cfg.flatness)
    at_pgd = rb.at_steps if rb.at_method == "pgd" else 1  # FGSM-RS: one input gradient per training step
    out: dict[str, dict[str, float]] = {}

    # 1: two endpoints, a Bezier curve and a polygonal chain; both paths and the plane evaluated
    path_point = _batches(cfg.n_bn_images) + _batches(cfg.n_test)
    out["01_mode_connectivity"] = {
        "plain": 2 * ep.epochs * spe, "curve": 2 * mc.curve_epochs * spe, "pgd": 0.0,
        "forward": 2 * mc.n_points * path_point + mc.grid_size ** 2 * (_batches(cfg.n_bn_images)
                                                                      + _batches(mc.n_plane_test))}

    # 2: four endpoints (two backdoored, two clean twins); per bonafide size a path repair, two fine-tunings,
    # training from scratch and fine-pruning's fine-tuning; the one-tampered-model variant (a fine-tuning, a path)
    scale = bd.path.batch_size / UNIT_BATCH
    # every (size, repetition) trains one path per cross-validation fold and a final one on all N images
    sizes = sum(cfg.n_repeats if n in bd.repeated_sizes else 1 for n in bd.bonafide_sizes) * (bd.folds + 1)
    out["02_backdoor_repair"] = {
        "plain": 4 * bd.endpoint_epochs * spe
        + scale * (sizes * (2 * bd.path.steps + bd.scratch_steps + bd.prune_finetune_steps) + bd.path.steps),
        "curve": scale * (sizes + 1) * bd.path.steps, "pgd": 0.0,
        "forward": (sizes + 1) * bd.n_t * 2 * _batches(cfg.n_test)}  # clean and triggered test images per point

    # 3: the endpoints come from chapter 1; fault sneaking on both; per bonafide size a path repair and two
    # fine-tunings; the one-model variant and the path from a sanitised endpoint
    scale = ei.path.batch_size / UNIT_BATCH
    sizes = sum(cfg.n_repeats if n in ei.repeated_sizes else 1 for n in ei.bonafide_sizes) * (ei.folds + 1)
    sneak_batch = ei.n_sneak + (ei.keep_sample if ei.keep_sample is not None else ei.n_keep)
    out["03_fault_injection"] = {
        "plain": 2 * ei.sneak_steps * sneak_batch / UNIT_BATCH + scale * (sizes * 2 + 1) * ei.path.steps,
        "curve": scale * (sizes + 2) * ei.path.steps, "pgd": 0.0,
        "forward": (sizes + 2) * ei.n_t * _batches(cfg.n_test)}

    # 4: two adversarially trained endpoints; curves for three pairs (standard loss) and one robust curve; four
    # paths attacked at every point; an ensemble per pair and its members attacked
    attack_point = _batches(rb.n_eval) * rb.eval_steps
    out["04_robustness_barrier"] = {
        "plain": 2 * rb.at_epochs * spe, "curve": 3 * rb.curve_steps + rb.robust_curve_steps,
        "pgd": 2 * rb.at_epochs * spe * at_pgd + rb.robust_curve_steps * at_pgd
        + 4 * rb.n_points * attack_point + 3 * 2 * rb.ensemble_size * attack_point,
        "forward": 4 * rb.n_points * (_batches(cfg.n_test) + _batches(cfg.n_bn_images))}

    # 6: AT and AWP, n_seeds each; AWP adds one forward and backward per step after its warm-up; robust
    # accuracy on the training set and the tracked test images every eval_every epochs
    per_epoch = math.ceil(fs.n_train / fs.batch_size) * fs.batch_size / UNIT_BATCH
    runs = 2 * cfg.n_repeats
    evaluations = fs.epochs // fs.eval_every
    out["06_flatness_awp"] = {
        "plain": runs * (fs.clean_epochs + fs.epochs) * per_epoch
        + cfg.n_repeats * (fs.epochs - fs.warmup_epochs) * per_epoch,
        "curve": 0.0,
        "pgd": runs * fs.epochs * per_epoch * fs.at_steps
        + runs * evaluations * (_batches(fs.n_train) + _batches(fs.n_eval_test)) * rb.eval_steps,
        "forward": 0.0}
    return out


def estimate_seconds(costs: dict[str, float], profile: str = "paper") -> dict[str, float]:
    """Seconds per chapter: the units of :func:`work` for ``profile`` times the measured ``costs`` (keys of
    :data:`COST_KEYS`' values, e.g. ``plain_step_seconds``). Chapters whose costs are all known."""
    seconds = {}
    for chapter, units in work(profiles.get(profile)).items():
        seconds[chapter] = sum(count * costs[COST_KEYS[kind]] for kind, count in units.items())
    return seconds


__all__ = ["COST_KEYS", "estimate_seconds", "work"]
