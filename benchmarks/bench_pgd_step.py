"""Benchmark: one PGD step must cost at most 1.1× one forward plus one input-gradient backward.

The per-step cost of ``attacks.pgd`` is measured as (time of PGD-K − time of PGD-0) / K, which removes the
fixed per-call work (validation, the start), and compared with a bare
``autograd.grad(CE(model(x)).sum(), x)`` on the same batch. Timings are medians of interleaved repeats, so
load on a shared machine hits both sides alike. Run: ``python benchmarks/bench_pgd_step.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mcar_lib import attacks, models


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.build("small_cnn", width=args.width).to(device).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def reference() -> None:  # one forward + one backward to the input only
        for _ in range(args.steps):
            xr = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)

    def pgd_k() -> None:
        attacks.pgd(model, x, y, eps=0.1, steps=args.steps, random_start=True)

    def pgd_0() -> None:
        attacks.pgd(model, x, y, eps=0.1, steps=0, random_start=True)

    for fn in (reference, pgd_k, pgd_0):  # warm-up
        fn()
    ref, full, fixed = [], [], []
    for _ in range(args.repeats):
        ref.append(_timed(reference, device) / args.steps)
        full.append(_timed(pgd_k, device))
        fixed.append(_timed(pgd_0, device))
    ref_step = statistics.median(ref)
    pgd_step = (statistics.median(full) - statistics.median(fixed)) / args.steps
    ratio = pgd_step / ref_step
    print(f"device {device}, batch {args.batch}, small_cnn width {args.width}, {args.threads} threads")
    print(f"forward + input-gradient backward: {1000 * ref_step:.2f} ms")
    print(f"one PGD step:                      {1000 * pgd_step:.2f} ms")
    print(f"ratio {ratio:.3f} (target <= 1.1): {'met' if ratio <= 1.1 else 'MISSED'}")


if __name__ == "__main__":
    main()
