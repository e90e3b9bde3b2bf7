"""Keep every place that says where the project lives in step with pyproject.toml (the single source of truth).

    python scripts/sync_install_cells.py          # rewrite whatever disagrees, list what changed
    python scripts/sync_install_cells.py --check  # change nothing; exit 1 if anything disagrees

pyproject.toml gives the version and ``[project.urls]``; from them this script writes

- the first code cell of every notebook in ``book/`` (the Colab install cell), which installs the library
  from the release tag ``v{version}`` of the repository, never from a moving branch;
- ``repository.url`` and ``repository.branch`` (the tag) in ``_config.yml``, so that a chapter's Colab
  button opens the notebook of the same release that its install cell installs;
- the install line in ``README.md`` and ``__version__`` in ``mcar_lib/__init__.py``.

A release is then: bump ``version`` in pyproject.toml, run this script, commit, tag ``v{version}``
(see CONTRIBUTING.md). ``tests/test_project_url.py`` fails while anything disagrees.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"

# Repository files a chapter reads besides the library (paths relative to the repository root). On Colab only
# the notebook is there, so its install cell also fetches these, from the same release, to the same relative
# place (the chapters run with book/ as their working directory).
EXTRA_FILES: dict[str, tuple[str, ...]] = {
    "90_performance": ("benchmarks/results.json",),
}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def version() -> str:
    return project()["version"]


def release_tag() -> str:
    return f"v{version()}"


def repository_url() -> str:
    url = project()["urls"]["Repository"]
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"[project.urls] Repository = {url!r}: expected https://github.com/<owner>/<name> "
                         "(the install cells and the raw-file downloads are built from it)")
    return url


def pip_requirement() -> str:
    """What the install cell and the README install: the library at the release tag."""
    return f"{project()['name']} @ git+{repository_url()}@{release_tag()}"


def raw_url(path: str) -> str:
    """The address of a repository file at the release tag."""
    return f"{repository_url().replace('https://github.com/', 'https://raw.githubusercontent.com/')}/{release_tag()}/{path}"


def install_cell_source(stem: str) -> str:
    """The exact source of the first code cell of ``book/{stem}.ipynb``."""
    lines = [
        f"# Colab only: install mcar_lib from release {release_tag()},",
        "# the release this notebook belongs to. Fashion-MNIST is downloaded",
        "# by torchvision on first use. Elsewhere this cell does nothing.",
        "import sys",
        "",
        'if "google.colab" in sys.modules:',
        f'    %pip install -q "{pip_requirement()}"',
    ]
    extra = EXTRA_FILES.get(stem, ())
    if extra:
        lines += [
            "    # files of the same release that this page reads",
            "    import urllib.request",
            "    from pathlib import Path",
            "",
        ]
        for path in extra:
            target = f"../{path}"
            lines += [
                f'    Path("{target}").parent.mkdir(parents=True, exist_ok=True)',
                "    urllib.request.urlretrieve(",
                f'        "{raw_url(path)}",',
                f'        "{target}",',
                "    )",
            ]
    return "\n".join(lines)


def is_install_cell(cell) -> bool:
    return cell.cell_type == "code" and '"google.colab" in sys.modules' in cell.source


def notebooks() -> list[Path]:
    return sorted(BOOK.glob("*.ipynb"))


def sync_notebook(path: Path, write: bool) -> bool:
    """Make the first code cell the install cell; True if it was (or would be) changed."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or not is_install_cell(code[0]):
        raise SystemExit(f"{path.relative_to(ROOT)}: the first code cell is not the Colab install cell "
                         '(it must test `"google.colab" in sys.modules`); add one, copied from book/_template.ipynb')
    wanted = install_cell_source(path.stem)
    if code[0].source == wanted:
        return False
    if write:
        code[0].source = wanted  # only the source: the cell does nothing outside Colab, so it has no output
        nbformat.write(nb, path)
    return True


def _replace_in_file(path: Path, pattern: str, replacement: str, write: bool, *, what: str) -> bool:
    text = path.read_text()
    new, n = re.subn(pattern, replacement, text, flags=re.M)
    if n == 0:
        raise SystemExit(f"{path.relative_to(ROOT)}: no {what} found to update (pattern {pattern!r})")
    if new != text and write:
        path.write_text(new)
    return new != text


def sync_config(write: bool) -> bool:
    path = ROOT / "_config.yml"
    changed = _replace_in_file(path, r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)\"[^\"]*\"",
                               rf'\g<1>"{repository_url()}"', write, what="repository.url")
    changed |= _replace_in_file(path, r"^(repository:\n(?:[ \t]+.*\n)*?[ \t]+branch:[ \t]*)\"[^\"]*\"",
                                rf'\g<1>"{release_tag()}"', write, what="repository.branch")
    return changed


def sync_readme(write: bool) -> bool:
    return _replace_in_file(ROOT / "README.md", r"[\w.-]+ @ git\+https://[^\s\"'`]+", pip_requirement(), write,
                            what="install line (mcar-lib @ git+https://...)")


def sync_version(write: bool) -> bool:
    return _replace_in_file(ROOT / "mcar_lib" / "__init__.py", r'^__version__ = "[^"]*"',
                            f'__version__ = "{version()}"', write, what="__version__")


def sync(write: bool = True) -> list[str]:
    """Bring everything in step; the list of what changed (or, with ``write=False``, would change)."""
    changed = [str(p.relative_to(ROOT)) for p in notebooks() if sync_notebook(p, write)]
    for name, step in (("_config.yml", sync_config), ("README.md", sync_readme),
                       ("mcar_lib/__init__.py", sync_version)):
        if step(write):
            changed.append(name)
    return changed


if __name__ == "__main__":
    check = "--check" in sys.argv[1:]
    changed = sync(write=not check)
    if check:
        if changed:
            sys.exit("out of step with pyproject.toml (run python scripts/sync_install_cells.py): " + ", ".join(changed))
        print(f"everything installs {pip_requirement()}")
    else:
        print("updated: " + ", ".join(changed) if changed else f"nothing to do: everything installs {pip_requirement()}")
