from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
import plotly.offline
import pytest
from matplotlib.figure import Figure as MplFigure

from batchlab.report import (
    DEFAULT_FIGURES,
    Figure,
    Palette,
    ReportError,
    StudyLike,
    build_comparison,
    build_report,
)
from batchlab.report.figures import STUDY_FIGURES
from batchlab.trial import TrialState
from tests.report.report_factories import FakeSpec, FakeStudy, grid_study, rich_study, trial

if TYPE_CHECKING:
    from batchlab.study import Study

    def _study_is_study_like(s: Study) -> StudyLike:  # mypy checks the real Study fits
        return s


@pytest.fixture(scope="module")
def built_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full report (with PNGs), built once for the tests that only read it."""
    return build_report(rich_study(), tmp_path_factory.mktemp("report"))


def test_report_files(built_report: Path) -> None:
    out = built_report.parent
    assert built_report == out / "index.html"
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    shown = [f for f in DEFAULT_FIGURES if f.extract([rich_study()]) is not None]
    assert set(STUDY_FIGURES) <= set(shown)  # no probes, controls, variants or schedules here
    assert pngs == sorted(f"{f.name}.png" for f in shown)
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_is_self_contained_with_plotly_js_once(built_report: Path) -> None:
    html = built_report.read_text(encoding="utf-8")
    plotly_js = plotly.offline.get_plotlyjs()
    assert html.count(plotly_js[:300]) == 1 and plotly_js in html
    ours = html.replace(plotly_js, "")  # the page without the (inert) library text
    assert "<script src=" not in ours and "<link" not in ours
    assert "http://" not in ours and "https://" not in ours
    for f in STUDY_FIGURES:
        assert f'id="chart-{f.name}"' in html
    assert "What this study shows" in html


def test_summary_holds_the_numbers_behind_the_findings(built_report: Path) -> None:
    text = (built_report.parent / "summary.json").read_text(encoding="utf-8")
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    (s,) = summary["studies"]
    assert s["name"] == "rich" and s["budget"] == {"kind": "epochs", "value": 4.0}
    assert s["states"]["COMPLETE"] == 20 and s["states"]["DIVERGED"] == 4
    best = next(f for f in s["findings"] if f["kind"] == "best")
    assert best["data"]["batch_size"] == 32
    cell = next(c for c in s["cells"] if c["batch_size"] == 8 and c["lr_base"] == 1.0)
    assert cell["diverged"] == 2 and cell["test_acc"]["mean"] is None  # NaN -> null
    assert [f["name"] for f in summary["figures"]] == [f.name for f in DEFAULT_FIGURES]
    assert [f["name"] for f in summary["figures"] if f["shown"]] == [
        f.name for f in DEFAULT_FIGURES if f.extract([rich_study()]) is not None
    ]


def test_names_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    s = grid_study(evil, batch_sizes=(8, 16), seeds=(0,))
    s.spec = FakeSpec(dataset='<img src=x onerror="alert(2)">', model="m&m")
    html = build_report(s, tmp_path, png=False).read_text(encoding="utf-8")
    assert evil not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "m&amp;m" in html


def test_empty_study_gets_a_page_that_says_so(tmp_path: Path) -> None:
    s = FakeStudy(name="empty", spec=FakeSpec(), trials=[])
    html = build_report(s, tmp_path).read_text(encoding="utf-8")
    assert "has no trials yet" in html
    assert "js-plotly-plot" not in html and "Plotly.newPlot" not in html
    assert list((tmp_path / "figures").glob("*.png")) == []
    assert json.loads((tmp_path / "summary.json").read_text())["studies"][0]["trials"] == 0


def test_all_diverged_study_gets_a_page_that_says_so(tmp_path: Path) -> None:
    trials = [
        trial(study="d", number=i, batch_size=b, state=st, error="boom")
        for i, (b, st) in enumerate([(8, TrialState.DIVERGED), (16, TrialState.FAILED)])
    ]
    out = build_report(FakeStudy(name="d", spec=FakeSpec(), trials=trials), tmp_path, png=False)
    html = out.read_text(encoding="utf-8")
    assert "None of the 2 trials completed" in html
    assert "No trial completed, so there is nothing to plot" in html
    assert "1 trial diverged" in html and "1 trial failed" in html


def test_rebuilding_removes_figures_that_no_longer_apply(tmp_path: Path) -> None:
    build_report(rich_study(), tmp_path, png=True)
    assert (tmp_path / "figures" / "heatmap.png").exists()
    build_report(grid_study("one-lr", seeds=(0,)), tmp_path, png=False)
    assert not (tmp_path / "figures" / "heatmap.png").exists()


@dataclass(frozen=True)
class BestData:
    batch_sizes: tuple[int, ...]
    values: tuple[float, ...]


def _extract_final_steps(studies: Sequence[StudyLike]) -> BestData | None:
    pts = sorted(
        (t.batch_size, float(t.last.step))
        for s in studies
        for t in s.trials
        if t.last is not None and t.state is TrialState.COMPLETE
    )
    return BestData(tuple(b for b, _ in pts), tuple(v for _, v in pts)) if pts else None


def _plotly(data: BestData, palette: Palette) -> Any:
    return go.Figure(go.Bar(x=[str(b) for b in data.batch_sizes], y=list(data.values)))


def _mpl(data: BestData, palette: Palette) -> MplFigure:
    fig = MplFigure()
    fig.subplots().bar([str(b) for b in data.batch_sizes], data.values)
    return fig


EXTRA = Figure[BestData](
    name="probe-steps",
    title="An extra figure",
    description="Registered from outside the package.",
    extract=_extract_final_steps,
    render_plotly=_plotly,
    render_matplotlib=_mpl,
)


def test_extra_figures_plug_in(tmp_path: Path) -> None:
    s = grid_study(batch_sizes=(8, 16), seeds=(0,))
    html = build_report(s, tmp_path, extra_figures=[EXTRA]).read_text(encoding="utf-8")
    assert 'id="chart-probe-steps"' in html and "An extra figure" in html
    assert (tmp_path / "figures" / "probe-steps.png").exists()
    assert _extract_final_steps([s]) == BestData((8, 16), (512.0, 256.0))


def test_bad_input_is_a_one_line_report_error(tmp_path: Path) -> None:
    clash = Figure[BestData](
        name="accuracy",
        title="dup",
        description="",
        extract=_extract_final_steps,
        render_plotly=_plotly,
        render_matplotlib=_mpl,
    )
    with pytest.raises(ReportError, match="two figures are named 'accuracy'"):
        build_report(rich_study(), tmp_path, extra_figures=[clash], png=False)
    with pytest.raises(ReportError, match="at least one study"):
        build_comparison([], tmp_path)
    with pytest.raises(ReportError, match="given twice"):
        build_comparison([rich_study(), rich_study()], tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        build_report(rich_study(), a_file)
    with pytest.raises(ValueError, match="figure name"):
        Figure[BestData](
            name="Bad Name",
            title="",
            description="",
            extract=_extract_final_steps,
            render_plotly=_plotly,
            render_matplotlib=_mpl,
        )


def test_comparison_overlays_studies(tmp_path: Path) -> None:
    a = grid_study("linear", seeds=(0,), spec=FakeSpec(lr_scaling="linear"))
    b = grid_study("none", seeds=(0,), acc=lambda bs, lr: 0.8)
    out = build_comparison([a, b], tmp_path, png=False)
    html = out.read_text(encoding="utf-8")
    assert "Batch-size comparison: linear vs none" in html
    for label in ("linear · lr_base=0.1", "none · lr_base=0.1"):  # as plotly's JSON spells it
        assert json.dumps(label)[1:-1] in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["name"] for s in summary["studies"]] == ["linear", "none"]
    (best,) = summary["comparison"]
    assert best["data"]["best"]["study"] == "linear"
    assert not math.isnan(best["data"]["difference"])
