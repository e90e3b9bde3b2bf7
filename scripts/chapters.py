"""The chapter notebooks listed in _toc.yml, in book order: executing them with papermill, checking their glued
values against the committed ones, and sweeping them over seeds.

    python scripts/chapters.py list                      # print the chapter paths
    python scripts/chapters.py run [PROFILE] [OUT_DIR] [--chapters ...]  # execute them (in place unless OUT_DIR)
    python scripts/chapters.py check [--chapters ...]    # execute (default profile) into a temporary folder; fail
                                                         # on an error, a failed claim or a stale glued value
    python scripts/chapters.py glued NOTEBOOK...         # list a notebook's glued values (and its claims)
    python scripts/chapters.py sweep --seeds 0 1 2 [--profile cpu] [--device cpu] [--chapters ...]
                                     [--out benchmarks/robustness.json]

Running them in place in the default profile is how the committed outputs are regenerated. `check` is what CI
runs: one execution per chapter from the caller's (empty) cache, then every glued value compared with the
committed one as its exact repr (CPU runs are bit-reproducible), so a number in the prose cannot go stale.
`sweep` executes every chapter once per seed, each seed from an empty checkpoint cache, and merges one entry
per run into a JSON file that the appendix "How robust are these results?" renders.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # mcar_lib from this checkout, also when it is not installed

from mcar_lib import book  # noqa: E402

SANITIZE_FILE = ROOT / "tests" / "nbval_sanitize.cfg"
CELL_TIMEOUT = 1800  # seconds per cell
DEFAULT_PROFILE = "cpu"  # the PROFILE every chapter's parameters cell sets


def chapter_paths() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]] + [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
    return [ROOT / f"{name}.ipynb" for name in names if (ROOT / f"{name}.ipynb").exists()]


def select(chapters: list[str] | None) -> list[Path]:
    """The TOC chapters in book order, restricted to ``chapters`` (stems like ``02_backdoor_repair``, or paths)."""
    paths = chapter_paths()
    if not chapters:
        return paths
    wanted = {Path(c).stem for c in chapters}
    unknown = wanted - {p.stem for p in paths}
    if unknown:
        raise SystemExit(f"not chapters of _toc.yml: {sorted(unknown)}; choose from {[p.stem for p in paths]}")
    return [p for p in paths if p.stem in wanted]


@dataclass
class Execution:
    """One papermill execution: where the executed notebook went, how long it took, why it stopped (if it did)."""

    chapter: str
    output: Path
    seconds: float
    error: str | None


def execute(path: Path, out: Path, parameters: dict[str, Any]) -> Execution:
    """Execute ``path`` into ``out`` with papermill (kernel python3, cwd book/), never raising for the notebook's
    own failures: an exception in a cell, a failed claim or a timeout comes back as ``error``."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(ROOT / "book"), execution_timeout=CELL_TIMEOUT, progress_bar=False)
    except papermill.PapermillExecutionError as err:
        error = f"{err.ename}: {err.evalue}"
    except Exception as err:  # a dead kernel, a timeout, a missing kernel: still a result of the run
        error = f"{type(err).__name__}: {err}"
    return Execution(path.stem, out, time.perf_counter() - start, error)


# ------------------------------------------------------------------------------------------------------ run


def run(profile: str = "cpu", out_dir: str | None = None, chapters: list[str] | None = None) -> dict[str, float]:
    """Execute the chapters (all, or ``chapters``, in book order) in ``profile``, in place unless ``out_dir``."""
    import papermill

    os.environ.setdefault("MCAR_QUIET", "1")
    # no MPLBACKEND here: the kernel must use its inline backend, or the figures vanish from the outputs
    timings: dict[str, float] = {}
    for path in select(chapters):
        out = path if out_dir is None else Path(out_dir) / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # the default profile is the notebooks' own: no injected parameters cell on the committed pages
        parameters = {} if profile == DEFAULT_PROFILE else {"PROFILE": profile}
        papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(ROOT / "book"), execution_timeout=CELL_TIMEOUT, progress_bar=False)
        timings[path.stem] = time.perf_counter() - start
        print(f"executed {path.relative_to(ROOT)} (profile {profile}) in {timings[path.stem]:.1f} s", flush=True)
    return timings


