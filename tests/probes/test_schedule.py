from __future__ import annotations

import pytest

from batchlab.probes import AnyOf, AtEnd, AtSteps, Every, LogSpaced, periodic


def test_every() -> None:
    s = Every(4, total_steps=10)
    assert [t for t in range(0, 13) if s.due(t)] == [4, 8, 10, 12]
    assert not s.at_end
    with pytest.raises(ValueError):
        Every(0)


def test_log_spaced_has_per_decade_points() -> None:
    s = LogSpaced(per_decade=10)
    due = [t for t in range(0, 1001) if s.due(t)]
    assert due[:10] == [1, 2, 3, 4, 6, 7, 8, 10, 13, 16]
    assert 100 in due and 1000 in due
    assert sum(1 for t in due if 100 < t <= 1000) == 10
    assert [t for t in range(0, 1001) if LogSpaced(per_decade=1).due(t)] == [1, 10, 100, 1000]


def test_at_end_and_any_of() -> None:
    assert AtEnd().at_end and not any(AtEnd().due(t) for t in range(100))
    s = AnyOf((Every(50), AtEnd()))
    assert s.at_end and s.due(50) and not s.due(49)


def test_periodic_covers_the_trial_and_its_last_step() -> None:
    s = periodic(4500, measurements=40)
    due = [t for t in range(1, 4501) if s.due(t)]
    assert due[0] == 1 and due[-1] == 4500
    assert 40 <= len(due) <= 70
    assert sum(1 for t in due if t <= 100) >= 10  # dense early
    assert periodic(None, measurements=50).due(300)
    costly = periodic(72, measurements=25, min_every=8)
    assert [t for t in range(20, 73) if costly.due(t)] == [24, 26, 32, 40, 48, 56, 64, 72]


def test_at_steps() -> None:
    s = AtSteps((3, 7))
    assert [t for t in range(0, 20) if s.due(t)] == [3, 7] and not s.at_end
    with pytest.raises(ValueError):
        AtSteps((0,))
