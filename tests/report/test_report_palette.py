from __future__ import annotations

from batchlab.report.palette import (
    SERIES_COLORS,
    Palette,
    mpl_text,
    plotly_text,
    ramp_color,
)
from batchlab.report.stats import SeriesKey


def test_batch_size_colours_are_placed_by_log2_and_match_the_plotly_scale() -> None:
    p = Palette(batch_sizes=(8, 32, 128), series=())
    assert [p.position(b) for b in (8, 16, 32, 128)] == [0.0, 0.25, 0.5, 1.0]
    scale = p.bs_colorscale()
    # parallel coordinates colour lines by log2(b) on this scale: ends must agree
    assert scale[0] == (0.0, p.bs_color(8)) and scale[-1] == (1.0, p.bs_color(128))
    assert len({p.bs_color(b) for b in (8, 32, 128)}) == 3


def test_a_batch_size_keeps_its_colour_whatever_else_was_searched() -> None:
    # same range, different members: 32 sits at the same place
    a = Palette(batch_sizes=(8, 32, 128), series=())
    b = Palette(batch_sizes=(8, 16, 32, 64, 128), series=())
    assert a.bs_color(32) == b.bs_color(32) == ramp_color(0.5)


def test_series_get_distinct_colours_outside_the_ramp() -> None:
    keys = tuple(SeriesKey(study="s", lr_base=lr) for lr in (0.01, 0.1, 1.0))
    p = Palette(batch_sizes=(8, 64), series=keys)
    colours = [p.series_color(k) for k in keys]
    assert colours == list(SERIES_COLORS[:3])
    assert not p.multi_study and p.label(keys[0]) == "lr_base=0.01"
    two = Palette(batch_sizes=(8,), series=(keys[0], SeriesKey(study="t", lr_base=0.01)))
    assert two.multi_study and two.label(keys[0]) == "s · lr_base=0.01"


def test_label_escaping() -> None:
    assert plotly_text("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    assert mpl_text("cost $5") == r"cost \$5"
