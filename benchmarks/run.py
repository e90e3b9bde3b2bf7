"""The benchmark suite: speed as ratios measured in one run on one machine, plus per-chapter timings.

    .venv/bin/python benchmarks/run.py            # everything (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --no-book  # only the operation ratios (under a minute)
    .venv/bin/python benchmarks/run.py --book-from timings.json  # chapter times from a `chapters.py run`

Writes ``benchmarks/results.json``: a flat mapping from each measurement's name to a number, plus a
description of the machine. Machines like ours are noisy, so each ratio interleaves its two sides and takes
medians; absolute times are reported but never asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcar_lib import adversarial, attacks, awp, curves, data, hessian, models, paths, repro, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.json"
TARGETS = {  # name: (comparison, bound) — the targets, reported next to the measurements
    "curve_step_ratio": ("<=", 1.1),
    "pgd_step_ratio": ("<=", 1.1),
    "hessian_batched_speedup": (">=", 3.0),
    "awp_step_ratio": ("<=", 1.15),
    "path_eval_ratio": ("<=", 1.1),
    "pgd_vs_torchattacks": ("<=", 1.0),
    "book_seconds": ("<=", 600.0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(fa: Callable[[], object], fb: Callable[[], object], device: torch.device, *,
                repeats: int = 7, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``fa`` and ``fb``, timed alternately so that machine noise hits both alike."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(seconds(fa, device))
        tb.append(seconds(fb, device))
    return statistics.median(ta), statistics.median(tb)


def _model(device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build("small_cnn", width=16).to(device)


def _batch(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def bench_curve_step(device: torch.device, steps: int = 20) -> dict[str, float]:
    """A curve training step (Bezier, one bend, w(t) formed per step) vs a plain step, same net and batch."""
    x, y = _batch(128, device)
    batches = [(x, y)] * steps
    sgd = train.SGDConfig(lr=0.01, schedule="constant")
    curve = curves.Curve.between(_model(device, 0), _model(device, 1))
    plain = _model(device, 2)
    t_curve, t_plain = interleaved(
        lambda: curves.fit_curve(curve, batches, steps=steps, sgd=sgd, show_progress=False),
        lambda: train.fit(plain, batches, epochs=1, sgd=sgd, show_progress=False), device, repeats=5)
    return {"curve_step_ratio": t_curve / t_plain, "curve_step_seconds": t_curve / steps,
            "plain_step_seconds": t_plain / steps}


def bench_pgd_step(device: torch.device, steps: int = 10) -> dict[str, float]:
    """PGD-K / (K × (forward + input-gradient backward)), model in eval mode, no random start."""
    model = _model(device).eval()
    x, y = _batch(128, device)

    def unit() -> None:
        for _ in range(steps):
            xr = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)

    t_pgd, t_unit = interleaved(lambda: attacks.pgd(model, x, y, eps=0.1, steps=steps, random_start=False),
                                unit, device)
    return {"pgd_step_ratio": t_pgd / t_unit, "pgd_step_seconds": t_pgd / steps,
            "forward_input_backward_seconds": t_unit / steps}


def bench_pgd_vs_torchattacks(device: torch.device, steps: int = 10) -> dict[str, float]:
    """mcar_lib PGD vs torchattacks PGD, same model, batch and (zero) start; both must agree."""
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed (uv pip install --no-deps torchattacks==3.5.1); skipping")
        return {}
    model = _model(device).eval()
    x, y = _batch(128, device)
    eps, alpha = 0.1, 0.025
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    ours = attacks.pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False)
    reference = theirs(x, y)
    agreement = (ours - reference).abs().max().item()
    t_ours, t_theirs = interleaved(
        lambda: attacks.pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False),
        lambda: theirs(x, y), device)
    return {"pgd_vs_torchattacks": t_ours / t_theirs, "pgd_vs_torchattacks_max_abs_difference": agreement,
            "torchattacks_pgd_seconds": t_theirs}


def bench_hessian(device: torch.device, batch_size: int = 128, iters: int = 20) -> dict[str, float]:
    """Per-sample input-Hessian λ_max for a batch: one sample at a time vs one batched power iteration."""
    model = _model(device).eval()
    x, y = _batch(batch_size, device)
    result = hessian.compare_batched_and_loop(model, x, y, iters=iters, tol=1e-12)
    return {"hessian_batched_speedup": result["speedup"], "hessian_batched_seconds": result["seconds_batched"],
            "hessian_loop_seconds": result["seconds_loop"],
            "hessian_batched_vs_loop_max_relative_difference": result["max_relative_difference"]}


def bench_awp(device: torch.device) -> dict[str, float]:
    """An AWP adversarial-training step vs a plain adversarial-training step (PGD-10, same net and batch)."""
    x, y = _batch(128, device)
    steps = awp.training_steps(_model(device), x, y, robust=adversarial.pgd_loss(eps=0.1, steps=10))
    t_awp, t_at = interleaved(steps["awp"], steps["adversarial"], device, repeats=5)
    return {"awp_step_ratio": t_awp / t_at, "awp_step_seconds": t_awp, "adversarial_step_seconds": t_at}


def bench_path_eval(device: torch.device, n_points: int = 5) -> dict[str, float]:
    """Evaluating T points of a path (BN recomputation + evaluation) vs T × (one BN pass + one eval pass)."""
    bn_x, bn_y = _batch(512, device, seed=1)
    ev_x, ev_y = _batch(1000, device, seed=2)
    bn_data = data.LabeledImages(bn_x, bn_y)
    eval_data = data.LabeledImages(ev_x, ev_y)
    curve = curves.Curve.between(_model(device, 0), _model(device, 1))
    plain = _model(device, 2)
    bn_batches = list(data.batches(bn_data, 128))
    eval_batches = list(data.batches(eval_data, 500))
    metric = {"accuracy": paths.accuracy_on(eval_data, batch_size=500)}

    def reference() -> None:
        for _ in range(n_points):
            torch.optim.swa_utils.update_bn(bn_batches_x(), plain)
            train.evaluate(plain, eval_batches)

    def bn_batches_x():
        return [xb for xb, _ in bn_batches]

    def path() -> None:
        curve.clear_bn_cache()
        paths.evaluate(curve, [0.1 + 0.8 * i / max(n_points - 1, 1) for i in range(n_points)], metric,
                       bn_batches, show_progress=False)

    t_path, t_ref = interleaved(path, reference, device, repeats=5)
    return {"path_eval_ratio": t_path / t_ref, "path_eval_seconds": t_path, "path_eval_reference_seconds": t_ref}


def bench_book() -> dict[str, float]:
    """Every chapter in book order with papermill (default profile), from an empty checkpoint cache."""
    with tempfile.TemporaryDirectory(prefix="mcar-bench-cache-") as cache_dir, \
            tempfile.TemporaryDirectory(prefix="mcar-bench-out-") as out_dir:
        env = {**os.environ, "MCAR_CACHE_DIR": cache_dir, "MCAR_QUIET": "1"}
        output = subprocess.run([sys.executable, str(ROOT / "scripts" / "chapters.py"), "run", "cpu", out_dir],
                                env=env, check=True, capture_output=True, text=True).stdout
    summary = json.loads(output[output.index("{"):])
    result = {f"chapter_seconds/{name}": value for name, value in summary["chapter_seconds"].items()}
    result["book_seconds"] = summary["total_seconds"]
    return result


def machine() -> dict[str, str]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-book", action="store_true", help="skip the per-chapter execution times")
    parser.add_argument("--book-from", metavar="JSON",
                        help="take the chapter times from the output of `scripts/chapters.py run cpu` (run from an "
                             "empty cache) instead of executing the book again")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    device = repro.resolve_device(args.device)
    repro.seed_everything(0)
    results: dict[str, object] = {}
    for bench in (bench_curve_step, bench_pgd_step, bench_pgd_vs_torchattacks, bench_hessian, bench_awp,
                  bench_path_eval):
        start = time.perf_counter()
        results.update(bench(device))
        print(f"{bench.__name__}: {time.perf_counter() - start:.1f} s", flush=True)
    if args.book_from:
        summary = json.loads(Path(args.book_from).read_text())
        results.update({f"chapter_seconds/{k}": v for k, v in summary["chapter_seconds"].items()})
        results["book_seconds"] = summary["total_seconds"]
    elif not args.no_book:
        results.update(bench_book())
    elif Path(args.output).exists():  # keep the last book timings
        previous = json.loads(Path(args.output).read_text())
        results.update({k: v for k, v in previous.items() if k.startswith("chapter_seconds/") or k == "book_seconds"})
    results["machine"] = machine()
    for name, (op, bound) in TARGETS.items():
        if name in results:
            value = float(results[name])  # type: ignore[arg-type]
            met = value <= bound if op == "<=" else value >= bound
            print(f"{name:28s} {value:10.3f}   target {op} {bound}: {'met' if met else 'MISSED'}")
    Path(args.output).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
