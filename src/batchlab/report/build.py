"""Build a report: figures (interactive HTML + PNG), findings and their numbers as JSON.

summary.json says per study which split chose its cells (`selection`: validation, or test with
a note when the study kept no validation split); its cells carry both scores.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.io as pio

from batchlab._version import __version__
from batchlab.analysis.selection import Selection
from batchlab.fmt import lr_texts
from batchlab.report._html import FindingItem, Section, page
from batchlab.report._types import ReportError, StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures import DEFAULT_FIGURES
from batchlab.report.findings import (
    Finding,
    budget_text,
    comparison_findings,
    study_findings,
)
from batchlab.report.palette import palette_for
from batchlab.report.recommendation import recommendation_view, study_recommendation
from batchlab.report.stats import BAND, Cell, Stat, cells
from batchlab.tasks.base import TaskInfo
from batchlab.trial import TrialState

PNG_DPI = 110
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def build_report(
    study: StudyLike,
    out_dir: Path,
    *,
    extra_figures: Sequence[Figure[Any]] = (),
    png: bool = True,
) -> Path:
    """Write `index.html`, `figures/*.png` and `summary.json` for one study; return the page.

    Figures are `DEFAULT_FIGURES` followed by `extra_figures`. An empty study or one where no
    trial completed still gets a page that says so.
    """
    return _build([study], Path(out_dir), extra_figures=extra_figures, png=png)


def build_comparison(
    studies: Sequence[StudyLike],
    out_dir: Path,
    *,
    extra_figures: Sequence[Figure[Any]] = (),
    png: bool = True,
) -> Path:
    """Like `build_report`, with several studies overlaid in the same figures."""
    if not studies:
        raise ReportError("build_comparison: give at least one study to compare")
    return _build(list(studies), Path(out_dir), extra_figures=extra_figures, png=png)


def _jsonable(x: Any) -> Any:
    """NaN and infinities become null: summary.json stays strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _stat(s: Stat) -> dict[str, Any]:
    return {"mean": s.mean, "std": s.std, "n": s.n}


def _cell(c: Cell) -> dict[str, Any]:
    return {
        "lr_base": c.key.lr_base,
        "lr": c.lr,
        "batch_size": c.batch_size,
        "trials": c.n_trials,
        "complete": c.n_complete,
        "diverged": c.n_diverged,
        "failed": c.n_failed,
        "unfinished": c.n_unfinished,
        "train_is_full_pass": c.train_is_full_pass,
        **{
            name: _stat(getattr(c, name))
            for name in (
                "val_acc",
                "test_acc",
                "test_loss",
                "train_acc",
                "train_loss",
                "acc_gap",
                "loss_gap",
                "train_time_s",
                "steps",
                "samples",
                "epochs",
                "samples_per_s",
                "peak_mem_bytes",
            )
        },
    }


def _states(study: StudyLike) -> dict[str, int]:
    return {s.value: sum(t.state is s for t in study.trials) for s in TrialState}


def _selection(study: StudyLike) -> dict[str, Any]:
    """Which split chose the study's cells, with the one-line note when it is test."""
    sel = Selection.of(study.trials)
    return {**sel.to_dict(), "note": sel.note(TaskInfo.of(study))}


def _study_meta(study: StudyLike) -> dict[str, Any]:
    spec = study.spec
    return {
        "name": study.name,
        "dataset": spec.dataset,
        "model": spec.model,
        "optimizer": spec.optimizer,
        "budget": {"kind": spec.budget.kind, "value": spec.budget.value},
        "lr_scaling": spec.lr_scaling,
        "reference_batch_size": spec.reference_batch_size,
        "trials": len(study.trials),
        "states": _states(study),
        "batch_sizes": sorted({t.batch_size for t in study.trials}),
        "lr_bases": sorted({t.lr_base for t in study.trials}),
        "seeds": sorted({t.seed for t in study.trials}),
        "task": TaskInfo.of(study).as_dict(),  # what the *_loss and *_acc numbers are
        "selection": _selection(study),
    }


def _meta_row(m: dict[str, Any]) -> list[str]:
    states = ", ".join(f"{n} {s.lower()}" for s, n in m["states"].items() if n)
    budget = m["budget"]
    scaling = m["lr_scaling"]
    if scaling != "none":
        scaling += f" (reference b={m['reference_batch_size']})"
    return [
        m["name"],
        m["dataset"],
        m["model"],
        m["optimizer"],
        budget_text(budget["kind"], budget["value"]),
        scaling,
        ", ".join(str(b) for b in m["batch_sizes"]) or "none",
        ", ".join(lr_texts(m["lr_bases"])) or "none",
        str(len(m["seeds"])),
        states or "no trials",
    ]


_META_HEADERS = (
    "study",
    "dataset",
    "model",
    "optimizer",
    "budget per trial",
    "lr scaling",
    "batch sizes",
    "lr_base",
    "seeds",
    "trials",
)


def _prepare_dir(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"report folder {out_dir} is a file: give a folder path")
    try:
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot create report folder {out_dir}: {err.strerror}") from err
    return out_dir / "figures"


