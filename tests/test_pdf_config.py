"""The PDF's LaTeX configuration (_config.yml), checked without TeX: the engine, the MathJax macros defined for LaTeX
with the same bodies, code and outputs that wrap instead of running off the page, and only settings that Sphinx
knows. `bash scripts/build_pdf` builds the real PDF; where TeX Live is installed, the last test builds a one-page
book that uses every feature the configuration is there for (a few seconds; skipped without TeX, and with
MCAR_PDF_SKIP_TEX=1, which scripts/build_pdf sets for its quick check before the real build)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
SPHINX = CONFIG["sphinx"]["config"]
LATEX_ELEMENTS = SPHINX["latex_elements"]
PREAMBLE = LATEX_ELEMENTS["preamble"]


def _braced(text: str, start: int) -> tuple[str, int]:
    """The contents of the brace group opening at text[start], and the index after its closing brace."""
    assert text[start] == "{", text[start:start + 40]
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "\\":
            continue
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    raise ValueError(f"unbalanced braces from {text[start:start + 40]!r}")


def latex_macros(preamble: str) -> dict[str, tuple[str, int]]:
    """Every ``\\renewcommand{\\name}[n]{body}`` / ``\\newcommand`` of the preamble: name -> (body, number of arguments)."""
    macros = {}
    for match in re.finditer(r"\\(?:re)?newcommand\*?\{\\([A-Za-z]+)\}(?:\[(\d)\])?", preamble):
        body, _ = _braced(preamble, match.end())
        macros[match.group(1)] = (body, int(match.group(2) or 0))
    return macros


def mathjax_macros() -> dict[str, tuple[str, int]]:
    """mathjax3_config's macros as name -> (body, number of arguments); MathJax writes ["body", n] for arguments."""
    macros = {}
    for name, value in SPHINX["mathjax3_config"]["tex"]["macros"].items():
        body, nargs = (value[0], int(value[1])) if isinstance(value, list) else (value, 0)
        macros[name] = (body, nargs)
    return macros


def test_engine_is_xelatex_and_the_pdf_has_a_fixed_name():
    # Unicode in prose and code (λ, ε, ±, ≤, ×, ✓, subscripts) needs a Unicode engine and OpenType fonts.
    assert CONFIG["latex"]["latex_engine"] == "xelatex"
    assert CONFIG["latex"]["latex_documents"]["targetname"] == "mcar-book.tex", "scripts/build_pdf and the README name it"
    assert "mcar-book.pdf" in (ROOT / "scripts" / "build_pdf").read_text()


def test_readme_lists_the_debian_packages_that_the_script_checks():
    script = (ROOT / "scripts" / "build_pdf").read_text()
    packages = re.search(r'^PACKAGES="([^"]+)"', script, re.M).group(1).split()
    readme = (ROOT / "README.md").read_text()
    assert not [p for p in packages if p not in readme], f"README's apt-get line lacks some of {packages}"
    for checked in re.findall(r":(texlive-[a-z-]+|fonts-[a-z-]+|latexmk|make)\b", script):
        assert checked in packages or checked == "texlive-binaries", checked


def test_every_mathjax_macro_is_defined_for_latex_with_the_same_body():
    mathjax, latex = mathjax_macros(), latex_macros(PREAMBLE)
    assert mathjax, "no MathJax macros found in sphinx.config.mathjax3_config.tex.macros"
    missing = sorted(set(mathjax) - set(latex))
    assert not missing, (f"MathJax macros with no LaTeX definition in sphinx.config.latex_elements.preamble: {missing}; "
                         "add \\providecommand{\\NAME}{}\\renewcommand{\\NAME}{BODY} for each (the PDF build fails "
                         "on the first undefined one)")
    differ = {name: (mathjax[name], latex[name]) for name in mathjax if mathjax[name] != latex[name]}
    assert not differ, f"MathJax and LaTeX define these macros differently (MathJax, LaTeX): {differ}"


def test_macros_are_provided_then_renewed():
    # \renewcommand alone fails on a name LaTeX lacks, \newcommand on one it has (the jupyterBook class already
    # defines \argmax and \argmin): \providecommand first makes the pair work for both.
    for name in mathjax_macros():
        assert re.search(r"\\providecommand\{\\" + name + r"\}\{\}\\renewcommand\{\\" + name + r"\}", PREAMBLE), name


def test_math_macro_parser():
    macros = latex_macros(r"\newcommand{\a}{\mathbf{a}} \renewcommand{\b}[2]{\frac{#1}{#2}} \renewcommand{\c}{x\{y\}}")
    assert macros == {"a": (r"\mathbf{a}", 0), "b": (r"\frac{#1}{#2}", 2), "c": (r"x\{y\}", 0)}


def test_code_and_outputs_wrap_instead_of_running_off_the_page():
    options = dict(item.split("=", 1) for item in
                   (part.strip() for part in re.split(r",(?![^{]*\})", LATEX_ELEMENTS["sphinxsetup"])) if item)
    assert options.get("verbatimwrapslines") == "true"  # break long code lines at spaces and punctuation
    assert options.get("verbatimforcewraps") == "true"  # and lines with no such point anywhere
    assert options.get("verbatimmaxoverfull") == "0"  # as soon as they stick out at all
    # Outputs one size smaller than code (printed tables), and identifiers in inline code breakable after "_".
    assert r"\newenvironment{sphinxclasscell_output}{\fvset{fontsize=\footnotesize}}" in PREAMBLE
    assert r"\protected\def\sphinxcode#1" in PREAMBLE


