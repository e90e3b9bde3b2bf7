"""What the book's notebooks share beyond the library proper: gluing results into the prose, checking a chapter's
claims, and reading both back out of an executed notebook.

Chapters call :func:`glue` instead of ``myst_nb.glue`` directly, for two reasons: MyST formats a glued number
from its text form, which for a NumPy or torch scalar is ``np.float64(86.0)`` or ``tensor(0.5)`` and cannot
be formatted; and on Colab, where only ``mcar_lib`` is installed, a chapter must still run without MyST-NB.

Every chapter ends with :class:`Claims`: its headline results, each checked and shown to the reader as a
checklist ("What this run showed"), all failures reported at once, and a machine-readable record left in the
notebook so that scripts (the seeds sweep, CI) can tell which claims held without parsing text.

Where things are in an executed ``.ipynb`` (a plain JSON file, so the readers below need only the standard
library and also accept an ``nbformat`` notebook, which is a dict):

- a glued value is a ``display_data`` output whose ``metadata.scrapbook.name`` is the glue name and whose
  ``data["application/papermill.record/text/plain"]`` is the value's ``repr`` (:func:`glued_text`,
  :func:`glued_values`);
- the claims record is a ``display_data`` output with the MIME type :data:`CLAIMS_MIME` holding the JSON object
  ``{"chapter", "profile", "seed", "enforced", "passed", "failed_claims", "claims"}`` (:func:`claims_record`).
  A dedicated MIME type rather than a glue because it exists wherever the chapter ran (glue needs MyST-NB),
  nbformat stores it as JSON rather than as the repr of a string, and it stays out of the glued values that
  the prose cites and CI compares. Renderers that do not know the type show the same output's text/html or
  text/plain checklist instead.
"""

from __future__ import annotations

import ast
import configparser
import html
import json
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

GLUE_MIME = "application/papermill.record/text/plain"
CLAIMS_MIME = "application/vnd.mcar-book.claims+json"


def glue(name: str, value: Any, display: bool = False) -> None:
    """Record ``value`` under ``name`` for ``{glue:text}`` roles in the prose (MyST-NB), as a plain Python value.

    Scalars with an ``.item()`` (NumPy, torch) are converted first. Without MyST-NB installed nothing is
    recorded: the numbers only matter when the book is rendered.
    """
    if hasattr(value, "item"):
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    myst_glue(name, value, display=display)


