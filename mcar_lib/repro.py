"""Seeding, determinism and device choice: one call makes a run repeatable."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a fresh torch generator seeded the same way.

    With ``deterministic=True`` torch is asked for deterministic algorithms (``warn_only`` so that the few
    CUDA kernels without a deterministic version warn instead of failing) and cuDNN autotuning is off, so
    two calls with the same seed give bit-identical training on the CPU.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA when available, else CPU; check an explicit choice is usable."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {str(device)!r} was requested but CUDA is not available; use DEVICE='auto' or 'cpu'"
        )
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
