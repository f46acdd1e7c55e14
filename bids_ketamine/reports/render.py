"""Turn output files into self-contained HTML pieces: figures as data URIs, tables with their column descriptions.

Why data URIs for SVG too (rather than pasting ``<svg>`` markup into the page): matplotlib gives every figure
clip-path and glyph ids, and pasted figures share one id space, so one figure can silently draw with another's
clip path. An ``<img>`` with a data URI keeps each figure isolated, needs no network and no script, and lets a browser
test check every figure decoded (``naturalWidth > 0``).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bids_ketamine.reports.collect import read_sidecar
from bids_ketamine.reports.numbers import format_cell, format_number

#: A participant report must stay below 10 MB; figures beyond this budget are linked, not embedded (and said so).
DEFAULT_BUDGET_BYTES = 9_500_000
#: Long tables show their first rows only (the analyses sort them by importance), with a link to the whole file.
MAX_TABLE_ROWS = 12
#: Wider tables are matrices (a connectivity matrix has one column per parcel) and are linked, not drawn; long-format
#: tables such as the fit table (26 columns with the dynamic fit's) stay below this.
MAX_TABLE_COLUMNS = 40
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class SizeBudget:
    """Bytes still available for embedded content in one report."""

    remaining: int = DEFAULT_BUDGET_BYTES

    def take(self, n: int) -> bool:
        if n > self.remaining:
            return False
        self.remaining -= n
        return True


@dataclass
class Block:
    """One thing shown in a section: a figure, a table, an image listing or a note."""

    kind: str  # figure | table | images | note | pre | list
    title: str = ""
    relpath: str = ""
    body: Any = None
    details: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def failure_text(prefix: str, status: dict[str, Any], *, run: bool = False) -> Markup:
    """A failure as the reports show it: ``prefix``, the program's message verbatim in ``<code>``, the exit code.

    Why code: the message is the error line the run printed (file names, byte counts, library wording), quoted as
    written; it is not a result, so it is neither rounded nor read as prose.
    """
    tail = f" (exit code {status.get('exit_code')}" + (f", {status.get('run')})" if run else ")")
    return Markup("{}<code class=\"error-message\">{}</code>{}").format(prefix, status.get("message", "no message"),
                                                                      tail)


def figure_problem(path: Path, data: bytes) -> str | None:
    """Why a figure file cannot be shown (None when it looks like a complete PNG or SVG)."""
    if not data:
        return "empty file"
    if path.suffix == ".png":
        return None if data.startswith(_PNG_MAGIC) and data.endswith(b"IEND\xaeB`\x82") else \
            "not a complete PNG file"
    head = data[:512].lstrip()
    if not (head.startswith(b"<?xml") or head.startswith(b"<svg") or head.startswith(b"<!DOCTYPE svg")):
        return "not an SVG file"
    if b"</svg>" not in data[-4096:]:
        return "truncated SVG (no closing </svg>)"
    return None


def figure_block(path: Path, relpath: str, caption: str, budget: SizeBudget) -> tuple[Block, str | None]:
    """A figure embedded as a data URI; a problem message instead when it is unreadable or over budget."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Block("note", caption, relpath, f"figure {relpath} could not be read: {exc.strerror}"), \
            f"{relpath}: could not be read ({exc.strerror})"
    problem = figure_problem(path, data)
    if problem:
        return Block("note", caption, relpath, f"figure {relpath} not shown: {problem}"), f"{relpath}: {problem}"
    mime = "image/png" if path.suffix == ".png" else "image/svg+xml"
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    if not budget.take(len(uri)):
        return Block("note", caption, relpath,
                     Markup(f'figure not embedded (the report would exceed its size limit): '
                            f'<a href="{html.escape(relpath)}">{html.escape(relpath)}</a>')), None
    return Block("figure", caption, relpath, uri), None


def _mm3_as_cm3(value: str) -> str:
    """A cell recorded in mm^3 as cm3 (non-numbers such as ``n/a`` unchanged)."""
    try:
        return repr(float(value) / 1000.0)
    except ValueError:
        return value


def _cell(value: str) -> str:
    """A table cell as shown: numbers rounded to 3 significant digits (the TSV keeps full precision)."""
    return html.escape(format_cell(value))


