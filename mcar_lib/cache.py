"""The checkpoint cache: load a trained model if an entry for exactly this configuration exists, else train it.

Entries live outside the repository (``$MCAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/mcar-book``, else
``~/.cache/mcar-book``). A key is the full configuration plus the library version. Callers pass the *inputs
themselves* (models, data sets, settings dataclasses, loss functions, numbers): :func:`describe` turns each into
a stable description (a hash of a model's weights and of its architecture's source, a hash of a data set, a
dataclass's fields, a function's qualified name and source), so a key covers every input without anyone writing
fingerprints by hand. The key is stored inside the entry and compared on load, so a hash collision or a
hand-copied file cannot be used silently; a refused entry is reported with its path and what differs. Writes go
to a temporary file that is renamed into place, so a crash never leaves a half-written entry under the real name.
Entries are read with ``torch.load(weights_only=True)``: no code in a checkpoint ever runs.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import os
import tempfile
import types
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


# ------------------------------------------------------------------------------------------ descriptions

def fingerprint(*objects: Tensor | nn.Module) -> str:
    """A short hash of tensors (shape, dtype and bytes) or of a model's state dict (names included).

    Part of cache keys: a model trained on other data, or a curve between other endpoints, never reuses a
    checkpoint made for these.
    """
    digest = hashlib.sha256()
    for obj in objects:
        if isinstance(obj, nn.Module):
            items = list(obj.state_dict().items())
        elif isinstance(obj, Tensor):
            items = [("", obj)]
        else:
            raise TypeError(f"cannot fingerprint a {type(obj).__name__}; pass tensors or an nn.Module")
        for name, tensor in items:
            digest.update(name.encode() + str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def architecture_id(model: nn.Module) -> str:
    """A short hash of the model's class source and its module tree (every layer's settings).

    A checkpoint made for an older version of an architecture (another stride, another forward) is then never
    loaded into a newer one whose parameter shapes happen to match.
    """
    try:
        source = inspect.getsource(type(model))
    except (OSError, TypeError):  # classes defined interactively have no source file
        source = type(model).__qualname__
    return hashlib.sha256((source + repr(model)).encode()).hexdigest()[:16]


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _source_hash(func: Callable) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


_MODULE_INTERNALS = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                     "_backward_pre_hooks", "_backward_hooks", "_is_full_backward_hook", "_forward_hooks",
                     "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                     "_forward_pre_hooks_with_kwargs", "_state_dict_hooks", "_state_dict_pre_hooks",
                     "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"}


def _module_settings(model: nn.Module, depth: int) -> dict[str, Any]:
    """Every submodule's plain attributes (a scale, a flag, a size used in ``forward``): numbers, strings and
    tuples of them, which neither the weights nor always the repr show."""
    plain = (bool, int, float, str, type(None))
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if key in _MODULE_INTERNALS or key.startswith("__"):
                continue
            if isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value)):
                out[f"{name}.{key}" if name else key] = describe(value, depth)
    return out


def describe(value: Any, _depth: int = 0) -> Any:
    """A stable, JSON-friendly description of ``value`` for a cache key: equal inputs give equal descriptions,
    and an input that changes the result changes its description.

    Models: architecture and weights hashes. Tensors: a hash. Objects with ``__cache_key__()`` (data sets):
    what that returns. Dataclasses: their fields. Functions: qualified name, a hash of their source and the
    values they close over. Containers recursively. Anything else with no stable description is an error
    (rather than a key that silently never matches, or always does).
    """
    if _depth > 12:
        raise TypeError("cannot describe a value nested this deeply for a cache key")
    d = _depth + 1
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact: 0.1 and 0.1000000001 are different settings
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    if hasattr(value, "__cache_key__") and not isinstance(value, type):
        return {"type": type(value).__qualname__, **describe(value.__cache_key__(), d)}
    if isinstance(value, nn.Module):
        return {"module": type(value).__qualname__, "architecture": architecture_id(value),
                "weights": fingerprint(value), "settings": _module_settings(value, d)}
    if isinstance(value, Tensor):
        return {"tensor": fingerprint(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: describe(getattr(value, f.name), d) for f in dataclasses.fields(value)}
        return {"type": type(value).__qualname__, **fields}
    if isinstance(value, Mapping):
        return {str(k): describe(v, d) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v, d) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((describe(v, d) for v in value), key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, functools.partial):
        return {"partial": describe(value.func, d), "args": describe(value.args, d),
                "keywords": describe(value.keywords, d)}
    if isinstance(value, types.MethodType):
        return {"method": value.__func__.__qualname__, "of": describe(value.__self__, d)}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        closure = getattr(value, "__closure__", None) or ()
        names = getattr(getattr(value, "__code__", None), "co_freevars", ())
        captured = {name: describe(cell.cell_contents, d) for name, cell in zip(names, closure)}
        defaults = {"defaults": describe(getattr(value, "__defaults__", None), d),
                    "kwdefaults": describe(getattr(value, "__kwdefaults__", None), d)}
        return {"function": _qualified(value), "source": _source_hash(value), **defaults,
                **({"closure": captured} if captured else {})}
    if isinstance(value, type):
        return {"class": _qualified(value), "source": _source_hash(value)}
    if hasattr(value, "__dict__") and callable(value):  # a configured callable object (a loss hook)
        return {"type": _qualified(type(value)), "source": _source_hash(type(value)),
                "state": describe(vars(value), d)}
    raise TypeError(f"cannot describe a {type(value).__name__} for a cache key; pass plain settings, models, "
                    "tensors, data sets or functions, or give the type a __cache_key__() method")


def canonical_key(config: Mapping[str, Any]) -> str:
    """The configuration described (:func:`describe`) as canonical JSON, with the library version added (so a
    new version retrains)."""
    full = {"mcar_lib_version": mcar_lib.__version__, **dict(config)}
    return json.dumps(describe(full), sort_keys=True, separators=(",", ":"))


def _differences(stored: str, wanted: str) -> str:
    """Which top-level fields of two canonical keys differ (for a readable warning)."""
    try:
        old, new = json.loads(stored), json.loads(wanted)
    except (TypeError, ValueError):
        return "the stored key is unreadable"
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = [f"{k}: {json.dumps(old.get(k))[:80]} -> {json.dumps(new.get(k))[:80]}" for k in names[:5]]
    return "; ".join(parts) + (f"; and {len(names) - 5} more" if len(names) > 5 else "")


def entry_path(config: Mapping[str, Any], kind: str = "checkpoints", *, key: str | None = None) -> Path:
    """Where the entry for ``config`` lives: a readable prefix plus a hash of the canonical key (``key``, when
    the caller has already computed it: describing large data sets costs a pass over them)."""
    digest = hashlib.sha256((key or canonical_key(config)).encode()).hexdigest()[:20]
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


def read_entry(path: Path, config: Mapping[str, Any], *, key: str | None = None) -> dict[str, Tensor]:
    """Read the tensors stored for ``config`` at ``path``; raise :class:`CacheEntryError` if unusable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle that wants to run code, garbage...
        raise CacheEntryError(f"cache entry {path} cannot be read safely ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "key" not in payload or "tensors" not in payload:
        raise CacheEntryError(f"cache entry {path} is not an mcar_lib checkpoint")
    wanted = key or canonical_key(config)
    if payload["key"] != wanted:
        raise CacheEntryError(f"cache entry {path} was written for another configuration "
                              f"({_differences(payload['key'], wanted)})")
    return payload["tensors"]


def write_entry(path: Path, config: Mapping[str, Any], tensors: Mapping[str, Tensor], *,
                key: str | None = None) -> None:
    atomic_save({"key": key or canonical_key(config), "tensors": {k: v.detach().cpu() for k, v in tensors.items()}}, path)


def cached_tensors(config: Mapping[str, Any], compute: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Tensors for ``config`` from the cache, or ``compute()`` them and store them."""
    key = canonical_key(config)
    path = entry_path(config, "results", key=key)
    if path.exists():
        try:
            return read_entry(path, config, key=key)
        except CacheEntryError as err:
            warnings.warn(f"{err}; recomputing it", stacklevel=2)
    tensors = dict(compute())
    write_entry(path, config, tensors, key=key)
    return tensors


def load_or_train(config: Mapping[str, Any], build: Callable[[], M], train: Callable[[M], M]) -> M:
    """A trained model for ``config``: loaded from the cache if present and valid, else built, trained and saved.

    ``build()`` makes the untrained module (it fixes the architecture and device); ``train(module)`` returns
    the trained module of the same architecture. The returned module is in eval mode.
    """
    key = canonical_key(config)
    path = entry_path(config, key=key)
    model = build()
    if path.exists():
        try:
            state = read_entry(path, config, key=key)
        except CacheEntryError as err:
            warnings.warn(f"{err}; training it again", stacklevel=2)
        else:
            try:
                model.load_state_dict(state, strict=True)
                return model.eval()
            except RuntimeError as err:
                first = str(err).strip().splitlines()[:3]
                warnings.warn(f"cache entry {path} does not fit the model built for this key (another "
                              f"architecture?): {' '.join(first)}; training it again", stacklevel=2)
    trained = train(model)
    write_entry(path, config, trained.state_dict(), key=key)
    return trained.eval()
