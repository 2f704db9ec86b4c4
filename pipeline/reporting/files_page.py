"""The report's section on a run's files: the records of each input (read, predicted,
failed: run.json's `counts_by_input`) and links to what the run wrote beside the report.

The links are relative ("./prediction.results-00000-of-00001"), so they work wherever the
report sits beside its outputs: a local folder, a bucket's browser, a download of the
folder; their text is each file's full path (local or gs://), the one a person copies.
`pipeline.reporting.page` places the section and its styles (`FILES_CSS`).
"""

from __future__ import annotations

import urllib.parse

from pipeline.reporting.markup import esc, path_html
from pipeline.reporting.terminal import held_back
from pipeline.run_contract import (
    ERRORS_PREFIX,
    PREDICTIONS,
    PREDICTIONS_PREFIX,
    RUN_MANIFEST,
    STAGING_DIR,
    errors_stats_file,
)

MAX_INPUTS_SHOWN = 50  # rows of the inputs' table; run.json's counts_by_input has them all
MAX_LINKS_SHOWN = 20  # links per kind of output file (shards); the rest are counted


def files_section(manifest: dict, published: list[str] | None) -> str:
    """The inputs with their counts, then the outputs (`published`: the names of the files
    the run published; None when not known)."""
    return (
        '<section id="files"><h2>Inputs and outputs</h2>'
        f"{_inputs_table(manifest)}<h3>Outputs</h3>{_outputs_list(manifest, published)}</section>"
    )


def _inputs_table(manifest: dict) -> str:
    rows = [r for r in manifest.get("counts_by_input") or [] if isinstance(r, dict)]
    if not rows:
        return "<p>No input files (the records came from a query or a table: see the details below).</p>"
    with_read = any(r.get("read") is not None for r in rows)
    shown = rows[:MAX_INPUTS_SHOWN]
    body = "".join(
        f'<tr data-input="{esc(r.get("input"))}" data-errors="{esc(r.get("errors"))}"'
        + (f' data-read="{esc(r.get("read"))}"' if with_read else "")
        + f"><td>{path_html(r.get('input'))}</td>"
        + (
            f"<td class='num'>{_count(r.get('read'))}</td><td class='num'>{_count(r.get(PREDICTIONS))}</td>"
            if with_read
            else ""
        )  # fmt: skip
        + f"<td class='num'>{_count(r.get('errors'))}</td></tr>"
        for r in shown
    )
    head = "<th>input</th>" + ("<th>read</th><th>predicted</th>" if with_read else "") + "<th>errors</th>"
    more = (
        f"<p>… and {len(rows) - len(shown):,} more inputs (all in run.json's <code>counts_by_input</code>).</p>"
        if len(rows) > len(shown)
        else ""
    )
    note = (
        ""
        if with_read
        else "<p class='note'>Records read and predicted per input are not recorded by this version of the "
        "pipeline, only their totals (above); the errors per input come from the error records.</p>"
    )
    return f'<table class="inputs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}{note}'


def _outputs_list(manifest: dict, published: list[str] | None) -> str:
    output_dir = str(manifest.get("output_dir") or "")
    tables = manifest.get("output_tables")
    items = []
    if isinstance(tables, dict):
        items += [(role, f"<code>{path_html(tables.get(role))}</code> (BigQuery)") for role in tables]
    elif held_back(manifest):
        held = _link(output_dir, STAGING_DIR + "/")
        items.append(("held back", f"{held}: the predictions and error records, not published"))
    elif published is not None:
        for label, prefix in (("predictions", PREDICTIONS_PREFIX), ("error records", ERRORS_PREFIX)):
            names = sorted(n for n in published if n.startswith(prefix))
            links = "".join(f"<li>{_link(output_dir, name)}</li>" for name in names[:MAX_LINKS_SHOWN])
            if len(names) > MAX_LINKS_SHOWN:
                links += f"<li>… and {len(names) - MAX_LINKS_SHOWN:,} more {esc(prefix)}-* files</li>"
            items.append((label, f'<ul class="links">{links}</ul>' if names else "none"))
    for label, name in (("errors by kind", errors_stats_file(manifest)), ("run manifest", RUN_MANIFEST)):
        items.append((label, _link(output_dir, name)))
    rows = "".join(f"<tr><th>{esc(label)}</th><td>{value}</td></tr>" for label, value in items)
    return f'<table class="kv outputs">{rows}</table>'


def _link(output_dir: str, name: str) -> str:
    """A link to `name` beside the report, relative, showing its full path."""
    path = f"{output_dir.rstrip('/')}/{name}" if output_dir else name
    return f'<a href="./{urllib.parse.quote(name)}" data-file="{esc(name)}">{path_html(path)}</a>'


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


FILES_CSS = """.links{padding-left:18px;margin:0}.links li{margin:2px 0}.note{color:#666;font-size:12px}
"""