def _check(studies: Sequence[StudyLike], figures: Sequence[Figure[Any]]) -> None:
    names = [s.name for s in studies]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReportError(f"study {dupes[0]!r} given twice: compare distinct studies")
    tasks = {s.name: TaskInfo.of(s).task for s in studies}
    if len(set(tasks.values())) > 1:
        which = ", ".join(f"{n!r} is {t}" for n, t in tasks.items())
        raise ReportError(
            f"cannot overlay studies of different tasks ({which}): their scores differ;"
            " compare studies of one task"
        )
    fig_names = [f.name for f in figures]
    clash = sorted({n for n in fig_names if fig_names.count(n) > 1})
    if clash:
        raise ReportError(f"two figures are named {clash[0]!r}: give extra figures unique names")


def _build(
    studies: list[StudyLike],
    out_dir: Path,
    *,
    extra_figures: Sequence[Figure[Any]],
    png: bool,
) -> Path:
    figures = [*DEFAULT_FIGURES, *extra_figures]
    _check(studies, figures)
    fig_dir = _prepare_dir(out_dir)
    palette = palette_for(studies)

    per_study = {s.name: study_findings(s) for s in studies}
    recs = {s.name: study_recommendation(s) for s in studies}
    compared = comparison_findings(studies) if len(studies) > 1 else []

    sections: list[Section] = []
    figure_index: list[dict[str, Any]] = []
    task = task_of(studies)
    for fig in figures:
        data = fig.extract(studies)
        png_path = fig_dir / f"{fig.name}.png"
        fig_title, fig_description = fig.text_for(task)
        if data is None:
            png_path.unlink(missing_ok=True)  # a stale PNG from an earlier build would mislead
            figure_index.append({"name": fig.name, "title": fig_title, "shown": False})
            continue
        chart = pio.to_html(
            fig.render_plotly(data, palette),
            full_html=False,
            include_plotlyjs=not sections,  # plotly.js inlined once, before the first chart
            div_id=f"chart-{fig.name}",
            config=_PLOTLY_CONFIG,
        )
        rel_png = None
        if png:
            mfig = fig.render_matplotlib(data, palette)
            mfig.suptitle(fig_title, fontsize=14, fontweight="bold")
            mfig.savefig(png_path, dpi=PNG_DPI, facecolor="white")
            rel_png = f"figures/{fig.name}.png"
        sections.append(
            Section(
                name=fig.name,
                title=fig_title,
                description=fig_description,
                chart_html=chart,
                png=rel_png,
            )
        )
        figure_index.append({"name": fig.name, "title": fig_title, "shown": True, "png": rel_png})

    metas = [_study_meta(s) for s in studies]
    all_cells = cells(studies)
    summary = {
        "schema": 1,
        "generated_by": f"batchlab {__version__}",
        "band": BAND,
        "studies": [
            {
                **m,
                "recommendation": recs[m["name"]].to_dict(),
                "findings": [f.to_dict() for f in per_study[m["name"]]],
                "cells": [_cell(c) for c in all_cells if c.key.study == m["name"]],
            }
            for m in metas
        ],
        "comparison": [f.to_dict() for f in compared],
        "figures": figure_index,
    }
    if len(studies) == 1:  # the common case: the answer at the top level too
        summary["recommendation"] = recs[studies[0].name].to_dict()
    (out_dir / "summary.json").write_text(
        json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )

    def items(fs: Sequence[Finding]) -> list[FindingItem]:
        return [FindingItem(level=f.level, text=f.text) for f in fs]

    blocks: list[tuple[str, Sequence[FindingItem]]] = []
    if compared:
        blocks.append(("", items(compared)))
    for s in studies:
        blocks.append((s.name if len(studies) > 1 else "", items(per_study[s.name])))

    if len(studies) == 1:
        m = metas[0]
        title = f"Batch-size study: {m['name']}"
        subtitle = f"{m['model']} on {m['dataset']}, {m['optimizer']}"
    else:
        title = "Batch-size comparison: " + " vs ".join(m["name"] for m in metas)
        subtitle = f"{len(studies)} studies overlaid in the same figures"
    n_trials = sum(len(s.trials) for s in studies)
    empty = (
        "This study has no trials yet, so there is nothing to plot."
        if n_trials == 0
        else "No trial completed, so there is nothing to plot; see the findings above."
    )
    html = page(
        title=title,
        subtitle=subtitle,
        meta_headers=_META_HEADERS,
        meta_rows=[_meta_row(m) for m in metas],
        findings=blocks,
        sections=sections,
        empty_message=empty,
        recommendations=[
            recommendation_view(
                recs[s.name],
                heading="Recommendation" if len(studies) == 1 else f"Recommendation: {s.name}",
            )
            for s in studies
        ],
        footer=(
            f"Generated by batchlab {__version__} on {time.strftime('%Y-%m-%d %H:%M')}."
            f" Bands: {BAND}. Numbers behind the findings: summary.json."
        ),
    )
    index = out_dir / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