#: Units a table records volumes in; the reports show them in cm3 (the TSV keeps mm^3).
_MM3 = ("mm^3", "mm3")


def _in_cm3(spec: Any) -> bool:
    return isinstance(spec, dict) and str(spec.get("Units", "")).replace(" ", "") in _MM3


def _header(column: str, spec: Any) -> str:
    """A column name with its unit from the sidecar (``gm_fraction_tiv``, ``gm_volume [cm3]``, ``crlb [%]``).

    Volumes recorded in mm^3 are shown in cm3 (1962824 mm^3 reads as ``1960``, not ``1.96e6``); the ``_mm3``
    suffix of the TSV's column name is dropped so the header does not name two units.
    """
    if _in_cm3(spec):
        return f"{column.removesuffix('_mm3')} [cm3]"
    units = spec.get("Units") if isinstance(spec, dict) else None
    plain = str(units).replace("^", "") if units else ""
    return f"{column} [{units}]" if units and str(units) != "1" and plain not in column else column


def _column_title(spec: Any) -> str:
    if isinstance(spec, dict):
        parts = [str(spec.get("Description", ""))]
        if spec.get("Units"):
            parts.append(f"[{spec['Units']} in the TSV]" if _in_cm3(spec) else f"[{spec['Units']}]")
        if spec.get("Levels"):
            parts.append("levels: " + ", ".join(f"{k}={v}" for k, v in dict(spec["Levels"]).items()))
        return " ".join(p for p in parts if p)
    return str(spec or "")


def table_block(path: Path, relpath: str, caption: str, *, max_rows: int = MAX_TABLE_ROWS,
                budget: SizeBudget | None = None) -> tuple[Block, list[str]]:
    """A TSV as an HTML table (values as written, column descriptions as tooltips) with its provenance."""
    problems: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return Block("note", caption, relpath, f"table {relpath} could not be read: {exc}"), [f"{relpath}: {exc}"]
    sidecar, problem = read_sidecar(path)
    if problem:
        problems.append(problem)
    if not lines:
        return Block("note", caption, relpath, f"table {relpath} is empty"), [f"{relpath}: empty table"]
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line]
    n_rows, n_cols = len(rows), len(header)
    if n_cols > MAX_TABLE_COLUMNS:
        body = Markup(f"<p class='muted'>{n_rows} rows x {n_cols} columns (a matrix): not shown here; see "
                      f"<code>{html.escape(relpath)}</code>.</p>")
    else:
        shown = rows[:max_rows]
        head = "".join(f'<th title="{html.escape(_column_title(sidecar.get(c)), quote=True)}">'
                       f'{html.escape(_header(c, sidecar.get(c)))}</th>' for c in header)
        cm3 = [_in_cm3(sidecar.get(c)) for c in header]
        body_rows = "".join("<tr>" + "".join(f"<td>{_cell(_mm3_as_cm3(v) if to_cm3 else v)}</td>"
                                             for v, to_cm3 in zip(row, cm3)) + "</tr>" for row in shown)
        more = (f"<p class='muted'>showing the first {len(shown)} of {n_rows} rows (values rounded to 3 significant "
                f"digits); the full table is <a href=\"{html.escape(relpath, quote=True)}\"><code>"
                f"{html.escape(relpath)}</code></a>.</p>") if n_rows > len(shown) else ""
        body = Markup(f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead><tbody>{body_rows}"
                      f"</tbody></table></div>{more}")
    if budget is not None and not budget.take(len(body)):
        body = Markup(f"<p class='muted'>table not embedded (size limit): <code>{html.escape(relpath)}</code></p>")
    return Block("table", caption, relpath, body, provenance(sidecar)), problems


def provenance(sidecar: dict[str, Any]) -> dict[str, Any]:
    """What made an output: description, sources (BIDS URIs), version and parameters, from its sidecar."""
    generated = sidecar.get("GeneratedBy") or []
    versions = ", ".join(f"{g.get('Name', '?')} {g.get('Version', '?')}" for g in generated if isinstance(g, dict))
    params = sidecar.get("Parameters")
    return {
        "description": sidecar.get("Description", ""),
        "sources": [str(s) for s in sidecar.get("Sources") or []],
        "generated_by": versions,
        "parameters": json.dumps(params, indent=1, default=str) if params else "",
    }


