"""The chapter notebooks listed in _toc.yml, in book order; executing them with papermill.

    python scripts/chapters.py list                      # print the chapter paths
    python scripts/chapters.py run [PROFILE] [OUT_DIR]   # execute them (in place unless OUT_DIR is given)

Running them in place in the default profile is how the committed outputs are regenerated.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def chapter_paths() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]] + [ch["file"] for part in toc.get("parts", []) for ch in part.get("chapters", [])]
    return [ROOT / f"{name}.ipynb" for name in names if (ROOT / f"{name}.ipynb").exists()]


def run(profile: str = "cpu", out_dir: str | None = None) -> dict[str, float]:
    import papermill

    os.environ.setdefault("MCAR_QUIET", "1")
    # no MPLBACKEND here: the kernel must use its inline backend, or the figures vanish from the outputs
    timings: dict[str, float] = {}
    for path in chapter_paths():
        out = path if out_dir is None else Path(out_dir) / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        papermill.execute_notebook(str(path), str(out), parameters={"PROFILE": profile}, kernel_name="python3",
                                   cwd=str(ROOT / "book"), execution_timeout=1800, progress_bar=False)
        timings[path.stem] = time.perf_counter() - start
        print(f"executed {path.relative_to(ROOT)} (profile {profile}) in {timings[path.stem]:.1f} s", flush=True)
    return timings


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "list"
    if command == "list":
        print("\n".join(str(p.relative_to(ROOT)) for p in chapter_paths()))
    elif command == "run":
        result = run(*sys.argv[2:4])
        summary = json.dumps({"chapter_seconds": result, "total_seconds": sum(result.values())}, indent=1)
        print(summary)
        if os.environ.get("MCAR_TIMINGS_FILE"):
            Path(os.environ["MCAR_TIMINGS_FILE"]).write_text(summary + "\n")
    else:
        sys.exit(f"unknown command {command!r}; use 'list' or 'run'")
