"""The design figures' extracts (stability grid, budget controls, variants, schedules) on values."""

from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from batchlab.report import DEFAULT_FIGURES, build_comparison
from batchlab.report.figure import Figure
from batchlab.report.figures import DESIGN_FIGURES, PROBE_FIGURES
from batchlab.report.figures.designs_budget import extract_budget
from batchlab.report.figures.designs_schedules import extract_schedules
from batchlab.report.figures.designs_stability import extract_stability
from batchlab.report.figures.designs_variants import MIB, extract_variants
from batchlab.report.palette import palette_for
from batchlab.trial import EvalRecord, FrozenTrial, TrialState
from tests.report.report_browser import CHROMIUM, inspect
from tests.report.report_factories import (
    FakeProbeStudy,
    FakeSpec,
    FakeStudy,
    curve,
    final_only,
    grid_study,
    record,
    trial,
)
from tests.report.test_report_probe_figures import probed


def _evals(*, acc: float, first_loss: float, last_loss: float, step: int = 10) -> list[EvalRecord]:
    return [
        record(idx=0, step=0, test_acc=0.1, full_train_loss=first_loss),
        record(idx=1, step=step, test_acc=acc, full_train_loss=last_loss, train_time_s=1.0),
    ]


def stability_study() -> FakeStudy:
    """Variant "a": at b=8 lrs 0.01, 0.1 converge and 1.0 diverges; at b=64 0.01 is unstable,
    0.1 converges and 1.0 failed. Variant "b" tried one lr (no panel); controls are ignored."""
    trials: list[FrozenTrial] = []

    def add(b: int, lr: float, *, variant: str = "a", **kw: Any) -> None:
        trials.append(
            trial(
                study="stab",
                number=len(trials),
                batch_size=b,
                lr_base=lr,
                params={"variant": variant},
                **kw,
            )
        )

    add(8, 0.01, evals=_evals(acc=0.80, first_loss=2.0, last_loss=0.5))
    add(8, 0.1, evals=_evals(acc=0.90, first_loss=2.0, last_loss=0.3))
    add(8, 1.0, state=TrialState.DIVERGED, evals=_evals(acc=0.1, first_loss=2.0, last_loss=9))
    add(64, 0.01, evals=_evals(acc=0.30, first_loss=2.0, last_loss=2.0))
    add(64, 0.1, evals=_evals(acc=0.70, first_loss=2.0, last_loss=0.9))
    add(64, 0.1, seed=1, evals=_evals(acc=0.72, first_loss=2.0, last_loss=0.8))
    add(64, 1.0, state=TrialState.FAILED, error="boom")
    add(8, 0.1, variant="b", evals=_evals(acc=0.5, first_loss=2.0, last_loss=1.0))
    trials.append(
        trial(
            study="stab",
            number=len(trials),
            batch_size=64,
            lr_base=1.0,
            params={"variant": "a", "control": True},
            evals=_evals(acc=0.9, first_loss=2.0, last_loss=0.1),
        )
    )
    return FakeStudy(name="stab", spec=FakeSpec(), trials=trials)


def test_stability_grid_statuses_accuracy_and_band() -> None:
    assert extract_stability([grid_study()]) is None  # a single lr
    data = extract_stability([stability_study()])
    assert data is not None
    (g,) = data.grids  # variant "b" tried one lr only
    assert (g.variant, g.lr_bases, g.batch_sizes) == ("a", (0.01, 0.1, 1.0), (8, 64))
    assert g.status == (
        ("converged", "unstable"),
        ("converged", "converged"),
        ("diverged", "failed"),  # the control run at (64, 1.0) does not count
    )
    assert g.acc[1] == pytest.approx((90.0, 71.0))  # mean over the two seeds at b=64
    assert math.isnan(g.acc[0][1])  # unstable: no accuracy shown
    assert g.band_lo == (0.01, 0.1) and g.band_hi == (0.1, 0.1)
    assert g.best_lr == (0.1, 0.1)