def _rounded(value: Any, decimals: int) -> Any:
    """A glued number as the reader's table shows it: floats rounded (NumPy and torch scalars too), integers and
    text as they are."""
    if isinstance(value, (str, bool, numbers.Integral)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and not _is_floating(value) else round(number, decimals)


def _is_floating(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return isinstance(value, float)
    return bool(getattr(dtype, "is_floating_point", False)) or getattr(dtype, "kind", "") == "f"


def glue_table(values: Mapping[str, tuple[Any, str]], *, decimals: int = 2) -> pd.DataFrame:
    """Glue every value (``{name: (value, what it is)}``) and return the compact table a reader sees in the
    cell's output: the quantity, its value, and the glue name the prose cites.

    On Colab or in plain Jupyter, where the ``{glue:text}`` roles of the prose stay unrendered, this table right
    above the prose is where the numbers are. Floats are shown rounded to ``decimals``.
    """
    rows = []
    for name, (value, label) in values.items():
        glue(name, value)
        rows.append({"quantity": label, "value": _rounded(value, decimals), "glued as": name})
    return pd.DataFrame(rows).set_index("quantity")


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of repeated measurements."""
    items = [float(v) for v in values]
    if not items:
        raise ValueError("mean_sd needs at least one value")
    mean = sum(items) / len(items)
    sd = (sum((v - mean) ** 2 for v in items) / (len(items) - 1)) ** 0.5 if len(items) > 1 else 0.0
    return mean, sd


# --------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """One headline claim of a chapter: what the prose says, whether this run bears it out, what was measured."""

    claim: str
    holds: bool
    measured: str = ""

    def line(self) -> str:
        """``claim (measured)``: how a claim is named in failure lists and in the sweep's ``failed_claims``."""
        return f"{self.claim} ({self.measured})" if self.measured else self.claim


class Claims:
    """A chapter's headline claims: check them all, show the reader a checklist, fail loudly when enforced.

    Plain ``assert`` statements stop at the first failure and say nothing to a reader when they pass. This
    collects every check, then :meth:`report` shows the checklist (text/html in the book and in Jupyter or
    Colab, text/plain elsewhere), leaves the machine-readable record in the notebook (:data:`CLAIMS_MIME`) and,
    when ``enforce`` is true, raises one ``AssertionError`` listing *every* failed claim, so that papermill and
    CI still fail. Chapters pass ``enforce=PROFILE != "smoke"``: the smoke profile's tiny models only exercise
    the code, so there the claims are shown but not enforced.

        claims = Claims("02_backdoor_repair", enforce=PROFILE != "smoke", profile=PROFILE, seed=SEED)
        claims.check(asr <= 10, "path repair at N = 2500 removes the backdoor (ASR at most 10 %)", f"ASR {asr:.1f} %")
        claims.report()
    """

    def __init__(self, chapter: str, *, enforce: bool = True, profile: str | None = None,
                 seed: int | None = None) -> None:
        self.chapter = chapter
        self.enforce = bool(enforce)
        self.profile = profile
        self.seed = seed
        self.claims: list[Claim] = []

    def check(self, condition: Any, claim: str, measured: str = "") -> bool:
        """Record whether ``claim`` holds in this run; returns the outcome and never raises on a false condition.

        ``condition`` may be a NumPy or torch boolean (it goes through ``bool``). ``claim`` is a sentence for the
        reader stating the threshold; ``measured`` is the value(s) behind it, rounded, with units.
        """
        holds = bool(condition)
        self.claims.append(Claim(claim=str(claim), holds=holds, measured=str(measured)))
        return holds

    @property
    def failed(self) -> list[Claim]:
        return [c for c in self.claims if not c.holds]

    @property
    def passed(self) -> bool:
        """True when every checked claim holds (vacuously true with none checked)."""
        return not self.failed

    def record(self) -> dict[str, Any]:
        """The machine-readable record (plain JSON types) stored in the notebook under :data:`CLAIMS_MIME`."""
        return {"chapter": self.chapter, "profile": self.profile, "seed": self.seed, "enforced": self.enforce,
                "passed": self.passed, "failed_claims": [c.line() for c in self.failed],
                "claims": [asdict(c) for c in self.claims]}

    def _headline(self) -> str:
        context = ", ".join([self.chapter] + [f"{k} {v}" for k, v in (("profile", self.profile), ("seed", self.seed))
                                              if v is not None])
        n, n_ok = len(self.claims), len(self.claims) - len(self.failed)
        if n == 1:
            verdict = "the claim holds" if self.passed else "the claim does not hold"
        else:
            verdict = (f"all {n} claims hold" if self.passed else f"{n_ok} of {n} claims hold") if n else "no claims"
        if not self.enforce:
            verdict += " (not enforced in this run)"
        return f"What this run showed ({context}): {verdict}"

    def text(self) -> str:
        """The checklist as plain text: a headline, then one ``✓``/``✗`` line per claim with its measured value."""
        lines = [self._headline()]
        for c in self.claims:
            lines.append(f"  {'✓' if c.holds else '✗'} {c.claim}" + (f" — {c.measured}" if c.measured else ""))
        return "\n".join(lines)

    def html(self) -> str:
        """The checklist as a small HTML table (what the rendered book, Jupyter and Colab show)."""
        rows = "".join(
            f'<tr><td style="color:{"#1a7f37" if c.holds else "#cf222e"};font-weight:bold">'
            f'{"✓" if c.holds else "✗"}</td><td>{html.escape(c.claim)}</td><td>{html.escape(c.measured)}</td></tr>'
            for c in self.claims)
        return (f'<div class="mcar-claims"><p><strong>{html.escape(self._headline())}</strong></p>'
                f'<table><thead><tr><th></th><th>claim</th><th>measured</th></tr></thead>'
                f'<tbody>{rows}</tbody></table></div>')

    def bundle(self) -> dict[str, Any]:
        """The display output: the checklist for people (text/html, text/plain) and the record for scripts."""
        return {"text/plain": self.text(), "text/html": self.html(), CLAIMS_MIME: self.record()}

    def report(self) -> None:
        """Show the checklist, leave the record in the notebook, and raise if enforced and any claim failed.

        In a notebook the three representations go out as one display output (the record survives in the
        ``.ipynb`` even when the cell then raises); outside IPython the text checklist is printed. Returns
        nothing, so that a cell ending with ``claims.report()`` shows the checklist once (see :meth:`record`).
        """
        _show(self.bundle())
        if self.enforce and self.failed:
            failures = "\n".join(f"  - {c.line()}" for c in self.failed)
            raise AssertionError(f"{self.chapter}: {len(self.failed)} of {len(self.claims)} claims fail:\n{failures}")


def _show(bundle: dict[str, Any]) -> None:
    """One display output in IPython (a kernel or the terminal shell); a plain print anywhere else."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is not None and get_ipython() is not None:
        display(bundle, raw=True)
    else:
        print(bundle["text/plain"])


# ------------------------------------------------------------------------------------- reading notebooks back


def read_notebook(notebook: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """A notebook as a dict: a path to an ``.ipynb`` is read as JSON; a dict (or nbformat node) is used as is."""
    if isinstance(notebook, Mapping):
        return notebook
    return json.loads(Path(notebook).read_text(encoding="utf-8"))


def _outputs(nb: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            yield from cell.get("outputs", [])


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)  # nbformat may split text into lines


def glued_text(notebook: str | Path | Mapping[str, Any]) -> dict[str, str]:
    """Every glued value of a notebook as stored: ``{name: repr}`` in notebook order (a later glue of a name wins).

    The repr is what MyST-NB formats and what CI compares, character for character: a float's repr is exact.
    """
    values: dict[str, str] = {}
    for output in _outputs(read_notebook(notebook)):
        name = output.get("metadata", {}).get("scrapbook", {}).get("name")
        data = output.get("data", {})
        if name is not None and GLUE_MIME in data:
            values[name] = _text(data[GLUE_MIME])
    return values


def parse_glued(text: str) -> Any:
    """A glued repr back as a Python value (``'87.1'`` -> 87.1, ``"'Trouser'"`` -> 'Trouser'); else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def glued_values(notebook: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Every glued value of a notebook as a Python value (see :func:`glued_text` and :func:`parse_glued`)."""
    return {name: parse_glued(text) for name, text in glued_text(notebook).items()}


def claims_record(notebook: str | Path | Mapping[str, Any]) -> dict[str, Any] | None:
    """The record left by :meth:`Claims.report` (the last one, if several), or None if the notebook has none."""
    record = None
    for output in _outputs(read_notebook(notebook)):
        data = output.get("data", {})
        if CLAIMS_MIME in data:
            value = data[CLAIMS_MIME]
            record = json.loads(value) if isinstance(value, str) else dict(value)
    return record


def errors(notebook: str | Path | Mapping[str, Any]) -> list[str]:
    """``"ename: evalue"`` of every error output: why an executed notebook stopped, when it did."""
    return [f"{o.get('ename', 'Error')}: {o.get('evalue', '')}" for o in _outputs(read_notebook(notebook))
            if o.get("output_type") == "error"]


# ------------------------------------------------------------------------------------ comparing glued values


@dataclass(frozen=True)
class GlueDifference:
    """A glued value that differs between the committed notebook and a re-execution (None: the name is missing)."""

    chapter: str
    name: str
    committed: str | None
    executed: str | None


def load_sanitizers(path: str | Path) -> list[tuple[str, str]]:
    """``(regex, replacement)`` pairs from an nbval-style sanitize file (``[section]``, ``regex:``, ``replace:``).

    The same file that keeps run-dependent text (times, addresses, cache paths) out of output comparisons.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(Path(path).read_text(encoding="utf-8"))
    return [(parser[s]["regex"], parser[s].get("replace", "")) for s in parser.sections() if "regex" in parser[s]]


def sanitizer(patterns: Iterable[tuple[str, str]]) -> Callable[[str], str]:
    """A function applying ``patterns`` in order, as nbval does before comparing."""
    compiled = [(re.compile(regex), replace) for regex, replace in patterns]

    def sanitize(text: str) -> str:
        for regex, replace in compiled:
            text = regex.sub(replace, text)
        return text

    return sanitize


def compare_glued(committed: Mapping[str, str], executed: Mapping[str, str], *, chapter: str = "",
                  sanitize: Callable[[str], str] | None = None) -> list[GlueDifference]:
    """Glued values that differ, as reprs compared exactly (after ``sanitize``, if given), plus names missing on
    either side. On CPU the chapters are bit-reproducible, so any difference means a committed number is stale.
    """
    clean = sanitize or (lambda s: s)
    differences = []
    for name in list(committed) + [n for n in executed if n not in committed]:
        old, new = committed.get(name), executed.get(name)
        if old is None or new is None or clean(old) != clean(new):
            differences.append(GlueDifference(chapter, name, old, new))
    return differences


def format_differences(differences: Iterable[GlueDifference]) -> str:
    """A readable table: chapter, glue name, committed value, re-executed value (``-`` where missing)."""
    rows = [("chapter", "glued value", "committed", "re-executed")]
    rows += [(d.chapter, d.name, "-" if d.committed is None else d.committed,
              "-" if d.executed is None else d.executed) for d in differences]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------- results of the seeds sweep (appendix 91)


def release_raw_url(path: str) -> str | None:
    """The address of a repository file at this library's release tag ``v{version}``, or None if unknown.

    Built from the installed package's metadata (pyproject's ``[project.urls] Repository`` and ``version``), so
    that a notebook opened alone (Colab) reads the files of the release it installed, and the address is
    written down in one place only.
    """
    from importlib import metadata

    try:
        meta = metadata.metadata("mcar-lib")
    except metadata.PackageNotFoundError:
        return None
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        url = url.strip().rstrip("/")
        if label.strip() == "Repository" and url.startswith("https://github.com/"):
            return f"{url.replace('https://github.com/', 'https://raw.githubusercontent.com/')}/v{meta['Version']}/{path}"
    return None


def find_repository_file(local: str | Path, path: str, *, checkout_marker: str | Path = "../_toc.yml",
                         timeout: float = 15.0) -> tuple[str | None, str]:
    """The text of a repository file and where it came from, or ``(None, why it is missing)``; never raises.

    ``local`` is tried first (relative to the working directory: chapters run in ``book/``). Only when the
    notebook is not inside a checkout (``checkout_marker`` missing: opened alone, as on Colab) is ``path``
    downloaded from the release (:func:`release_raw_url`); in a checkout a missing file is reported as missing,
    with no silent substitute from elsewhere.
    """
    local = Path(local)
    if local.is_file():
        return local.read_text(encoding="utf-8"), str(local)
    if Path(checkout_marker).exists():
        return None, f"{local} does not exist in this checkout"
    url = release_raw_url(path)
    if url is None:
        return None, f"{local} does not exist, and the repository's address is unknown (mcar-lib is not installed)"
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a fixed https address)
            return response.read().decode("utf-8"), url
    except urllib.error.HTTPError as err:
        return None, f"{local} does not exist, and {url} answered {err.code} ({err.reason})"
    except (urllib.error.URLError, OSError) as err:
        return None, f"{local} does not exist, and {url} could not be read ({err})"


def sweep_runs(documents: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runs of several sweep files (``scripts/chapters.py sweep``), one per (chapter, seed, device, profile);
    a later document wins."""
    runs: dict[tuple, dict[str, Any]] = {}
    for doc in documents:
        for run in doc.get("runs", []):
            runs[(run["chapter"], run["seed"], run["device"], run["profile"])] = dict(run)
    return sorted(runs.values(), key=lambda r: (r["chapter"], r["device"], r["seed"]))


def _columns(runs: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict[str, Any]], Any]]:
    devices = sorted({r["device"] for r in runs})
    if len(devices) > 1:
        return devices, lambda r: (r["device"], r["seed"])
    return devices, lambda r: r["seed"]


def claims_overview(runs: list[dict[str, Any]]):
    """Chapter × seed (× device, when there are several) table of ``✓`` (every claim held) or ``✗ k`` (k claims
    failed, or ``✗ stopped`` when the chapter stopped before its claims)."""
    import pandas as pd

    _, column = _columns(runs)

    def cell(run: dict[str, Any]) -> str:
        if run["passed"]:
            return "✓"
        failed = run.get("failed_claims", [])
        if any(c.startswith("the chapter stopped") for c in failed):
            return "✗ stopped"
        return f"✗ {len(failed)}"

    table = pd.DataFrame([{"chapter": r["chapter"], "column": column(r), "cell": cell(r)} for r in runs])
    if table.empty:
        return table
    wide = table.pivot(index="chapter", columns="column", values="cell").fillna("")
    if isinstance(wide.columns[0], tuple):
        wide.columns = pd.MultiIndex.from_tuples(wide.columns, names=["device", "seed"])
    else:
        wide.columns.name = "seed"
    return wide


def failed_claims_table(runs: list[dict[str, Any]]):
    """One row per failed claim of any run: chapter, device, seed, claim (with its measured value)."""
    import pandas as pd

    rows = [{"chapter": r["chapter"], "device": r["device"], "seed": r["seed"], "failed claim": claim}
            for r in runs for claim in r.get("failed_claims", [])]
    return pd.DataFrame(rows, columns=["chapter", "device", "seed", "failed claim"])


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def value_spread(runs: list[dict[str, Any]], chapter: str, *, flag_above: float = 0.1):
    """Mean, standard deviation (over seeds, ddof 1), min and max of each numeric glued value of ``chapter``, per
    device; ``spread`` is the standard deviation relative to ``|mean|`` and ``large`` flags a spread above
    ``flag_above``. Values identical for every seed (settings, sizes) have std 0; callers usually hide them."""
    import math

    import pandas as pd

    rows = []
    for device in sorted({r["device"] for r in runs if r["chapter"] == chapter}):
        chosen = [r for r in runs if r["chapter"] == chapter and r["device"] == device]
        names: dict[str, None] = {}
        for r in chosen:
            names.update(dict.fromkeys(r.get("values", {})))
        for name in names:
            values = [float(r["values"][name]) for r in chosen if _is_number(r.get("values", {}).get(name))]
            if not values:
                continue
            series = pd.Series(values)
            mean, std = float(series.mean()), float(series.std(ddof=1)) if len(values) > 1 else 0.0
            spread = std / abs(mean) if mean else (math.inf if std else 0.0)
            rows.append({"value": name, "device": device, "mean": mean, "std": std, "min": float(series.min()),
                         "max": float(series.max()), "seeds": len(values), "spread": spread,
                         "large": spread > flag_above})
    columns = ["value", "device", "mean", "std", "min", "max", "seeds", "spread", "large"]
    return pd.DataFrame(rows, columns=columns)


def varying_text_values(runs: list[dict[str, Any]], chapter: str) -> dict[str, list[str]]:
    """Glued values of ``chapter`` that are not numbers and differ between runs: ``{name: distinct values}``."""
    seen: dict[str, list[str]] = {}
    for r in runs:
        if r["chapter"] != chapter:
            continue
        for name, value in r.get("values", {}).items():
            if not _is_number(value):
                seen.setdefault(name, [])
                if str(value) not in seen[name]:
                    seen[name].append(str(value))
    return {name: values for name, values in seen.items() if len(values) > 1}


def load_sweep_files(results: str | Path, path: str = "benchmarks/robustness.json") -> tuple[list[dict], list[str]]:
    """The sweep file ``results`` and the other devices' files beside it (``device-*.json``, same format), as
    parsed documents, with one line per file saying where it was read from or why it is missing; never raises.

    Opened alone (Colab), the files come from the release (:func:`find_repository_file`); there the only other
    device looked for is ``device-cuda.json``, since a remote folder cannot be listed.
    """
    documents: list[dict] = []
    notes: list[str] = []

    def add(local: str | Path, name: str, *, required: bool) -> str | None:
        text, source = find_repository_file(local, name)
        if text is None:
            if required:
                notes.append(f"no sweep results: {source}")
            return None
        try:
            documents.append(json.loads(text))
        except json.JSONDecodeError as err:
            notes.append(f"{source} is not valid JSON ({err}); left out")
            return None
        notes.append(f"read {source}")
        return source

    source = add(results, path, required=True)
    if source is None:
        return documents, notes
    folder = str(Path(path).parent)
    if source.startswith("https://"):
        add(Path(results).parent / "device-cuda.json", f"{folder}/device-cuda.json", required=False)
    else:
        for extra in sorted(Path(results).parent.glob("device-*.json")):
            add(extra, f"{folder}/{extra.name}", required=False)
    return documents, notes


# ------------------------------------------------------------------ exercises (student and instructor editions)
#
# An exercise is a MyST ``{exercise}`` directive with a ``:label:`` in a markdown cell, optionally followed by a
# written ``{solution} <label>`` directive (folded in the book, removed from the student edition) and, for an
# autograded exercise, by code cells tagged ``solution`` (the reference answer, its answer region between
# nbgrader's solution delimiters) and ``check`` (assertions that a correct answer passes and a wrong one fails).
# Code cells belong to the last exercise above them. ``scripts/editions.py`` turns this into nbgrader's format.

SOLUTION_TAG = "solution"
CHECK_TAG = "check"
_DIRECTIVE_OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>(?:exercise|solution)(?:-start|-end)?)\}[ \t]*(?P<arg>.*?)\s*$")
_LABEL = re.compile(r"^:label:\s*(\S+)\s*$")


@dataclass(frozen=True)
class Block:
    """A piece of a markdown cell: ``kind`` ``"text"``, or one fenced ``"exercise"`` or ``"solution"`` directive
    (``text`` with its fences; ``label`` the exercise's ``:label:`` or the solution's argument)."""

    kind: str
    text: str
    label: str | None = None

    @property
    def body(self) -> str:
        """A directive's content without its fences and ``:option:`` lines (the text itself for prose)."""
        if self.kind == "text":
            return self.text
        lines = self.text.split("\n")[1:-1]
        while lines and (lines[0].startswith(":") or not lines[0].strip()):
            lines.pop(0)
        return "\n".join(lines).strip()


def directive_blocks(markdown: str) -> list[Block]:
    """Split markdown into prose and top-level ``{exercise}`` / ``{solution}`` directives (backtick or colon
    fences; a directive ends at a fence of the same character at least as long, as in MyST). Blank prose between
    directives is dropped. Gated directives (``{solution-start}`` ...) are refused: ``hide_solutions`` crashes
    on them (sphinx-exercise 1.2.1), and the editions need one block per solution."""
    blocks: list[Block] = []
    text: list[str] = []
    lines = markdown.split("\n")
    i = 0

    def flush() -> None:
        if "".join(text).strip():
            blocks.append(Block("text", "\n".join(text).strip("\n")))
        text.clear()

    while i < len(lines):
        match = _DIRECTIVE_OPEN.match(lines[i])
        if not match:
            text.append(lines[i])
            i += 1
            continue
        name, fence = match["name"], match["fence"]
        if name.endswith(("-start", "-end")):
            raise ValueError(f"gated directive {{{name}}} found: write plain {{exercise}} and {{solution}} blocks "
                             "(sphinx-exercise's hide_solutions crashes on gated solutions)")
        end = i + 1
        while end < len(lines) and not re.fullmatch(re.escape(fence[0]) + "{%d,}\\s*" % len(fence), lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"unclosed {{{name}}} directive: {lines[i]!r}")
        flush()
        inner = lines[i + 1:end]
        label = match["arg"] or None
        if name == "exercise":
            label = next((m[1] for m in map(_LABEL.match, inner) if m), None)
        blocks.append(Block(name, "\n".join(lines[i:end + 1]), label))
        i = end + 1
    flush()
    return blocks


@dataclass(frozen=True)
class Exercise:
    """One exercise of a notebook: its label, the start of its statement, and the indices of the cells that hold
    it, its written solution, its reference answer (cells tagged ``solution``) and its checks (tagged ``check``)."""

    label: str
    statement: str
    cell: int
    written_solution: bool
    solution_cells: tuple[int, ...]
    check_cells: tuple[int, ...]

    @property
    def autograded(self) -> bool:
        return bool(self.check_cells)


def _tags(cell: Mapping[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def exercises(notebook: str | Path | Mapping[str, Any]) -> list[Exercise]:
    """The exercises of a notebook in order, each with its solution and check cells (see the section comment).

    Raises ``ValueError`` for what the editions cannot handle: an exercise without a label or with a label used
    twice, a written solution or a tagged code cell before any exercise, a solution for another exercise than
    the one above it, a cell tagged both ``solution`` and ``check``, or checks without a ``solution`` cell.
    """
    nb = read_notebook(notebook)
    found: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for index, cell in enumerate(nb["cells"]):
        source = _text(cell.get("source", ""))
        if cell["cell_type"] == "markdown":
            for block in directive_blocks(source):
                if block.kind == "exercise":
                    if not block.label:
                        raise ValueError(f"cell {index}: an exercise without a :label: ({block.text[:60]!r})")
                    if block.label in found:
                        raise ValueError(f"cell {index}: exercise label {block.label!r} used twice")
                    statement = " ".join(block.body.split())
                    found[block.label] = {"label": block.label, "statement": statement, "cell": index,
                                          "written_solution": False, "solution_cells": [], "check_cells": []}
                    current = block.label
                elif block.kind == "solution":
                    if block.label != current:
                        raise ValueError(f"cell {index}: {{solution}} {block.label} follows exercise {current!r}")
                    found[current]["written_solution"] = True
        elif cell["cell_type"] == "code":
            tags = _tags(cell)
            roles = [t for t in (SOLUTION_TAG, CHECK_TAG) if t in tags]
            if not roles:
                continue
            if len(roles) > 1:
                raise ValueError(f"cell {index} is tagged both {SOLUTION_TAG!r} and {CHECK_TAG!r}: split it in two")
            if current is None:
                raise ValueError(f"cell {index} is tagged {roles[0]!r} but no exercise comes before it")
            found[current][f"{roles[0]}_cells"].append(index)
    result = []
    for entry in found.values():
        if entry["check_cells"] and not entry["solution_cells"]:
            raise ValueError(f"exercise {entry['label']!r} has checks but no cell tagged {SOLUTION_TAG!r}")
        result.append(Exercise(**{**entry, "solution_cells": tuple(entry["solution_cells"]),
                                  "check_cells": tuple(entry["check_cells"])}))
    return result


def chapter_times(cpu: Mapping[str, Any] | None = None, gpu_sweeps: Iterable[Mapping[str, Any]] = (),
                  gpu_estimates: Mapping[str, Any] | None = None):
    """Seconds to execute each chapter from an empty checkpoint cache, one column per source (the page "For
    instructors" renders it): ``chapter_seconds/<chapter>`` of a benchmark file (``benchmarks/results.json``, the
    CPU in the default profile), the median over seeds of the GPU runs of seeds-sweep files (``device-cuda.json``,
    one column per profile; runs that stopped early are left out) and ``paper_estimate_seconds/<chapter>`` of a
    GPU benchmark file (``results-cuda.json``: the paper profile estimated from measured step costs). Missing
    sources give no column; a chapter without a value in a column has NaN there."""
    import statistics

    import pandas as pd

    columns: dict[str, dict[str, float]] = {}
    for key, value in (cpu or {}).items():
        if key.startswith("chapter_seconds/"):
            columns.setdefault("CPU, cpu profile", {})[key.split("/", 1)[1]] = float(value)
    timed: dict[tuple[str, str], list[float]] = {}
    for run in sweep_runs(gpu_sweeps):
        stopped = any(c.startswith("the chapter stopped") for c in run.get("failed_claims", []))
        if str(run["device"]).startswith("cuda") and not stopped and run.get("seconds") is not None:
            timed.setdefault((run["profile"], run["chapter"]), []).append(float(run["seconds"]))
    for (profile, chapter), seconds in sorted(timed.items()):
        columns.setdefault(f"GPU, {profile} profile", {})[chapter] = statistics.median(seconds)
    for key, value in (gpu_estimates or {}).items():
        if key.startswith("paper_estimate_seconds/"):
            columns.setdefault("GPU, paper profile (estimate)", {})[key.split("/", 1)[1]] = float(value)
    table = pd.DataFrame(columns)
    table.index.name = "chapter"
    return table.sort_index()
