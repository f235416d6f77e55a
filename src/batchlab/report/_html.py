"""The report page: one self-contained HTML file (plotly.js inlined once, no network)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from batchlab.report.recommendation import RecommendationView

CSS = """
:root { --ink: #1a1a1a; --muted: #5f6368; --line: #e3e3e3; --warn: #b26a00; --bg: #fafafa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
  sans-serif; color: var(--ink); background: var(--bg); }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 6px; }
.sub { color: var(--muted); margin: 0 0 18px; }
table.meta { border-collapse: collapse; margin: 0 0 22px; font-size: 14px; background: #fff; }
table.meta th, table.meta td { border: 1px solid var(--line); padding: 5px 10px; text-align: left;
  vertical-align: top; }
table.meta th { background: #f1f3f4; font-weight: 600; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 22px;
  margin: 0 0 22px; }
.findings ul { margin: 6px 0 0; padding-left: 20px; }
.findings li { margin: 4px 0; }
.findings li.warning { color: var(--warn); }
.findings li.warning::marker { content: "⚠ "; }
.findings h3 { font-size: 15px; margin: 14px 0 0; }
nav { font-size: 14px; margin: 0 0 22px; color: var(--muted); }
nav a { color: #1a5fb4; margin-right: 14px; text-decoration: none; }
.caption { color: var(--muted); font-size: 14px; margin: 0 0 8px; }
.chart { width: 100%; }
.png { font-size: 13px; margin-top: 4px; }
.png a { color: #1a5fb4; }
.empty { font-size: 17px; color: var(--warn); }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
.recommendation { border-left: 4px solid #1a5fb4; }
.recommendation dl { margin: 6px 0 0; }
.recommendation dt { font-weight: 600; margin-top: 10px; }
.recommendation dd { margin: 2px 0 0 0; }
.recommendation dd + dd { color: var(--muted); }
.recommendation table.meta { margin: 6px 0 0; }
"""


@dataclass(frozen=True, kw_only=True)
class Section:
    name: str
    title: str
    description: str
    chart_html: str  # plotly's own div + script (trusted: it JSON-escapes every string)
    png: str | None


@dataclass(frozen=True, kw_only=True)
class FindingItem:
    level: str
    text: str


def e(s: object) -> str:
    return escape(str(s), quote=True)


def recommendation_card(view: RecommendationView) -> str:
    """The recommendation as a card: a definition list per topic, then the Pareto table."""
    h2 = f"<h2>{e(view.heading)}</h2>"
    if view.unavailable:
        return f'<section class="card recommendation">{h2}<p>{e(view.unavailable)}</p></section>'
    dl = "".join(
        f"<dt>{e(title)}</dt>" + "".join(f"<dd>{e(s)}</dd>" for s in sentences)
        for title, sentences in view.items
    )
    table = ""
    if view.table_rows:
        head = "".join(f"<th>{e(h)}</th>" for h in view.table_headers)
        rows = "".join(
            "<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in view.table_rows
        )
        table = f'<table class="meta pareto"><tr>{head}</tr>{rows}</table>'
    return f'<section class="card recommendation">{h2}<dl>{dl}</dl>{table}</section>'


def page(
    *,
    title: str,
    subtitle: str,
    meta_headers: Sequence[str],
    meta_rows: Sequence[Sequence[str]],
    findings: Sequence[tuple[str, Sequence[FindingItem]]],
    sections: Sequence[Section],
    empty_message: str,
    footer: str,
    recommendations: Sequence[RecommendationView] = (),
) -> str:
    """Assemble the page; every string that came from data is escaped here.

    The recommendation cards open the page, right under the title."""
    head = "".join(f"<th>{e(h)}</th>" for h in meta_headers)
    rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in meta_rows)
    blocks = []
    for heading, items in findings:
        lis = "".join(f'<li class="{e(i.level)}">{e(i.text)}</li>' for i in items)
        h3 = f"<h3>{e(heading)}</h3>" if heading else ""
        blocks.append(f"{h3}<ul>{lis}</ul>")
    nav = "".join(f'<a href="#{e(s.name)}">{e(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        png = f'<div class="png"><a href="{e(s.png)}">PNG</a></div>' if s.png else ""
        body.append(
            f'<section class="card" id="{e(s.name)}"><h2>{e(s.title)}</h2>'
            f'<p class="caption">{e(s.description)}</p>'
            f'<div class="chart">{s.chart_html}</div>{png}</section>'
        )
    if not sections:
        body.append(f'<section class="card"><p class="empty">{e(empty_message)}</p></section>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{e(title)}</h1>
<p class="sub">{e(subtitle)}</p>
{"".join(recommendation_card(r) for r in recommendations)}
<table class="meta"><tr>{head}</tr>{rows}</table>
<section class="card findings"><h2>What this study shows</h2>{"".join(blocks)}</section>
<nav>{nav}</nav>
{"".join(body)}
<footer>{e(footer)}</footer>
</main>
</body>
</html>
"""
