"""Full float32 precision where exact arithmetic matters, and tolerances that know the dtype and the device.

On NVIDIA Ampere and newer GPUs (Colab's A100 and L4, an H100 or H200) PyTorch runs float32 convolutions, and
depending on the version also matrix products, in TF32 by default: a 10-bit mantissa, about 1e-3 relative
error per product. That is harmless for training, but it breaks computations that compare against exact
arithmetic or accumulate many products: Hessian-vector products, power iteration, the Gauss-Newton identity
check ``H = Jᵀ A J`` of chapter 5. :func:`full_precision` switches TF32 off for a block and restores the
caller's settings afterwards; the curvature code uses it, training keeps the fast default. On a CPU it
changes nothing (the flags only concern CUDA kernels).

:func:`relative_tolerance` gives the tolerance of a comparison between two float computations of the same
quantity: a few hundred times the machine epsilon of the dtype, so float32 checks accept rounding and
float64 checks stay tight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_NEW_API = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision")


def tf32_enabled() -> bool:
    """Whether float32 matrix products or convolutions on CUDA may currently run in TF32."""
    if _NEW_API:
        matmul = torch.backends.cuda.matmul.fp32_precision
        conv = torch.backends.cudnn.conv.fp32_precision
        global_setting = getattr(torch.backends, "fp32_precision", "none")
        matmul_tf32 = matmul == "tf32" or (matmul == "none" and global_setting == "tf32")
        return matmul_tf32 or conv == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Float32 matrix products and convolutions in full IEEE precision (no TF32) for the block.

    Every flag it touches is restored on exit, also after an exception. Use it around computations that
    must match exact arithmetic (Hessian-vector products, eigenvalue iterations, dense checks).
    """
    if _NEW_API:
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = "ieee"
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy


def relative_tolerance(dtype: torch.dtype, device: torch.device | str | None = None) -> float:
    """The relative tolerance for comparing two float computations of one quantity in ``dtype``.

    ``10⁴ · eps(dtype)``: about 1.2e-3 for float32 and 2.2e-12 for float64; inside :func:`full_precision`
    this holds on a GPU as well. Outside it, on CUDA, float32 may have run in TF32 (eps about 1e-3), so the
    tolerance is widened to 2e-2 there.
    """
    eps = torch.finfo(dtype).eps
    tolerance = 10_000.0 * eps
    if device is not None and torch.device(device).type == "cuda" and dtype == torch.float32 and tf32_enabled():
        tolerance = max(tolerance, 2e-2)
    return tolerance


__all__ = ["full_precision", "relative_tolerance", "tf32_enabled"]
