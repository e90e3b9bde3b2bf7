"""The benchmark suite: speed as ratios measured in one run on one machine, plus per-chapter timings.

    .venv/bin/python benchmarks/run.py            # everything (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --no-book  # only the operation ratios (about 5 minutes: VGG16 on CPU)
    .venv/bin/python benchmarks/run.py --book-from timings.json  # chapter times from a `chapters.py run`
    .venv/bin/python benchmarks/run.py --device cuda  # the GPU suite -> benchmarks/results-cuda.json

Writes ``benchmarks/results.json`` (CPU) or ``benchmarks/results-cuda.json`` (``--device cuda``): a flat mapping
from each measurement's name to a number, plus a description of the machine. Machines like ours are noisy, so
each ratio interleaves its sides and takes medians; absolute times are reported but never asserted anywhere.

Per-step costs of training (a curve step against a plain step, ``train.fit`` against a hand-written loop) are
read off inside the loop: the batches note when each is asked for, so the gaps are whole training steps
(forward, backward, optimiser step), without the per-call work of ``fit`` (copying the model, checks). The
first step of every call is dropped (it also creates the optimiser's momentum buffers).

The GPU suite (``--device cuda``) measures, for the small CNN and for VGG16 at batch 128: ``train.fit`` per
step against a hand-written loop, a curve step against a plain step, the evaluation of a path against its
reference and a PGD step against its pass-count limit, and from VGG16's step costs an estimate of each
chapter's time in the ``paper`` profile (``benchmarks/paper_estimate.py``). Without CUDA it measures nothing
and says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcar_lib import adversarial, attacks, awp, curves, data, hessian, models, paths, repro, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.json"
RESULTS_CUDA = ROOT / "benchmarks" / "results-cuda.json"
TARGETS = {  # name: (comparison, bound) — the issues' targets, reported next to the measurements
    "curve_step_ratio": ("<=", 1.1),
    "vgg16_curve_step_ratio_1_bend": ("<=", 1.1),
    "vgg16_curve_step_ratio_5_bends": ("<=", 1.2),
    "pgd_step_ratio": ("<=", 1.1),
    "hessian_batched_speedup": (">=", 3.0),
    "awp_step_ratio": ("<=", 1.15),
    "path_eval_ratio": ("<=", 1.1),
    "pgd_vs_torchattacks": ("<=", 1.0),
    "book_seconds": ("<=", 600.0),
}
CUDA_TARGETS = {f"{workload}/{name}": bound for workload in ("small_cnn", "vgg16") for name, bound in (
    ("fit_step_ratio", ("<=", 1.1)), ("curve_step_ratio", ("<=", 1.15)), ("path_eval_ratio", ("<=", 1.1)),
    ("pgd_step_ratio", ("<=", 1.1)))}


@dataclass(frozen=True)
class Workload:
    """An architecture and the shape of its images: what a measurement runs on."""

    name: str
    kwargs: dict = field(default_factory=dict)
    image_shape: tuple[int, int, int] = (1, 28, 28)


SMALL_CNN = Workload("small_cnn", {"width": 16}, (1, 28, 28))  # the book's default profile
VGG16 = Workload("vgg16", {}, (3, 32, 32))  # the paper profile's network (15.2 M parameters), CIFAR-shaped


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


def _model(device: torch.device, seed: int = 0, workload: Workload = SMALL_CNN) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(workload.name, **workload.kwargs).to(device)


def _batch(n: int, device: torch.device, seed: int = 0,
           workload: Workload = SMALL_CNN) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *workload.image_shape, generator=g).to(device),
            torch.randint(0, 10, (n,), generator=g).to(device))


class StampedBatches:
    """``steps`` copies of one batch that note the time each is asked for (and when the last step is done).

    A training loop asks for the next batch when it has finished a step, so the gaps between the stamps are
    whole training steps, measured inside ``train.fit`` or any other loop. Each stamp holds the wall-clock time
    and the process's CPU time (all threads, user and system): on a shared machine the CPU time of a step
    barely depends on what else runs, the wall-clock time does. On CUDA each stamp synchronises.
    """

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], steps: int, device: torch.device) -> None:
        self.batch, self.steps, self.device = batch, steps, device
        self.stamps: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return self.steps

    def _stamp(self) -> None:
        _sync(self.device)
        self.stamps.append((time.perf_counter(), time.process_time()))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.stamps = []
        for _ in range(self.steps):
            self._stamp()
            yield self.batch
        self._stamp()

    def step_seconds(self, clock: int = 0) -> list[float]:
        """Seconds of each step but the first (the first also creates the optimiser's state); ``clock`` 0 is
        wall-clock time, 1 the process's CPU time."""
        gaps = [b[clock] - a[clock] for a, b in zip(self.stamps, self.stamps[1:])]
        return gaps[1:]


def per_step_interleaved(sides: dict[str, Callable[[Iterable], object]], batch: tuple[torch.Tensor, torch.Tensor],
                         device: torch.device, *, steps: int, repeats: int,
                         clock: int = 0) -> dict[str, float]:
    """Median seconds per training step of each side (``clock`` as in :meth:`StampedBatches.step_seconds`); the
    sides take turns, ``repeats`` runs of ``steps`` steps each, so that machine noise hits all of them alike."""
    return per_step_clocks(sides, batch, device, steps=steps, repeats=repeats)[clock]


def per_step_clocks(sides: dict[str, Callable[[Iterable], object]], batch: tuple[torch.Tensor, torch.Tensor],
                    device: torch.device, *, steps: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """:func:`per_step_interleaved` for both clocks at once: (wall-clock medians, CPU-time medians)."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            stamped = StampedBatches(batch, steps, device)
            run(stamped)
            samples[name].extend(zip(stamped.step_seconds(0), stamped.step_seconds(1)))
    return ({name: statistics.median(w for w, _ in values) for name, values in samples.items()},
            {name: statistics.median(c for _, c in values) for name, values in samples.items()})


def hand_written_loop(model: torch.nn.Module, sgd: train.SGDConfig) -> Callable[[Iterable], object]:
    """The plain training loop that ``train.fit`` must not be slower than: a copy of the model, SGD with the same
    settings, cross-entropy, nothing else."""

    def run(batches: Iterable) -> torch.nn.Module:
        net = copy.deepcopy(model).train()
        optimizer = torch.optim.SGD(net.parameters(), lr=sgd.lr, momentum=sgd.momentum,
                                    weight_decay=sgd.weight_decay, nesterov=sgd.nesterov)
        for x, y in batches:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return net

    return run


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


def bench_vgg16_curve_steps(device: torch.device, bends: tuple[int, ...] = (1, 5), steps: int = 3,
                            repeats: int = 3) -> dict[str, float]:
    """VGG16 (15.2 M parameters) at batch 128 on CIFAR-shaped random data: a curve training step (Bezier, 1 and 5
    bends) vs a plain training step, per step inside ``fit`` (see the module's docstring), sides interleaved."""
    batch = _batch(128, device, workload=VGG16)
    sgd = train.SGDConfig(lr=0.01, schedule="constant")
    plain = _model(device, 2, VGG16)
    a, b = _model(device, 0, VGG16), _model(device, 1, VGG16)
    sides: dict[str, Callable[[Iterable], object]] = {
        "plain": lambda batches: train.fit(plain, batches, epochs=1, sgd=sgd, show_progress=False)}
    for n in bends:
        curve = curves.Curve.between(a, b, n_bends=n)
        sides[f"curve_{n}"] = lambda batches, c=curve: curves.fit_curve(c, batches, epochs=1, sgd=sgd,
                                                                        show_progress=False)
    seconds_per_step, cpu_per_step = per_step_clocks(sides, batch, device, steps=steps, repeats=repeats)
    result = {"vgg16_plain_step_seconds": seconds_per_step["plain"]}
    for n in bends:
        suffix = "1_bend" if n == 1 else f"{n}_bends"
        result[f"vgg16_curve_step_ratio_{suffix}"] = seconds_per_step[f"curve_{n}"] / seconds_per_step["plain"]
        result[f"vgg16_curve_step_seconds_{suffix}"] = seconds_per_step[f"curve_{n}"]
        # the same ratio in CPU time: what the step costs in work, nearly independent of the machine's load
        result[f"vgg16_curve_step_cpu_time_ratio_{suffix}"] = cpu_per_step[f"curve_{n}"] / cpu_per_step["plain"]
    return result


def bench_pgd_step(device: torch.device, steps: int = 10, workload: Workload = SMALL_CNN) -> dict[str, float]:
    """PGD-K / (K × (forward + input-gradient backward)), model in eval mode, no random start."""
    model = _model(device, workload=workload).eval()
    x, y = _batch(128, device, workload=workload)

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


def bench_path_eval(device: torch.device, n_points: int = 5, workload: Workload = SMALL_CNN,
                    repeats: int = 5) -> dict[str, float]:
    """Evaluating T points of a path (BN recomputation + evaluation) vs T × (one BN pass + one eval pass)."""
    bn_x, bn_y = _batch(512, device, seed=1, workload=workload)
    ev_x, ev_y = _batch(1000, device, seed=2, workload=workload)
    bn_data = data.LabeledImages(bn_x, bn_y)
    eval_data = data.LabeledImages(ev_x, ev_y)
    curve = curves.Curve.between(_model(device, 0, workload), _model(device, 1, workload))
    plain = _model(device, 2, workload)
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

    t_path, t_ref = interleaved(path, reference, device, repeats=repeats)
    return {"path_eval_ratio": t_path / t_ref, "path_eval_seconds": t_path, "path_eval_reference_seconds": t_ref}


def bench_training_steps(device: torch.device, workload: Workload, *, steps: int,
                         repeats: int) -> dict[str, float]:
    """Per training step: ``train.fit`` vs a hand-written loop, and a curve step (1 and 5 bends) vs a plain step
    (``fit`` on the network), all interleaved, at batch 128."""
    batch = _batch(128, device, workload=workload)
    sgd = train.SGDConfig(lr=0.01, schedule="constant")
    plain = _model(device, 2, workload)
    a, b = _model(device, 0, workload), _model(device, 1, workload)
    curve_1, curve_5 = curves.Curve.between(a, b, n_bends=1), curves.Curve.between(a, b, n_bends=5)
    sides: dict[str, Callable[[Iterable], object]] = {
        "fit": lambda batches: train.fit(plain, batches, epochs=1, sgd=sgd, show_progress=False),
        "loop": hand_written_loop(plain, sgd),
        "curve_1": lambda batches: curves.fit_curve(curve_1, batches, epochs=1, sgd=sgd, show_progress=False),
        "curve_5": lambda batches: curves.fit_curve(curve_5, batches, epochs=1, sgd=sgd, show_progress=False),
    }
    per_step = per_step_interleaved(sides, batch, device, steps=steps, repeats=repeats)
    return {"fit_step_ratio": per_step["fit"] / per_step["loop"], "fit_step_seconds": per_step["fit"],
            "loop_step_seconds": per_step["loop"], "plain_step_seconds": per_step["fit"],
            "curve_step_ratio": per_step["curve_1"] / per_step["fit"], "curve_step_seconds": per_step["curve_1"],
            "curve_step_ratio_5_bends": per_step["curve_5"] / per_step["fit"],
            "curve_step_seconds_5_bends": per_step["curve_5"]}


def bench_forward(device: torch.device, workload: Workload, repeats: int = 10) -> dict[str, float]:
    """Seconds of one evaluation forward pass of a batch of 128 (no gradients): the unit of evaluation work."""
    model = _model(device, workload=workload).eval()
    x, _ = _batch(128, device, workload=workload)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    forward()
    return {"forward_seconds": statistics.median(seconds(forward, device) for _ in range(repeats))}


GPU_SIZES = {"small_cnn": {"steps": 30, "repeats": 5}, "vgg16": {"steps": 10, "repeats": 5}}


def cuda_suite(device: torch.device, workloads: tuple[Workload, ...] = (SMALL_CNN, VGG16),
               sizes: dict[str, dict[str, int]] = GPU_SIZES, repeats: int = 5) -> dict[str, object]:
    """The GPU measurements for the small CNN and VGG16 (keys ``<workload>/<name>``), then the paper-profile
    estimate per chapter from VGG16's step costs. (``workloads``, ``sizes`` and ``repeats`` only shrink it for
    a dry run on the CPU.)"""
    results: dict[str, object] = {}
    for workload in workloads:
        measured: dict[str, float] = {}
        for name, bench in (("training steps", lambda: bench_training_steps(device, workload, **sizes[workload.name])),
                            ("path evaluation", lambda: bench_path_eval(device, workload=workload, repeats=repeats)),
                            ("PGD step", lambda: bench_pgd_step(device, workload=workload)),
                            ("forward", lambda: bench_forward(device, workload))):
            start = time.perf_counter()
            measured.update(bench())
            print(f"{workload.name} {name}: {time.perf_counter() - start:.1f} s", flush=True)
        results.update({f"{workload.name}/{key}": value for key, value in measured.items()})
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_estimate import estimate_seconds

    costs = {key.split("/", 1)[1]: value for key, value in results.items() if key.startswith("vgg16/")}
    if costs:
        results.update({f"paper_estimate_seconds/{chapter}": value
                        for chapter, value in estimate_seconds(costs).items()})
    return results


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


def _report(results: dict[str, object], targets: dict[str, tuple[str, float]]) -> None:
    for name, (op, bound) in targets.items():
        if name in results:
            value = float(results[name])  # type: ignore[arg-type]
            met = value <= bound if op == "<=" else value >= bound
            print(f"{name:32s} {value:10.3f}   target {op} {bound}: {'met' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-book", action="store_true", help="skip the per-chapter execution times")
    parser.add_argument("--book-from", metavar="JSON",
                        help="take the chapter times from the output of `scripts/chapters.py run cpu` (run from an "
                             "empty cache) instead of executing the book again")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default): the CPU suite; cuda: the GPU suite (results-cuda.json); auto: cuda if "
                             "there is one")
    parser.add_argument("--output", default=None,
                        help="where to write (default benchmarks/results.json, or results-cuda.json for cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice). On a machine shared with other "
                             "jobs, 1 thread avoids the OpenMP barrier stalls that slow many-operation steps far "
                             "more than a free core would; recorded in the results' machine description")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wanted = str(args.device)
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {wanted}: CUDA is not available on this machine; nothing measured, "
              f"{(args.output or RESULTS_CUDA)} left as it is")
        return
    device = repro.resolve_device(args.device)
    repro.seed_everything(0)
    if device.type == "cuda":
        output = Path(args.output or RESULTS_CUDA)
        results = cuda_suite(device)
        results["machine"] = machine()
        _report(results, CUDA_TARGETS)
        output.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"wrote {output}")
        return
    output = Path(args.output or RESULTS)
    results: dict[str, object] = {}
    for bench in (bench_curve_step, bench_vgg16_curve_steps, bench_pgd_step, bench_pgd_vs_torchattacks,
                  bench_hessian, bench_awp, bench_path_eval):
        start = time.perf_counter()
        results.update(bench(device))
        print(f"{bench.__name__}: {time.perf_counter() - start:.1f} s", flush=True)
    if args.book_from:
        summary = json.loads(Path(args.book_from).read_text())
        results.update({f"chapter_seconds/{k}": v for k, v in summary["chapter_seconds"].items()})
        results["book_seconds"] = summary["total_seconds"]
    elif not args.no_book:
        results.update(bench_book())
    elif output.exists():  # keep the last book timings
        previous = json.loads(output.read_text())
        results.update({k: v for k, v in previous.items() if k.startswith("chapter_seconds/") or k == "book_seconds"})
    results["machine"] = machine()
    _report(results, TARGETS)
    output.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
