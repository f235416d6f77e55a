"""The shared look: band edges on log axes, 1-2-5 log ticks, and bands drawn without markers."""

from __future__ import annotations

import math

import pytest

from batchlab.report.figures._lines import Line, LinePanel, LinesData, render_lines_plotly
from batchlab.report.figures._panels import Panel, PanelsData, Series, render_panels_plotly
from batchlab.report.figures._style import band_edges, log_ticks, plotly_log_axis
from batchlab.report.figures.curves import PANELS, extract_curves, render_curves_plotly
from batchlab.report.palette import Palette, palette_for
from batchlab.report.stats import SeriesKey
from tests.report.report_factories import rich_study

KEY = SeriesKey(study="s", lr_base=0.1)


def test_band_is_mean_plus_minus_std_with_zero_width_where_unknown() -> None:
    band = band_edges([10.0, 20.0, 30.0], [1.0, math.nan, 5.0], log=False)
    assert band == ([11.0, 20.0, 35.0], [9.0, 20.0, 25.0])
    assert band_edges([1.0, 2.0], [math.nan, math.nan], log=False) is None


def test_on_a_log_axis_a_band_below_zero_is_clipped_to_half_the_smallest_positive_value() -> None:
    # 100 ± 300 reaches -200: drawn down to half of the smallest positive mean/edge (40 / 2)
    hi, lo = band_edges([100.0, 50.0], [300.0, 10.0], log=True) or ([], [])
    assert hi == [400.0, 60.0]
    assert lo == [20.0, 40.0]
    # on a linear axis the same band keeps its negative edge
    assert band_edges([100.0, 50.0], [300.0, 10.0], log=False) == ([400.0, 60.0], [-200.0, 40.0])


def test_log_ticks_are_1_2_5_per_decade_with_one_either_side() -> None:
    ticks = log_ticks([3.0, 40.0, 180.0])
    assert ticks is not None
    vals, text = ticks
    assert vals == pytest.approx([2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0])
    assert text == ["2", "5", "10", "20", "50", "100", "200"]
    big = log_ticks([15_000.0, 60_000.0])
    assert big is not None and big[1] == ["10,000", "20,000", "50,000", "100,000"]
    small = log_ticks([0.013, 0.3])
    assert small is not None and small[1] == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]
    # fewer than two ticks inside (24..36 holds none): plotly's own ticks
    assert log_ticks([24.0, 36.0]) is None and plotly_log_axis([24.0, 36.0]) == {"type": "log"}
    assert log_ticks([0.0, -1.0, math.nan]) is None


def test_bands_are_drawn_as_filled_outlines_without_corner_markers() -> None:
    palette = Palette(batch_sizes=(8, 16), series=(KEY,))
    series = Series(key=KEY, batch_sizes=(8, 16), mean=(100.0, 50.0), std=(300.0, 10.0), n=(2, 2))
    panel = Panel(title="t", y_label="y", unit="u", log_y=True, series=(series,))
    fig = render_panels_plotly(PanelsData(batch_sizes=(8, 16), panels=(panel,)), palette)
    (band,) = [t for t in fig.data if t.fill == "toself"]
    assert band.mode == "lines"
    assert list(band.y) == [400.0, 60.0, 40.0, 20.0]  # hi, then lo reversed; clipped on log
    assert list(fig.layout.yaxis.tickvals) == pytest.approx([10, 20, 50, 100, 200, 500])

    line = Line(label="a", x=(1.0, 10.0, 100.0), y=(1.0, 2.0, 3.0), std=(0.5, 0.5, 0.5))
    lp = LinePanel(title="t", x_label="x", y_label="y", x_kind="log", log_y=False, lines=(line,))
    lfig = render_lines_plotly(LinesData(batch_sizes=(8,), panels=(lp,)), palette)
    (lband,) = [t for t in lfig.data if t.fill == "toself"]
    assert lband.mode == "lines"
    assert lfig.layout.xaxis.tickmode == "array"
    assert list(lfig.layout.xaxis.ticktext) == [
        "0.5",
        "1",
        "2",
        "5",
        "10",
        "20",
        "50",
        "100",
        "200",
    ]


def test_curves_drop_step_zero_on_the_log_axes_instead_of_drawing_a_flat_segment() -> None:
    data = extract_curves([rich_study()])
    assert data is not None
    fig = render_curves_plotly(data, palette_for([rich_study()]))
    buttons = {b.label: b for b in fig.layout.updatemenus[0].buttons}
    c32 = next(i for i, c in enumerate(data.curves) if c.batch_size == 32)
    per_curve = len(PANELS)
    steps = buttons["vs updates"].args[0]["x"][c32 * per_curve]
    assert steps == [None, 32.0, 64.0, 96.0, 128.0]
    assert buttons["vs updates"].args[1]["xaxis.type"] == "log"
    assert buttons["vs updates"].args[1]["xaxis.tickmode"] == "array"
    epochs = buttons["vs epochs"].args[0]["x"][c32 * per_curve]
    assert epochs == [0.0, 1.0, 2.0, 3.0, 4.0]  # a linear axis keeps the start
    assert buttons["vs epochs"].args[1]["xaxis.tickmode"] == "auto"
