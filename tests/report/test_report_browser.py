"""The report in a real browser: no JavaScript errors, every chart drawn, nothing fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchlab.report import DEFAULT_FIGURES, build_comparison, build_report
from tests.report.report_browser import CHROMIUM, inspect
from tests.report.report_factories import FakeSpec, grid_study, rich_study

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs /usr/bin/chromium (apt-get install -y chromium)",
)


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    index = build_report(rich_study(), tmp_path / "report", png=False)
    shot = tmp_path / "screenshot.png"
    result = inspect(index, tmp_path, screenshot=shot)
    shown = [f for f in DEFAULT_FIGURES if f.extract([rich_study()]) is not None]
    assert result.errors == []
    assert result.resources == []  # self-contained: the page fetched nothing
    assert result.charts == [f"chart-{f.name}" for f in shown]
    assert result.drawn == result.charts  # every chart holds a drawn, non-empty SVG
    assert result.containers == len(shown)
    assert result.pressed == 5  # the curves' four x-axis buttons, then back to epochs
    assert result.title == "Batch-size study: rich"
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one


def test_names_with_markup_show_as_text_and_never_run(tmp_path: Path) -> None:
    """A comparison puts study names in the title, the tables and every legend."""
    evil = "<script>alert(1)</script>"
    bad = grid_study(evil, batch_sizes=(8, 16, 32), seeds=(0, 1))
    bad.spec = FakeSpec(dataset='<img src=x onerror="alert(2)">', model="<b>m</b>")
    index = build_comparison([bad, grid_study("plain", seeds=(0,))], tmp_path / "r", png=False)
    result = inspect(index, tmp_path)
    assert result.errors == [] and result.alerts == [] and result.resources == []
    assert result.drawn == result.charts and len(result.charts) >= 5
    assert result.title == f"Batch-size comparison: {evil} vs plain"  # shown, as text
    assert f"{evil} · lr_base=0.1" in result.legend  # plotly drew the name as text too