def test_fonts_cover_unicode_and_math_is_bold_where_asked():
    fonts = LATEX_ELEMENTS["fontpkg"]
    assert r"\setmainfont{FreeSerif}" in fonts and r"\setmonofont{DejaVu Sans Mono}" in fonts
    assert r"\setmathfont{XITSMath-Bold.otf}[version=bold]" in PREAMBLE  # \boldsymbol (\btheta, \bdelta) is bold


def test_only_settings_sphinx_knows():
    from sphinx.builders import latex
    from sphinx.builders.latex.constants import DEFAULT_SETTINGS

    class Recorder:
        names: set[str] = set()

        def add_config_value(self, name, *args, **kwargs):
            self.names.add(name)

        def __getattr__(self, _name):
            return lambda *args, **kwargs: None

    latex.setup(Recorder())
    unknown = sorted(key for key in SPHINX if key.startswith("latex_") and key not in Recorder.names)
    assert not unknown, f"sphinx.config keys that Sphinx's LaTeX builder does not know (typos?): {unknown}"
    unknown = sorted(set(LATEX_ELEMENTS) - set(DEFAULT_SETTINGS))
    assert not unknown, f"latex_elements keys that Sphinx does not know (typos?): {unknown}"
    assert set(CONFIG["latex"]) <= {"latex_engine", "use_jupyterbook_latex", "latex_documents"}


# --- a real build, where TeX Live is installed ----------------------------------------------------------------------

PAGE = """\
# Tiny

Every macro: $\\R, \\E, \\w, \\x, \\btheta, \\bdelta, \\bphi, \\loss, \\argmax_t f, \\argmin_t f$ and λ ± ε ≤ ×.

$$
\\loss_\\epsilon(\\x) = \\max_{\\bdelta} \\loss(\\x + \\bdelta)
$$

```{exercise}
:label: tiny-ex-one

Do this.
```

```{solution} tiny-ex-one
:class: dropdown

Done.
```

```{prf:theorem}
:label: tiny-thm

True.
```

```python
x = compute(a_very_long_argument_name_number_one, a_very_long_argument_name_number_two, a_third_one, "and_a_string")
digest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
```
"""

OTHER = """\
# Other

See {numref}`tiny-ex-one`.
"""


def _notebook() -> dict:
    output = {"data": {"application/papermill.record/text/plain": "42.5"}, "output_type": "display_data",
              "metadata": {"scrapbook": {"mime_prefix": "application/papermill.record/", "name": "tiny_value"}}}
    printed = {"name": "stdout", "output_type": "stream", "text": ["ℓ ✓ ✗ ᵀ " + "column " * 30 + "\n", "0123456789" * 15 + "\n"]}
    return {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": PAGE},
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "glue('tiny_value', 42.5)\nprint('...')",
         "outputs": [output, printed]},
        {"cell_type": "markdown", "metadata": {}, "source": "Glued: {glue:text}`tiny_value`."},
    ], "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5}


def _tex_available() -> bool:
    return all(shutil.which(tool) for tool in ("xelatex", "latexmk", "make", "kpsewhich")) and bool(
        subprocess.run(["kpsewhich", "bbm.sty"], capture_output=True, text=True).stdout.strip())


@pytest.mark.skipif(os.environ.get("MCAR_PDF_SKIP_TEX") == "1" or not _tex_available(),
                    reason="TeX Live not installed (see scripts/build_pdf), or MCAR_PDF_SKIP_TEX=1")
def test_a_tiny_book_builds_to_a_pdf_with_nothing_sticking_out(tmp_path):
    config = dict(CONFIG)
    config.pop("launch_buttons", None)
    config["only_build_toc_files"] = True
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "intro", "parts": [
        {"caption": "Chapters", "numbered": 1, "chapters": [{"file": "tiny"}, {"file": "other"}]}]}))
    (tmp_path / "intro.md").write_text("# Intro\n\nA tiny book.\n")
    (tmp_path / "tiny.ipynb").write_text(json.dumps(_notebook()))
    (tmp_path / "other.md").write_text(OTHER)
    for name in CONFIG.get("bibtex_bibfiles", []):
        shutil.copy(ROOT / name, tmp_path / name)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    env = {**os.environ, "LATEXOPTS": "-interaction=nonstopmode -halt-on-error"}
    result = subprocess.run([str(jupyter_book), "build", str(tmp_path), "--builder", "pdflatex"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=300)
    latex = tmp_path / "_build" / "latex"
    log = (latex / "mcar-book.log").read_text(errors="replace") if (latex / "mcar-book.log").exists() else ""
    assert result.returncode == 0 and (latex / "mcar-book.pdf").exists(), (
        "\n".join(re.findall(r"^!.*\n.*\n.*\n.*", log, re.M)) or result.stdout[-3000:] + result.stderr[-3000:])
    assert not re.findall(r"^Overfull \\hbox.*", log, re.M), "a line sticks out of the text block"
    assert not re.findall(r"^Missing character.*", log, re.M), "a character the fonts lack"
    assert not re.findall(r"LaTeX Warning: (?:Hyper r|R)eference .* undefined", log), "an unresolved reference"
    aux = (latex / "mcar-book.aux").read_text()
    # The exercise is number 1.1 under its own label and under the one that a reference from another page asks for.
    assert r"\newlabel{exercise:tiny-ex-one}{{1.1}" in aux and r"\newlabel{tiny:tiny-ex-one}{{1.1}" in aux, aux