def summary_block(path: Path, relpath: str, budget: SizeBudget, problems: list[str],
                  limit: int = 20_000) -> Block:
    """A standalone JSON summary an analysis wrote (e.g. counts of significant components), pretty-printed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{relpath}: unreadable JSON ({exc})")
        return Block("note", "Summary", relpath, f"summary {relpath} could not be read")
    text = _rounded_json(data)
    if len(text) > limit:
        text = text[:limit] + f"\n... (truncated; the full summary is {relpath})"
    if not budget.take(len(text)):
        return Block("note", "Summary", relpath, f"summary not embedded (size limit): {relpath}")
    return Block("pre", f"Summary ({relpath})", relpath, text, extra={"key": "summary"})


_NUMBER_MARK = "\u00a7num\u00a7"


def _rounded(value: Any) -> Any:
    """A JSON value with every float marked for display at 3 significant digits (see :func:`_rounded_json`)."""
    if isinstance(value, float):
        return _NUMBER_MARK + format_number(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _rounded_json(data: Any) -> str:
    """``data`` as indented JSON text with floats written as :func:`format_number` writes them (display only)."""
    import re

    text = json.dumps(_rounded(data), indent=1, ensure_ascii=False, default=str)
    return re.sub(f'"{_NUMBER_MARK}([^"]*)"', lambda m: m.group(1) if m.group(1) not in ("n/a", "inf", "-inf")
                  else f'"{m.group(1)}"', text)


def glass_brain_uri(path: Path, title: str) -> str:
    """A written NIfTI map drawn on a glass brain (nilearn, offline), as a PNG data URI; display only."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import nibabel as nib
    import numpy as np
    from nilearn import plotting

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:  # one map per volume: draw the first, as the caption says
        img = nib.Nifti1Image(data[..., 0], img.affine)
        data = data[..., 0]
    finite = data[np.isfinite(data)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 0.0
    display = plotting.plot_glass_brain(img, plot_abs=False, colorbar=vmax > 0, cmap="RdBu_r", title=title,
                                        symmetric_cbar=True, vmax=vmax if vmax > 0 else None)
    buffer = io.BytesIO()
    display.frame_axes.figure.savefig(buffer, format="png", dpi=72)
    display.close()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def glass_brain_block(images: list[tuple[Path, str]], caption: str, key: str, budget: SizeBudget,
                      problems: list[str]) -> Block | None:
    """Glass-brain views of written maps, when the analysis wrote no figure for this item."""
    figures = []
    for path, rel in images:
        try:
            uri = glass_brain_uri(path, path.name.split(".nii")[0])
        except Exception as exc:  # noqa: BLE001 - an unreadable map must not stop the report
            problems.append(f"{rel}: could not be drawn ({type(exc).__name__}: {exc})")
            continue
        if budget.take(len(uri)):
            figures.append((uri, f"{rel} (drawn by the report)"))
    if not figures:
        return None
    return Block("gallery", caption, body=figures, extra={"key": key})


def image_list_block(paths: list[tuple[Path, str]], title: str) -> Block:
    """NIfTI outputs with their provenance (the report lists images; figures show them)."""
    entries = []
    for path, rel in paths:
        sidecar, _ = read_sidecar(path)
        entries.append({"relpath": rel, "provenance": provenance(sidecar)})
    return Block("images", title, body=entries)


def template_text(name: str) -> str:
    """A report template shipped as package data (``bids_ketamine/reports/templates``)."""
    try:
        return resources.files("bids_ketamine.reports").joinpath("templates", name).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        from bids_ketamine.errors import NotBuiltError

        raise NotBuiltError(f"the report template {name} is missing from this installation",
                            fix="install a bids_ketamine build that ships reports/templates as package data") from exc


@lru_cache(maxsize=1)
def _template():
    """The compiled page template and stylesheet (compiled once per process: compiling costs more than rendering)."""
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template_text("report.html.j2")), Markup(template_text("report.css"))


def render_page(**context: Any) -> str:
    """Render the report template with the inline stylesheet (no external asset of any kind)."""
    template, css = _template()
    return template.render(css=css, **context)
