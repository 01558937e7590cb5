"""Render the evaluation results as Markdown and as a self-contained HTML page (no templates)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lingshu.evaluation.metrics import Metric

HOW_TO_READ = [
    "Every row is one set of cells scored against the held-out real cells, on log1p of counts "
    "scaled to 10,000 per cell over the shared genes. Arrows give the better direction: "
    "↑ higher is better, ↓ lower is better, ≈1 closest to 1 is best.",
    "**real_ceiling** is real data scored the same way as a generator: {ceiling}. It shows "
    "what a perfect generator would reach with this many cells; judge models by their gap to "
    "it, not by the raw numbers.",
    "*mmd* is the paper's biased MMD², which at a few hundred cells per side is dominated by "
    "its diagonal (i = j) kernel terms, so even two real samples score well above 0; "
    "*mmd_unbiased* removes those terms and scatters around 0 for a sample of the real "
    "distribution, and *mmd_pvalue* is its permutation p-value: whether the difference from "
    "the real cells is distinguishable from sampling noise (≤ 0.01: clearly distinguishable).",
    "Baselines: *independent_genes* resamples every gene independently (right per-gene "
    "marginals, no gene-gene structure: per-gene metrics look good, MMD and iLISI should not); "
    "*independent_genes_by_group* does the same within each cell type and library-size bin "
    "(right types and depths, no other gene-gene structure); "
    "*celltype_poisson* draws Poisson counts with each cell type's mean per gene (right cell "
    "types, no within-type variation at all); "
    "*celltype_negative_binomial* draws overdispersed counts per cell type and gene (right "
    "cell types, no within-type structure); *copy_training* returns training cells: it looks "
    "perfect on every distribution metric and must be caught by the memorisation flag; "
    "*scvi* samples new cells from a trained scVI prior.",
    "*memorisation_ratio* compares how far generated cells lie from their nearest training cell "
    "with how far new real cells do (about 1 for an honest generator); "
    "*memorisation_flag* is set below {threshold}.",
    "*celltype_tvd* and the proportion table use a classifier trained on the real cells to "
    "call the type of each generated cell; *celltype_accuracy* checks conditionally generated "
    "cells against the type they were asked for. n/a means a metric was skipped (see notes).",
]


@dataclass(frozen=True)
class ReportContent:
    """Everything a report shows."""

    metrics: pd.DataFrame
    registry: Mapping[str, Metric]
    meta: dict
    proportions: pd.DataFrame | None = None
    markers: pd.DataFrame | None = None
    figures: dict[str, str] = field(default_factory=dict)


def format_value(value: object) -> str:
    """Numbers to 4 significant digits, booleans as yes/no, missing values as n/a."""
    if value is None or value is pd.NA:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "n/a" if np.isnan(value) else f"{float(value):.4g}"
    return str(value)


def _metric_display(content: ReportContent) -> pd.DataFrame:
    """The metrics table with arrows in the headers and the ceiling row labelled."""
    table = content.metrics.copy()
    renamed = {
        name: f"{name} {metric.direction}"
        for name, metric in content.registry.items()
        if name in table.columns
    }
    table = table.rename(columns=renamed)
    table.index = [
        f"{name} (ceiling)" if kind == "ceiling" else name
        for name, kind in zip(table.index, content.metrics["kind"], strict=True)
    ]
    table.index.name = "method"
    return table


def _marker_display(markers: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """Wide marker table: one row per (type, gene), real then each method's frac / mean."""
    markers = markers[markers["rank"] <= top]
    first = markers["method"].iloc[0]
    base = markers[markers["method"] == first].set_index(["cell_type", "gene"])
    wide = pd.DataFrame({"real frac": base["real_frac_expressing"], "real mean": base["real_mean"]})
    for method, rows in markers.groupby("method", sort=False):
        rows = rows.set_index(["cell_type", "gene"])
        wide[f"{method} frac"] = rows["generated_frac_expressing"]
        wide[f"{method} mean"] = rows["generated_mean"]
    return wide.reset_index()


def _how_to_read(content: ReportContent) -> list[str]:
    return [
        line.format(
            ceiling=content.meta["ceiling"]["description"],
            threshold=content.meta["memorisation_threshold"],
        )
        for line in HOW_TO_READ
    ]


def _summary_lines(content: ReportContent) -> list[str]:
    meta = content.meta
    return [
        f"Created {meta['created']}; seed {meta['seed']}; {meta['n_real_cells']} held-out real "
        f"cells; {meta['n_genes']} genes ({meta['preprocessing']}); at most "
        f"{meta['max_cells_per_side']} cells of each set scored (random subsample); "
        f"wall time {meta['wall_time_s']} s.",
        f"Ceiling ({meta['ceiling']['mode']}): {meta['ceiling']['description']}.",
        "Genes per input before intersecting: "
        + ", ".join(f"{k} {v}" for k, v in meta.get("genes_per_input", {}).items())
        + ".",
    ]


