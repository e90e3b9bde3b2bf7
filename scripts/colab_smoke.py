"""Run every chapter as a Colab student would: only the library's wheel, its dependencies and a kernel.

    .venv/bin/python scripts/colab_smoke.py [--profile smoke] [--keep] [CHAPTER.ipynb ...]

On Colab a chapter has torch, torchvision, the pip-installed ``mcar_lib`` and a Jupyter kernel, and nothing of
the book's tooling (no MyST-NB, papermill, nbval or jupyter-book), and the notebook is alone in its folder.
This script

1. builds the wheel of ``mcar_lib`` (``uv build``: an sdist, then the wheel from it, so nothing is built in
   the working tree);
2. creates a fresh virtual environment with the interpreter of ``.venv`` and installs, with ``uv pip``,
   exactly the locked versions (uv.lock) of the library's dependencies plus ``nbclient`` and ``ipykernel``, then
   the wheel without its dependencies; uv links every package from its cache, so torch is neither downloaded
   nor copied again, and ``--offline`` is tried first so that no index is needed (the book extras are never
   installed, and the script checks that they cannot be imported);
3. executes each chapter of the table of contents (``scripts/chapters.py list``) with nbclient in that
   environment's own kernel, from an empty folder next to nothing but the files its Colab install cell would
   download (``EXTRA_FILES`` in ``scripts/sync_install_cells.py``), with an empty checkpoint cache per chapter
   (each Colab notebook gets a fresh runtime), and with ``PROFILE = "smoke"`` in a cell inserted after the
   ``parameters`` cell, as papermill would inject it; a last inserted cell checks that ``mcar_lib`` came from
   the wheel and that no book extra was imported.

Fashion-MNIST is found the way the library always finds it (``$MCAR_DATA_DIR``, the Debian package under
``/usr/share/datasets/fashion-mnist``, or a torchvision download). Any cell error fails the run; every chapter
is tried, and the summary names each failed chapter, cell and error. Exit status 0 only if all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS_THAT_MUST_BE_ABSENT = ("myst_nb", "papermill", "jupyter_book", "nbval", "sphinx", "pytest", "yaml")
KERNEL_NAME = "mcar-colab-sim"
COLAB_PACKAGES = ("nbclient", "ipykernel")  # what Colab has besides the library and its dependencies


def log(message: str) -> None:
    print(f"colab smoke: {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def uv(*args: str, offline_first: bool = True) -> None:
    """A uv command, offline first (everything should come from uv's cache), online if that fails."""
    if offline_first:
        attempt = subprocess.run(["uv", *args, "--offline"], text=True, capture_output=True)
        if attempt.returncode == 0:
            return
        log(f"uv {args[0]} {args[1] if len(args) > 1 else ''} needs the network: "
            f"{(attempt.stderr.strip().splitlines() or ['?'])[-1]}")
    run(["uv", *args])


# ---------------------------------------------------------------------------------------------- environment


def locked_closure(names: list[str]) -> set[str]:
    """Every package uv.lock needs for ``names`` and the library's own dependencies (not its extras)."""
    packages: dict[str, list[dict]] = {}
    for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        packages.setdefault(p["name"], []).append(p)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (root,) = packages[project["name"]]
    todo = [d["name"] for d in root.get("dependencies", [])] + list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for version in packages[name]:  # a package may be locked at several versions (markers pick one)
            deps = list(version.get("dependencies", []))
            for dep in list(deps):
                for extra in dep.get("extra", []):
                    for entry in packages[dep["name"]]:
                        deps += entry.get("optional-dependencies", {}).get(extra, [])
            todo += [d["name"] for d in deps]
    return seen


def write_lock(work: Path) -> Path:
    """A PEP 751 lock file with uv.lock's exact versions and wheel URLs for the Colab set of packages only."""
    full = work / "pylock.full.toml"
    run(["uv", "export", "--frozen", "--quiet", "--extra", "book", "--no-emit-project", "--format", "pylock.toml",
         "-o", str(full)], cwd=ROOT)
    keep = locked_closure(list(COLAB_PACKAGES))
    head, *blocks = full.read_text().split("\n[[packages]]\n")
    chosen = [b for b in blocks if re.match(r'name = "([^"]+)"', b).group(1) in keep]
    lock = work / "pylock.colab.toml"
    lock.write_text(head + "".join("\n[[packages]]\n" + b for b in chosen))
    return lock


def make_environment(work: Path) -> Path:
    """The Colab-like virtual environment; returns its Python."""
    dist = work / "dist"
    uv("build", "--quiet", "--out-dir", str(dist), str(ROOT))
    (wheel,) = dist.glob("*.whl")
    interpreter = run([str(ROOT / ".venv" / "bin" / "python"), "-c", "import sys; print(sys._base_executable)"],
                      capture_output=True).stdout.strip()
    venv = work / "venv"
    uv("venv", "--quiet", "--python", interpreter, str(venv))
    python = venv / "bin" / "python"
    uv("pip", "install", "--quiet", "--python", str(python), "-r", str(write_lock(work)))
    uv("pip", "install", "--quiet", "--no-deps", "--python", str(python), str(wheel))
    run([str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
         "--display-name", "Python 3 (Colab simulation)"], capture_output=True)
    check = ("import importlib.util, json, sys, torch, mcar_lib; "
             f"absent = {EXTRAS_THAT_MUST_BE_ABSENT!r}; "
             "present = [m for m in absent if importlib.util.find_spec(m) is not None]; "
             "print(json.dumps({'present': present, 'torch': torch.__version__, 'mcar_lib': mcar_lib.__file__}))")
    found = json.loads(run([str(python), "-c", check], capture_output=True, cwd=work).stdout)
    if found["present"]:
        raise SystemExit(f"colab smoke: the simulated environment can import {found['present']}: it is not Colab-like")
    ours = run([str(ROOT / ".venv" / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
               capture_output=True).stdout.strip()
    if found["torch"] != ours:
        raise SystemExit(f"colab smoke: torch {found['torch']} in the simulated environment, {ours} in .venv")
    log(f"environment ready: {wheel.name}, torch {found['torch']}, nothing of the book extras")
    return python


# ------------------------------------------------------------------------------------------------ execution


def chapters() -> list[Path]:
    out = run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "chapters.py"), "list"],
              capture_output=True, cwd=ROOT).stdout
    return [ROOT / line.strip() for line in out.splitlines() if line.strip().endswith(".ipynb")]


