"""Where the project lives is written down once, in pyproject.toml ([project.urls] and the version); the Colab
install cell of every notebook, _config.yml's repository, the README and mcar_lib.__version__ must agree with it,
and nothing installs the library from a moving branch. scripts/sync_install_cells.py fixes any disagreement."""

import importlib.util
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

import mcar_lib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]
TAG = f"v{VERSION}"
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
GIT_URL = re.compile(r"git\+(https?://[^\s\"'`@]+)(?:@([^\s\"'`#]+))?")


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_install_cells", ROOT / "scripts" / "sync_install_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = _sync_module()


def test_pyproject_urls():
    urls = PROJECT.get("urls", {})
    assert {"Homepage", "Repository", "Documentation", "Issues"} <= set(urls), f"[project.urls] has {sorted(urls)}"
    repository = urls["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository), repository
    assert urls["Homepage"].startswith(repository)
    assert urls["Documentation"].startswith(repository)
    assert urls["Issues"] == f"{repository}/issues"
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), f"version {VERSION!r} is not MAJOR.MINOR.PATCH"


def test_library_version_matches_pyproject():
    assert mcar_lib.__version__ == VERSION, (
        f"mcar_lib.__version__ is {mcar_lib.__version__}, pyproject.toml says {VERSION}: run scripts/sync_install_cells.py")


def test_config_repository():
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    assert repository["url"] == PROJECT["urls"]["Repository"]
    # the Colab button opens the notebook at this ref; it must be the release the install cell installs
    assert repository["branch"] == TAG, f"_config.yml repository.branch is {repository['branch']!r}, expected {TAG!r}"


def test_readme_gives_the_address_and_the_pinned_install_line():
    readme = (ROOT / "README.md").read_text()
    assert PROJECT["urls"]["Repository"] in readme
    assert f'"{sync.pip_requirement()}"' in readme
    for url, ref in GIT_URL.findall(readme):
        assert ref == TAG, f"README installs {url} at {ref or 'the default branch'!r}, not the release tag {TAG}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell(path):
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert code and sync.is_install_cell(code[0]), f"{path.name}: the first code cell is not the Colab install cell"
    assert code[0].source == sync.install_cell_source(path.stem), (
        f"{path.name}: the install cell is out of step with pyproject.toml; run scripts/sync_install_cells.py")
    assert not code[0].outputs, f"{path.name}: the install cell has outputs (it must do nothing outside Colab)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_installs_from_a_branch(path):
    repository = PROJECT["urls"]["Repository"]
    for cell in nbformat.read(path, as_version=4).cells:
        for url, ref in GIT_URL.findall(cell.source):
            assert url == repository, f"{path.name}: installs from {url}, not from {repository}"
            assert ref == TAG, f"{path.name}: installs {url} at {ref or 'the default branch'!r}, not at {TAG}"
        for ref in re.findall(r"raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/([^/\s\"']+)/", cell.source):
            assert ref == TAG, f"{path.name}: downloads a file at {ref!r}, not at {TAG}"


def test_sync_check_agrees():
    assert sync.sync(write=False) == [], "run scripts/sync_install_cells.py"
