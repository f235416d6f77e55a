"""The report in a real browser: no JavaScript errors and every chart drawn."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchlab.report import DEFAULT_FIGURES, build_report
from tests.report.report_browser import CHROMIUM, inspect
from tests.report.report_factories import rich_study

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
    assert result.charts == [f"chart-{f.name}" for f in shown]
    assert result.drawn == result.charts  # every chart holds a drawn, non-empty SVG
    assert result.containers == len(shown)
    assert result.pressed == 5  # the curves' four x-axis buttons, then back to epochs
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one