def _skipped_lines(content: ReportContent) -> list[str]:
    lines = []
    for method, notes in content.meta["skipped"].items():
        for metric, note in notes.items():
            lines.append(f"{method} / {metric}: {note}")
    return lines


# --- Markdown -----------------------------------------------------------------------------


def markdown_table(table: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    frame = table.reset_index() if index else table
    header = [str(c) for c in frame.columns]

    def cell(value: object) -> str:
        return format_value(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def to_markdown(content: ReportContent) -> str:
    """The report as Markdown."""
    parts = ["# Lingshu-Cell generation evaluation", "", *_summary_lines(content), ""]
    parts += ["## How to read this report", ""]
    parts += [f"- {line}" for line in _how_to_read(content)] + [""]
    parts += ["## Metrics", "", markdown_table(_metric_display(content)), ""]
    skipped = _skipped_lines(content)
    if skipped:
        parts += ["Skipped metrics:", ""] + [f"- {line}" for line in skipped] + [""]
    parts += ["Metric definitions:", ""]
    parts += [f"- **{m.name}** {m.direction}: {m.description}" for m in content.registry.values()]
    parts.append("")
    if content.proportions is not None:
        parts += [
            "## Cell-type proportions",
            "",
            "Fraction of cells per type: real = annotation; others = classifier trained on the real cells.",
            "",
            markdown_table(content.proportions),
            "",
        ]
    if content.markers is not None:
        parts += [
            "## Marker genes",
            "",
            "Top markers per type (Wilcoxon on real cells): fraction of cells expressing and "
            "mean log1p(CP10k), real vs each method (generated cells grouped by their "
            "requested type, else by the classifier's call). Full table: `markers.csv`.",
            "",
            markdown_table(_marker_display(content.markers), index=False),
            "",
        ]
    if content.figures:
        parts += ["## Figures", ""]
        parts += [f"![{title}]({path})\n" for title, path in content.figures.items()]
    parts += [
        "Files: `metrics.csv` (one row per method), `metrics_meta.json` (directions, "
        "notes), `proportions.csv`, `markers.csv`.",
        "",
    ]
    return "\n".join(parts)


# --- HTML ---------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.ceiling { background: #eaf6ea; font-style: italic; }
tr.baseline { background: #fff6ea; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def html_table(table: pd.DataFrame, row_classes: list[str] | None = None, index: bool = True) -> str:
    """An escaped HTML table; ``row_classes`` tags rows (e.g. the ceiling) for styling."""
    frame = table.reset_index() if index else table
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(False)):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        cells = "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row)
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _inline(text: str) -> str:
    """Escape, then turn the few Markdown marks used above into HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(content: ReportContent) -> str:
    """The report as one HTML page (figures referenced by relative path)."""
    body = ["<h1>Lingshu-Cell generation evaluation</h1>"]
    body += [f"<p>{_inline(line)}</p>" for line in _summary_lines(content)]
    body.append("<h2>How to read this report</h2><ul>")
    body += [f"<li>{_inline(line)}</li>" for line in _how_to_read(content)]
    body.append("</ul><h2>Metrics</h2>")
    body.append(html_table(_metric_display(content), list(content.metrics["kind"])))
    skipped = _skipped_lines(content)
    if skipped:
        body.append("<p>Skipped metrics:</p><ul>")
        body += [f"<li>{_inline(line)}</li>" for line in skipped]
        body.append("</ul>")
    body.append("<details><summary>Metric definitions</summary><ul>")
    body += [
        f"<li><b>{html.escape(m.name)}</b> {html.escape(m.direction)}: {html.escape(m.description)}</li>"
        for m in content.registry.values()
    ]
    body.append("</ul></details>")
    if content.proportions is not None:
        body.append("<h2>Cell-type proportions</h2>")
        body.append("<p>Real = annotation; others = classifier trained on the real cells.</p>")
        body.append(html_table(content.proportions))
    if content.markers is not None:
        body.append("<h2>Marker genes</h2>")
        body.append(
            "<p>Fraction expressing and mean log1p(CP10k) of the top markers per type. "
            "Full table: <code>markers.csv</code>.</p>"
        )
        body.append(html_table(_marker_display(content.markers), index=False))
    if content.figures:
        body.append("<h2>Figures</h2>")
        for title, path in content.figures.items():
            body.append(f"<h3>{html.escape(title)}</h3>")
            body.append(f'<img src="{html.escape(path)}" alt="{html.escape(title)}">')
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>Lingshu-Cell generation evaluation</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
