"""Hardware profiles: stored by `batchlab profile`, read back per model and data, and shown in
the report of a study of the same model (figure values checked against the stored profile)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import batchlab
from batchlab.cli import main
from batchlab.report import build_report
from batchlab.report.figures.hardware import extract_hardware
from batchlab.store import Store, profile_subject
from batchlab.trial import FrozenTrial, TrialState

TINY = {
    "dataset": "synthetic",
    "dataset_args": {"n_train": 128, "n_test": 64, "dim": 8, "classes": 3},
    "model": "mlp",
    "model_args": {"widths": [8]},
    "batch_sizes": [8, 32],
    "budget": {"epochs": 1},
    "device": "cpu",
}


def profile_dict(*, knee: int = 32, saturated: bool = True) -> dict[str, Any]:
    rows = [
        {
            "batch_size": b,
            "samples_per_s": 100.0 * b,
            "peak_mem_bytes": b * 2**20,
            "fraction_of_peak": b / 1000,
        }
        for b in (32, 8, 16)  # unsorted on purpose
    ]
    return {
        "rows": rows,
        "threads": 2,
        "knee_batch_size": knee,
        "knee_saturated": saturated,
        "max_batch_size": 4096,
        "margin": 0.2,
    }


@dataclass
class FakeStudy:
    name: str = "fake"
    spec: Any = None
    trials: Sequence[FrozenTrial] = ()
    stored: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def hardware_profiles(self) -> list[tuple[float, str, dict[str, Any]]]:
        return self.stored


def trial(batch_size: int) -> FrozenTrial:
    return FrozenTrial(
        trial_id=f"t{batch_size}",
        study="fake",
        number=0,
        batch_size=batch_size,
        lr_base=0.1,
        lr=0.1,
        seed=0,
        params={},
        state=TrialState.COMPLETE,
    )


def test_store_keeps_profiles_per_subject_newest_first(tmp_path: Path) -> None:
    a = profile_subject(model="mlp", model_args={"widths": [8]}, dataset="x", dataset_args={})
    b = profile_subject(model="mlp", model_args={"widths": [9]}, dataset="x", dataset_args={})
    with Store(tmp_path / "s.db") as s:
        s.put_profile(a, "cpu", {"n": 1})
        s.put_profile(b, "cpu", {"n": 2})
        s.put_profile(a, "cuda:0", {"n": 3})
        assert [(d, p["n"]) for _, d, p in s.profiles(a)] == [("cuda:0", 3), ("cpu", 1)]
        assert [p["n"] for _, _, p in s.profiles(b)] == [2]
        assert s.profiles("nothing") == []


def test_extract_hardware_values() -> None:
    study = FakeStudy(
        trials=[trial(16), trial(8), trial(16)],
        stored=[(0.0, "cpu", profile_dict()), (-1.0, "cpu", profile_dict(knee=8))],
    )
    data = extract_hardware([study])
    assert data is not None
    assert data.batch_sizes == (8, 16, 32)
    assert data.samples_per_s == (800.0, 1600.0, 3200.0)
    assert data.peak_mib == (8.0, 16.0, 32.0)
    assert data.percent_of_peak == pytest.approx((0.8, 1.6, 3.2))
    assert data.knee == 32 and data.max_batch == 4096  # the newest profile, not the older one
    assert data.trained == (8, 16)
    assert data.measured == "1970-01-01 00:00 UTC"
    assert "throughput stops improving at B=32" in data.summary()
    assert "largest batch that fits (20% margin): 4,096" in data.summary()
    rising = extract_hardware([FakeStudy(stored=[(0.0, "cpu", profile_dict(saturated=False))])])
    assert rising is not None and "still rising at B=32" in rising.summary()


def test_no_profile_no_figure() -> None:
    assert extract_hardware([FakeStudy()]) is None

    class Plain:  # a StudyLike without profiles at all
        name, spec, trials = "p", None, ()

    assert extract_hardware([Plain()]) is None  # type: ignore[list-item]


@pytest.mark.slow
def test_profile_of_a_study_is_stored_and_shown_in_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "p.db"
    batchlab.run_study({**TINY, "name": "small"}, store=store)
    batchlab.run_study({**TINY, "name": "wider", "model_args": {"widths": [16]}}, store=store)
    main(["profile", "--study", "small", "--store", str(store), "--memory-cap", "0.5"])
    out = capsys.readouterr().out
    assert f"stored in {store}" in out
    small = batchlab.load_study("small", store=store)
    [(_, device, prof)] = small.hardware_profiles()
    assert device == "cpu" and [r["batch_size"] for r in prof["rows"]] == [8, 32]
    assert batchlab.load_study("wider", store=store).hardware_profiles() == []
    page = build_report(small, tmp_path / "rep", png=True)
    assert 'id="chart-hardware"' in page.read_text()
    assert (tmp_path / "rep" / "figures" / "hardware.png").is_file()
    page = build_report(batchlab.load_study("wider", store=store), tmp_path / "r2", png=False)
    assert 'id="chart-hardware"' not in page.read_text()