# ---------------------------------------------------------------------------------------------------- check


def _claims_summary(output: Path) -> tuple[str, list[str]]:
    record = book.claims_record(output) if output.exists() else None
    if record is None:
        return "no claims record", []
    n, failed = len(record["claims"]), list(record["failed_claims"])
    return f"{n - len(failed)} of {n} claims hold", failed


def check(profile: str = "cpu", chapters: list[str] | None = None, out_dir: str | None = None) -> int:
    """Execute the chapters once (into ``out_dir`` or a new temporary folder), continuing past failures, then
    report every error, failed claim and stale glued value; 0 when there are none.

    The committed outputs are those of the default profile, so only ``profile="cpu"`` can match them. A chapter
    that stopped early is compared on the values it glued before stopping.
    """
    os.environ.setdefault("MCAR_QUIET", "1")
    folder = Path(out_dir or tempfile.mkdtemp(prefix="mcar-check-"))
    sanitize = book.sanitizer(book.load_sanitizers(SANITIZE_FILE))
    problems: list[str] = []
    differences: list[book.GlueDifference] = []
    total = 0.0
    for path in select(chapters):
        ex = execute(path, folder / path.name, {"PROFILE": profile})
        total += ex.seconds
        committed = book.glued_text(path)
        executed = book.glued_text(ex.output) if ex.output.exists() else {}
        claims, failed = _claims_summary(ex.output)
        stopped_early = ex.error is not None and not failed  # it crashed before its claims cell
        if stopped_early:  # only what it glued before stopping can be compared
            committed = {k: v for k, v in committed.items() if k in executed}
        diffs = book.compare_glued(committed, executed, chapter=ex.chapter, sanitize=sanitize)
        differences += diffs
        changed = {d.name for d in diffs}
        status = "ok" if ex.error is None and not diffs else "FAILED"
        print(f"{status:6s} {ex.chapter}: {sum(n not in changed for n in committed)} of {len(committed)} glued values "
              f"as committed; {claims}; {ex.seconds:.1f} s", flush=True)
        problems += [f"{ex.chapter}: claim fails: {c}" for c in failed]
        if stopped_early:
            problems.append(f"{ex.chapter}: stopped with {ex.error.splitlines()[0][:500]}")
    print(f"executed notebooks in {folder}; total {total:.0f} s")
    if differences:
        print(f"\n{len(differences)} glued values differ from the committed notebooks (stale numbers in the prose?):")
        print(book.format_differences(differences))
        print("\nIf the change is intended, regenerate the committed outputs: .venv/bin/python scripts/chapters.py run")
    if problems:
        print("\n" + "\n".join(problems))
    return 1 if differences or problems else 0


# ---------------------------------------------------------------------------------------------------- glued


def list_glued(notebooks: list[str]) -> None:
    """Print each notebook's glued values (name = repr) and its claims record, if any."""
    for nb in notebooks:
        values = book.glued_text(nb)
        print(f"{nb}: {len(values)} glued values")
        width = max((len(name) for name in values), default=0)
        for name, text in values.items():
            print(f"  {name:{width}s} = {text}")
        record = book.claims_record(nb)
        if record is not None:
            verdict = "all hold" if record["passed"] else "failed: " + "; ".join(record["failed_claims"])
            print(f"  claims ({len(record['claims'])}): {verdict}")


# ---------------------------------------------------------------------------------------------------- sweep


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _machine(device: str) -> dict[str, str]:
    import torch

    name = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": str(os.cpu_count()), "python": platform.python_version(), "device_name": name}


