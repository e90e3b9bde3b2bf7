"""benchmarks/run.py and benchmarks/paper_estimate.py without timing anything: the per-step stamps, the
hand-written loop that train.fit is compared with, the GPU suite's clean skip without CUDA, and the paper-profile
estimate's step counts."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mcar_lib import profiles, train

from helpers import batch, tiny_cnn

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


run = _load("run")
estimate = _load("paper_estimate")


def test_stamps_count_the_steps_of_a_training_loop():
    stamped = run.StampedBatches(batch(8), 4, torch.device("cpu"))
    train.fit(tiny_cnn(0), stamped, epochs=1, show_progress=False)
    assert len(stamped.stamps) == 5  # before each of the 4 steps, and after the last
    for clock in (0, 1):  # wall-clock and CPU time
        assert len(stamped.step_seconds(clock)) == 3 and all(s >= 0 for s in stamped.step_seconds(clock))
    seen = []
    result = run.per_step_interleaved({"a": lambda b: seen.append(("a", len(list(b)))),
                                       "b": lambda b: seen.append(("b", len(list(b))))},
                                      batch(4), torch.device("cpu"), steps=3, repeats=2)
    assert seen == [("a", 3), ("b", 3)] * 2 and set(result) == {"a", "b"}


def test_the_hand_written_loop_does_what_fit_does():
    """The two sides of fit_step_ratio train the same network to the same weights."""
    model = tiny_cnn(0)
    batches = [batch(8, seed=s) for s in range(3)]
    sgd = train.SGDConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant")
    by_fit, _ = train.fit(model, batches, epochs=1, sgd=sgd, show_progress=False)
    by_hand = run.hand_written_loop(model, sgd)(batches)
    for (name, a), b in zip(by_fit.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), name


def test_cuda_suite_skips_cleanly_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "results-cuda.json"
    monkeypatch.setattr(sys, "argv", ["run.py", "--device", "cuda", "--output", str(out)])
    run.main()
    assert not out.exists()
    assert "CUDA is not available" in capsys.readouterr().out


def test_paper_estimate_counts():
    cfg = profiles.get("paper")
    work = estimate.work(cfg)
    assert set(work) == {"01_mode_connectivity", "02_backdoor_repair", "03_fault_injection", "04_robustness_barrier",
                         "06_flatness_awp"}  # chapter 5's Hessian work is not measured
    steps_per_epoch = -(-cfg.n_train // cfg.batch_size)
    assert work["01_mode_connectivity"]["plain"] == 2 * cfg.endpoints.epochs * steps_per_epoch
    assert work["01_mode_connectivity"]["curve"] == 2 * cfg.connectivity.curve_epochs * steps_per_epoch
    rb = cfg.robustness
    assert work["04_robustness_barrier"]["curve"] == 3 * rb.curve_steps + rb.robust_curve_steps
    costs = {key: 1.0 for key in estimate.COST_KEYS.values()}
    seconds = estimate.estimate_seconds(costs)
    assert seconds == pytest.approx({ch: sum(units.values()) for ch, units in work.items()})
    doubled = estimate.estimate_seconds({k: 2 * v for k, v in costs.items()})
    assert doubled == pytest.approx({ch: 2 * s for ch, s in seconds.items()})
    smoke = estimate.estimate_seconds(costs, "smoke")
    assert all(smoke[ch] < seconds[ch] for ch in seconds)