def extra_files() -> dict[str, tuple[str, ...]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from sync_install_cells import EXTRA_FILES

    return EXTRA_FILES


CHECK_CELL = f"""# Inserted by scripts/colab_smoke.py: the chapter ran on the wheel, without the book's tooling.
import sys as _sys
from pathlib import Path as _Path

import mcar_lib as _mcar_lib

assert _Path(_mcar_lib.__file__).resolve().is_relative_to(_Path(_sys.prefix).resolve()), _mcar_lib.__file__
_imported = sorted(m for m in {EXTRAS_THAT_MUST_BE_ABSENT!r} if m in _sys.modules)
assert not _imported, f"the chapter imported {{{{_imported}}}}, which Colab does not have"
assert PROFILE == {{profile!r}}, f"the chapter ran in profile {{{{PROFILE!r}}}}, not {{profile!r}}"
"""


def execute(paths: list[str], profile: str, out_dir: str, timeout: int) -> int:
    """Runs inside the simulated environment: execute each notebook, report every failure. Exit status."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    failures = []
    out = Path(out_dir)
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        # as papermill does: the committed notebook keeps the parameters papermill injected when it was executed
        # (PROFILE = "cpu"); replace them, or they would run after ours and undo them
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        index = next((i for i, c in enumerate(nb.cells)
                      if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
        if index is None:
            failures.append((path.name, "no cell tagged 'parameters' to inject PROFILE after"))
            continue
        assigns_profile = [c for c in nb.cells[index + 1:]
                           if c.cell_type == "code" and re.search(r"^PROFILE\s*=", c.source, re.M)]
        if assigns_profile:  # it would undo the injected profile: never run a chapter in another profile
            failures.append((path.name, "a cell after the parameters cell assigns PROFILE; not executed"))
            continue
        injected = nbformat.v4.new_code_cell(
            f"# Parameters (injected by scripts/colab_smoke.py)\nPROFILE = {profile!r}\n",
            metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(index + 1, injected)
        nb.cells.append(nbformat.v4.new_code_cell(CHECK_CELL.format(profile=profile),
                                                  metadata={"tags": ["colab-smoke-check"]}))
        content = out / "content"  # Colab's /content: the notebook's folder, empty
        content.mkdir(parents=True, exist_ok=True)
        cache = Path(tempfile.mkdtemp(prefix=f"cache-{path.stem}-", dir=out))  # a fresh runtime per notebook
        env_backup = dict(os.environ)
        os.environ["MCAR_CACHE_DIR"] = str(cache)
        os.environ.pop("MPLBACKEND", None)  # Colab draws with the inline backend
        start = time.perf_counter()
        try:
            NotebookClient(nb, timeout=timeout, kernel_name=KERNEL_NAME, startup_timeout=120,
                           resources={"metadata": {"path": str(content)}}).execute()
            print(f"colab smoke: {path.name} ok ({time.perf_counter() - start:.1f} s)", flush=True)
        except CellExecutionError as err:
            cell = next((i for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if o.output_type == "error"),
                        None)
            source = nb.cells[cell].source.strip().splitlines()[0][:100] if cell is not None else "?"
            error = next((f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", [])
                          if o.output_type == "error"), str(err).strip().splitlines()[-1])
            failures.append((path.name, f"cell {cell} ({source!r}) raised {error}"))
            print(f"colab smoke: {path.name} FAILED after {time.perf_counter() - start:.1f} s\n{err}", flush=True)
        except Exception as err:  # a kernel that dies or times out
            failures.append((path.name, f"{type(err).__name__}: {err}"))
            print(f"colab smoke: {path.name} FAILED: {type(err).__name__}: {err}", flush=True)
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
            nbformat.write(nb, out / path.name)
            shutil.rmtree(cache, ignore_errors=True)
    if failures:
        print(f"colab smoke: {len(failures)} of {len(paths)} chapters failed in the Colab-like environment "
              "(only mcar_lib's wheel, its dependencies, nbclient and ipykernel):", flush=True)
        for name, what in failures:
            print(f"  {name}: {what}", flush=True)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="notebooks to run (default: every chapter of _toc.yml)")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (environment, executed notebooks)")
    parser.add_argument("--execute-here", metavar="OUT_DIR", help=argparse.SUPPRESS)  # internal: run in the venv
    args = parser.parse_args()
    if args.execute_here:
        return execute(args.chapters, args.profile, args.execute_here, args.timeout)

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mcar-colab-"))
    ok = False
    try:
        python = make_environment(work)
        setup_seconds = time.perf_counter() - start
        out = work / "run"
        for stem, files in extra_files().items():  # what the Colab install cell downloads next to the notebook
            for name in files:
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / name, out / name)
        paths = [str(Path(p).resolve()) for p in args.chapters] or [str(p) for p in chapters()]
        log(f"executing {len(paths)} chapters in the {args.profile} profile")
        status = subprocess.run([str(python), __file__, "--execute-here", str(out), "--profile", args.profile,
                                 "--timeout", str(args.timeout), *paths], cwd=work).returncode
        ok = status == 0
        total = time.perf_counter() - start
        log(f"{'all chapters passed' if ok else 'FAILED'} in {total:.0f} s "
            f"(environment {setup_seconds:.0f} s, chapters {total - setup_seconds:.0f} s)")
        return status
    finally:
        if args.keep or not ok:
            log(f"work folder kept: {work} (executed notebooks in {work / 'run'})")
            if not ok:
                shutil.rmtree(work / "venv", ignore_errors=True)  # hard links into uv's cache; cheap to rebuild
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
