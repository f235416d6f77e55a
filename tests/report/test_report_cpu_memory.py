"""On CPU the peak-memory panel does not draw the resident set's wobble as a trend: below
CPU_MEMORY_TREND of its level it says "n/a on CPU" instead; a real spread is drawn."""

from __future__ import annotations

from pathlib import Path

from batchlab.report.figures._panels import Series
from batchlab.report.figures.throughput import extract_throughput, memory_is_wobble
from batchlab.report.stats import SeriesKey
from batchlab.study import run_study
from tests.conftest import SpecFactory


def series(*mib: float) -> Series:
    n = len(mib)
    return Series(
        key=SeriesKey(study="s", lr_base=0.1),
        batch_sizes=tuple(8 * 2**i for i in range(n)),
        mean=mib,
        std=(0.0,) * n,
        n=(1,) * n,
    )


def test_wobble_is_a_spread_under_a_tenth_of_the_level() -> None:
    assert memory_is_wobble([series(500.0, 503.0, 501.0)]) == (True, 3.0)
    assert memory_is_wobble([series(500.0, 700.0)])[0] is False
    assert memory_is_wobble([series(500.0)])[0] is False  # one point: nothing to call a trend


def test_a_cpu_study_shows_no_memory_trend(make_spec: SpecFactory, tmp_path: Path) -> None:
    study = run_study(make_spec(budget={"epochs": 1}), store=tmp_path / "s.db")
    data = extract_throughput([study])
    assert data is not None
    memory = next(p for p in data.panels if p.title == "Peak memory")
    assert memory.series == () and memory.note.startswith("n/a on CPU")
