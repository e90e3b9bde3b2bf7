"""The checkpoint cache: load a trained model if an entry for exactly this configuration exists, else train it.

Entries live outside the repository (``$MCAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/mcar-book``, else
``~/.cache/mcar-book``). A key is the full configuration (profile, split, seed, hyper-parameters) plus the
library version, hashed; the key itself is stored inside the entry and compared on load, so a hash collision
or a hand-copied file cannot be used silently. Writes go to a temporary file that is renamed into place, so a
crash never leaves a half-written entry under the real name. Entries are read with
``torch.load(weights_only=True)``: no code in a checkpoint ever runs. A truncated, corrupted or mismatched
entry is reported with a warning and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

import mcar_lib

CACHE_DIR_ENV = "MCAR_CACHE_DIR"
M = TypeVar("M", bound=nn.Module)


class CacheEntryError(RuntimeError):
    """A cache entry exists but cannot be used (truncated, not a checkpoint, or for another configuration)."""


def cache_root() -> Path:
    """The cache directory (created if missing)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        root = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "mcar-book"
    root.mkdir(parents=True, exist_ok=True)
    return root


def canonical_key(config: Mapping[str, Any]) -> str:
    """The configuration as canonical JSON, with the library version added (so a new version retrains)."""
    full = {"mcar_lib_version": mcar_lib.__version__, **dict(config)}
    return json.dumps(full, sort_keys=True, default=str, separators=(",", ":"))


def entry_path(config: Mapping[str, Any], kind: str = "checkpoints") -> Path:
    """Where the entry for ``config`` lives: a readable prefix plus a hash of the canonical key."""
    digest = hashlib.sha256(canonical_key(config).encode()).hexdigest()[:20]
    name = str(config.get("name", "entry")).replace("/", "_")
    folder = cache_root() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{digest}.pt"


def atomic_save(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(obj), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: Path, config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Read the tensors stored for ``config`` at ``path``; raise :class:`CacheEntryError` if unusable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle that wants to run code, garbage...
        raise CacheEntryError(f"cache entry {path} cannot be read safely ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "key" not in payload or "tensors" not in payload:
        raise CacheEntryError(f"cache entry {path} is not an mcar_lib checkpoint")
    if payload["key"] != canonical_key(config):
        raise CacheEntryError(f"cache entry {path} was written for another configuration")
    return payload["tensors"]


def write_entry(path: Path, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
    atomic_save({"key": canonical_key(config), "tensors": {k: v.detach().cpu() for k, v in tensors.items()}}, path)


def cached_tensors(config: Mapping[str, Any], compute: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Tensors for ``config`` from the cache, or ``compute()`` them and store them."""
    path = entry_path(config, "results")
    if path.exists():
        try:
            return read_entry(path, config)
        except CacheEntryError as err:
            warnings.warn(f"{err}; recomputing it", stacklevel=2)
    tensors = dict(compute())
    write_entry(path, config, tensors)
    return tensors


def load_or_train(config: Mapping[str, Any], build: Callable[[], M], train: Callable[[M], M]) -> M:
    """A trained model for ``config``: loaded from the cache if present and valid, else built, trained and saved.

    ``build()`` makes the untrained module (it fixes the architecture and device); ``train(module)`` returns
    the trained module of the same architecture. The returned module is in eval mode.
    """
    path = entry_path(config)
    model = build()
    if path.exists():
        try:
            state = read_entry(path, config)
            model.load_state_dict(state, strict=True)
            return model.eval()
        except (CacheEntryError, RuntimeError) as err:
            warnings.warn(f"{err}; training it again", stacklevel=2)
    trained = train(model)
    write_entry(path, config, trained.state_dict())
    return trained.eval()