def budget_study(*, controls: bool = True) -> FakeStudy:
    """Epoch budget at b = 8, 32, 128 (128, 32, 8 updates); controls at 32 and 128 get 128."""
    trials: list[FrozenTrial] = []
    for b, acc in ((8, 0.9), (32, 0.85), (128, 0.7)):
        for seed in (0, 1):
            trials.append(
                trial(
                    study="budget",
                    number=len(trials),
                    batch_size=b,
                    seed=seed,
                    evals=final_only(test_acc=acc + 0.01 * seed, step=1024 // b),
                    params={"budget": {"epochs": 1}},
                )
            )
    if controls:
        for b, acc in ((32, 0.9), (128, 0.88)):
            trials.append(
                trial(
                    study="budget",
                    number=len(trials),
                    batch_size=b,
                    evals=final_only(test_acc=acc, step=128),
                    params={"budget": {"steps": 128}, "control": True},
                )
            )
        trials.append(  # a diverged control never enters
            trial(
                study="budget",
                number=len(trials),
                batch_size=128,
                seed=1,
                state=TrialState.DIVERGED,
                params={"budget": {"steps": 128}, "control": True},
            )
        )
    return FakeStudy(name="budget", spec=FakeSpec(), trials=trials)


def test_budget_sets_equal_epochs_next_to_equal_updates() -> None:
    assert extract_budget([budget_study(controls=False)]) is None
    data = extract_budget([budget_study()])
    assert data is not None
    acc, steps = data.panels
    assert [line.label for line in acc.lines] == ["equal epochs", "equal updates (control)"]
    epochs, control = acc.lines
    assert epochs.x == (8.0, 32.0, 128.0) and (epochs.dash, control.dash) == (0, 1)
    assert epochs.y == pytest.approx((90.5, 85.5, 70.5))
    assert epochs.std[0] == pytest.approx(statistics.stdev([90.0, 91.0]))
    # The control line starts at the smallest batch size's own runs, whose updates it matches.
    assert control.x == (8.0, 32.0, 128.0)
    assert control.y == pytest.approx((90.5, 90.0, 88.0))
    assert steps.lines[0].y == pytest.approx((128.0, 32.0, 8.0))
    assert steps.lines[1].y == pytest.approx((128.0, 128.0, 128.0))
    assert steps.log_y


def variant_study() -> FakeStudy:
    """Variants sgd and adam at b = 8, 32; adam is faster and uses more memory."""
    trials: list[FrozenTrial] = []
    for v, acc, speed, mem in (("sgd", 0.8, 1.0, 100), ("adam", 0.9, 0.5, 200)):
        for b in (8, 32):
            for lr, bonus in ((0.1, 0.0), (0.01, -0.2)):
                for seed in (0, 1):
                    trials.append(
                        trial(
                            study="var",
                            number=len(trials),
                            batch_size=b,
                            lr_base=lr,
                            seed=seed,
                            params={"variant": v},
                            evals=final_only(
                                test_acc=acc + bonus + 0.01 * seed,
                                train_time_s=speed * 64 / b,
                                peak_mem_bytes=int((mem + b) * MIB),
                            ),
                        )
                    )
    return FakeStudy(name="var", spec=FakeSpec(), trials=trials)


def test_variants_one_line_per_variant_at_the_best_lr() -> None:
    assert extract_variants([grid_study()]) is None  # no variants
    assert extract_variants([budget_study()]) is None
    data = extract_variants([variant_study()])
    assert data is not None
    acc, time, mem = data.panels
    assert [line.label for line in acc.lines] == ["sgd", "adam"]  # in the spec's order
    sgd, adam = acc.lines
    assert (sgd.color, adam.color) == (0, 1)
    assert adam.y == pytest.approx((90.5, 90.5)) and sgd.y == pytest.approx((80.5, 80.5))
    assert time.lines[0].y == pytest.approx((8.0, 2.0))
    assert time.log_y  # a factor of 8
    assert mem.lines[1].y == pytest.approx((208.0, 232.0))
    assert data.batch_sizes == (8, 32)


def schedule_study(*, schedules: bool = True) -> FakeStudy:
    """lr-decay and constant at b=32, large at b=256 (4 epochs, 32 / 4 updates per epoch)."""
    trials: list[FrozenTrial] = []
    sched = {"lr_schedule": {"milestones": [2], "factor": 5.0}} if schedules else {}
    for v, b, acc, extra in (
        ("lr-decay", 32, 0.9, sched),
        ("constant", 32, 0.85, {}),
        ("large", 256, 0.8, {}),
    ):
        for seed in (0, 1):
            trials.append(
                trial(
                    study="sched",
                    number=len(trials),
                    batch_size=b,
                    seed=seed,
                    params={"variant": v, **extra},
                    evals=curve(b, acc, seed=seed),
                )
            )
    return FakeStudy(name="sched", spec=FakeSpec(), trials=trials)


def test_schedules_against_epochs_and_updates_with_update_counts() -> None:
    assert extract_schedules([schedule_study(schedules=False)]) is None
    data = extract_schedules([schedule_study()])
    assert data is not None
    by_epoch, by_step = data.panels
    assert [line.label for line in by_epoch.lines] == [
        "lr-decay · b=32 (128 updates)",
        "constant · b=32 (128 updates)",
        "large · b=256 (16 updates)",
    ]
    assert [line.dash for line in by_epoch.lines] == [0, 1, 1]  # solid: has a schedule
    decay = by_epoch.lines[0]
    assert decay.x == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert by_step.lines[2].x == (0.0, 4.0, 8.0, 12.0, 16.0)
    expected = [100 * statistics.fmean(curve(32, 0.9, seed=s)[-1].test_acc for s in (0, 1))]
    assert decay.y[-1] == pytest.approx(expected[0])
    assert by_step.x_kind == "log" and by_epoch.x_kind == "linear"


@functools.cache
def _everything() -> list[FakeProbeStudy]:
    """Every design and probe figure has data in these (for the renderers)."""
    out = []
    for s in (stability_study(), budget_study(), variant_study(), schedule_study()):
        out.append(FakeProbeStudy(name=s.name, spec=s.spec, trials=s.trials))
    return [*out, probed()]


@pytest.mark.parametrize("figure", DESIGN_FIGURES + PROBE_FIGURES, ids=lambda f: f.name)
def test_new_renderers_do_not_break(figure: Figure[Any]) -> None:
    for studies in ([probed()] if figure in PROBE_FIGURES else _everything()[:4], _everything()):
        data = figure.extract(studies)
        assert data is not None
        palette = palette_for(studies)
        assert len(figure.render_plotly(data, palette).data) > 0
        assert len(figure.render_matplotlib(data, palette).axes) > 0


def test_new_figures_are_registered() -> None:
    names = [f.name for f in DEFAULT_FIGURES]
    for f in DESIGN_FIGURES + PROBE_FIGURES:
        assert names.count(f.name) == 1


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_new_figures_render_in_chromium(tmp_path: Path) -> None:
    index = build_comparison(_everything(), tmp_path / "report", png=False)
    result = inspect(index, tmp_path)
    assert result.errors == []
    for f in DESIGN_FIGURES + PROBE_FIGURES:
        assert f"chart-{f.name}" in result.charts
    assert result.drawn == result.charts  # every chart holds a drawn, non-empty SVG