def run_entry(ex: Execution, seed: int, device: str, profile: str) -> dict[str, Any]:
    """One sweep entry: whether the claims held, which failed (or why the chapter stopped), every glued value."""
    exists = ex.output.exists()
    record = book.claims_record(ex.output) if exists else None
    failed = list(record["failed_claims"]) if record else []
    if ex.error is not None and not failed:
        failed = [f"the chapter stopped before its claims held: {ex.error[:1000]}"]
    return {"chapter": ex.chapter, "seed": seed, "device": device, "profile": profile,
            "passed": ex.error is None and (record is None or bool(record["passed"])), "failed_claims": failed,
            "n_claims": len(record["claims"]) if record else None, "seconds": round(ex.seconds, 1),
            "values": book.glued_values(ex.output) if exists else {}}


def _key(entry: dict[str, Any]) -> tuple:
    return entry["chapter"], entry["seed"], entry["device"], entry["profile"]


def merge_runs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every entry of ``new`` added or replacing the one with the same (chapter, seed, device,
    profile); sorted by chapter, profile, device, seed."""
    merged = {_key(e): e for e in old}
    merged.update({_key(e): e for e in new})
    return sorted(merged.values(), key=lambda e: (e["chapter"], e["profile"], e["device"], e["seed"]))


def sweep(seeds: list[int], profile: str = "cpu", device: str = "cpu", chapters: list[str] | None = None,
          out: str | Path = ROOT / "benchmarks" / "robustness.json", work_dir: str | None = None) -> dict[str, Any]:
    """Execute every selected chapter once per seed (book order; each seed from its own empty checkpoint cache,
    shared by the chapters of that seed as in a real build) and merge the runs into ``out``.

    A chapter that fails (a claim or an exception) does not stop the sweep; its entry says why.
    """
    import torch

    os.environ.setdefault("MCAR_QUIET", "1")  # no MPLBACKEND: kernels keep their inline backend, as in `run`
    device = _resolve_device(device)
    paths = select(chapters)
    work = Path(work_dir or tempfile.mkdtemp(prefix="mcar-sweep-"))
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs: list[dict[str, Any]] = []
    saved_cache = os.environ.get("MCAR_CACHE_DIR")
    try:
        for seed in seeds:
            cache = Path(tempfile.mkdtemp(prefix=f"mcar-cache-seed{seed}-"))
            os.environ["MCAR_CACHE_DIR"] = str(cache)  # inherited by every kernel started for this seed
            try:
                for path in paths:
                    ex = execute(path, work / f"seed{seed}" / path.name,
                                 {"PROFILE": profile, "SEED": seed, "DEVICE": device})
                    entry = run_entry(ex, seed, device, profile)
                    entry.update(date=date, torch=torch.__version__)
                    runs.append(entry)
                    verdict = "passed" if entry["passed"] else "FAILED: " + "; ".join(entry["failed_claims"])[:300]
                    print(f"{ex.chapter} seed {seed} ({profile}, {device}): {verdict} ({ex.seconds:.1f} s)", flush=True)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        if saved_cache is None:
            os.environ.pop("MCAR_CACHE_DIR", None)
        else:
            os.environ["MCAR_CACHE_DIR"] = saved_cache
    total = time.perf_counter() - started
    out = Path(out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    header = {"date": date, "machine": _machine(device), "torch": torch.__version__, "total_seconds": round(total, 1),
              "profile": profile, "device": device, "seeds": list(seeds), "chapters": [p.stem for p in paths]}
    result = {**header, "sweeps": previous.get("sweeps", []) + [header],
              "runs": merge_runs(previous.get("runs", []), runs)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    n_passed = sum(e["passed"] for e in runs)
    print(f"{n_passed} of {len(runs)} runs passed; wrote {out} (executed notebooks in {work}); "
          f"total running time {total:.0f} s", flush=True)
    return result


def record(notebooks: list[str], seed: int, profile: str = "cpu", device: str = "cpu",
           out: str | Path = ROOT / "benchmarks" / "robustness.json") -> list[dict[str, Any]]:
    """Add notebooks already executed with ``seed`` (e.g. the committed outputs, by ``run``) to ``out`` as sweep
    entries, so a seed need not be executed twice; the time of each is the sum of papermill's cell durations."""
    import nbformat
    import torch

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entries = []
    for name in notebooks:
        path = Path(name)
        cells = nbformat.read(path, as_version=4).cells
        seconds = sum(float(c.metadata.get("papermill", {}).get("duration") or 0.0) for c in cells)
        errors = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        error = f"{errors[0].ename}: {errors[0].evalue}" if errors else None
        entry = run_entry(Execution(path.stem, path, seconds, error), seed, device, profile)
        entry.update(date=date, torch=torch.__version__)
        entries.append(entry)
    out = Path(out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    result = {**previous, "runs": merge_runs(previous.get("runs", []), entries)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(entries)} notebooks (seed {seed}, {profile}, {device}) in {out}")
    return entries


# ------------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="print the chapter paths in book order")
    p_run = sub.add_parser("run", help="execute every chapter (in place unless OUT_DIR is given)")
    p_run.add_argument("profile", nargs="?", default="cpu")
    p_run.add_argument("out_dir", nargs="?")
    p_run.add_argument("--chapters", nargs="+", metavar="CHAPTER",
                       help="only these chapters (stems or paths), e.g. to resume after a failure")
    p_check = sub.add_parser("check", help="execute into a temporary folder and compare glued values")
    p_check.add_argument("--profile", default="cpu")
    p_check.add_argument("--chapters", nargs="+", metavar="CHAPTER")
    p_check.add_argument("--out-dir", help="keep the executed notebooks here (default: a new temporary folder)")
    p_glued = sub.add_parser("glued", help="list the glued values of notebooks")
    p_glued.add_argument("notebooks", nargs="+")
    p_sweep = sub.add_parser("sweep", help="execute every chapter once per seed, each seed from an empty cache")
    p_sweep.add_argument("--seeds", nargs="+", type=int, required=True)
    p_sweep.add_argument("--profile", default="cpu")
    p_sweep.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p_sweep.add_argument("--chapters", nargs="+", metavar="CHAPTER")
    p_sweep.add_argument("--out", default=str(ROOT / "benchmarks" / "robustness.json"))
    p_sweep.add_argument("--work-dir", help="keep the executed notebooks here (default: a new temporary folder)")
    p_record = sub.add_parser("record", help="add already executed notebooks to the sweep file as one seed's runs")
    p_record.add_argument("notebooks", nargs="+")
    p_record.add_argument("--seed", type=int, required=True)
    p_record.add_argument("--profile", default="cpu")
    p_record.add_argument("--device", default="cpu")
    p_record.add_argument("--out", default=str(ROOT / "benchmarks" / "robustness.json"))
    args = parser.parse_args(argv)

    if args.command in (None, "list"):
        print("\n".join(str(p.relative_to(ROOT)) for p in chapter_paths()))
    elif args.command == "run":
        result = run(args.profile, args.out_dir, args.chapters)
        summary = json.dumps({"chapter_seconds": result, "total_seconds": sum(result.values())}, indent=1)
        print(summary)
        if os.environ.get("MCAR_TIMINGS_FILE"):
            Path(os.environ["MCAR_TIMINGS_FILE"]).write_text(summary + "\n")
    elif args.command == "check":
        return check(args.profile, args.chapters, args.out_dir)
    elif args.command == "glued":
        list_glued(args.notebooks)
    elif args.command == "record":
        record(args.notebooks, args.seed, args.profile, args.device, args.out)
    elif args.command == "sweep":
        sweep(args.seeds, args.profile, args.device, args.chapters, args.out, args.work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
