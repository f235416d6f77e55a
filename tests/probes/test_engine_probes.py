"""Probes inside batchlab's engine: their time is not training time, and they change nothing."""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

import pytest
import torch

from batchlab.data import load_dataset
from batchlab.engine import train_trial
from batchlab.probes import Every, Probe, ProbeContext, ProbeRecord, Schedule
from batchlab.probes.base import Need
from batchlab.spec import StudySpec, spec_from_dict
from batchlab.trial import EvalRecord, TrialState

SpecFactory = Callable[..., dict[str, Any]]
# The module, not the `ProbeSuite` names batchlab.probes re-exports.
suite_module = importlib.import_module("batchlab.probes.suite")

SLEEP_S = 0.05
TIMES = {"train_time_s", "eval_time_s", "samples_per_s", "peak_mem_bytes"}


class SlowProbe(Probe):
    """Sleeps in both per-step hooks and at the end: pure probe time, no training work."""

    name: ClassVar[str] = "slow"
    tier: ClassVar[Any] = "cheap"
    calls: ClassVar[list[int]] = []

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return Every(1, total_steps=total_steps)

    def after_backward(self, ctx: ProbeContext) -> list[ProbeRecord]:
        time.sleep(SLEEP_S)
        return []

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        time.sleep(SLEEP_S)
        SlowProbe.calls.append(ctx.step)
        return [ProbeRecord(ctx.step, self.name, "total", float(ctx.step))]

    def finish(self, ctx: ProbeContext) -> list[ProbeRecord]:
        time.sleep(SLEEP_S)
        return []


def _run(spec: StudySpec) -> tuple[list[EvalRecord], list[ProbeRecord], TrialState]:
    records: list[EvalRecord] = []
    probes: list[ProbeRecord] = []

    def sink(rec: EvalRecord, _ckpt: Any, new: list[ProbeRecord]) -> None:
        records.append(rec)
        probes.extend(new)

    data = load_dataset(spec.dataset, args=spec.dataset_args, val_fraction=spec.val_fraction)
    out = train_trial(spec.trials()[0], data, device=torch.device("cpu"), on_eval=sink)
    return records, probes + list(out.probes), out.state


def test_probe_time_is_excluded_from_training_time(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(suite_module.PROBES, "slow", SlowProbe)
    SlowProbe.calls = []
    spec = spec_from_dict(make_spec(batch_sizes=[64], budget={"epochs": 2}, probes=["slow"]))
    t0 = time.perf_counter()
    records, probes, state = _run(spec)
    wall = time.perf_counter() - t0
    assert state == TrialState.COMPLETE
    steps = records[-1].step
    assert SlowProbe.calls == list(range(1, steps + 1))  # every step was probed
    slept = SLEEP_S * (2 * steps + 1)
    assert wall >= slept
    # The probes slept `slept` seconds (0.65 s here) inside the training loop; training itself
    # is milliseconds. Less than a fifth of the sleep may leak in (a generous bound for a busy
    # machine: any leak of a whole hook would be SLEEP_S per step, i.e. half of `slept`).
    assert records[-1].train_time_s < 0.2 * slept
    assert [r.value for r in probes if r.probe == "slow"] == [float(s) for s in SlowProbe.calls]


class IdleProbe(Probe):
    """Due at every step, reads the step's gradients and measures nothing: the engine's probed
    (autograd, split) code path, no probe work."""

    name: ClassVar[str] = "idle"
    tier: ClassVar[Any] = "cheap"
    needs: ClassVar[frozenset[Need]] = frozenset({"grads"})

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return Every(1, total_steps=total_steps)


class AfterUpdateProbe(IdleProbe):
    """Due at every step, needs neither the step's gradients nor the pre-update weights."""

    name: ClassVar[str] = "after_update_only"
    needs: ClassVar[frozenset[Need]] = frozenset({"data"})


def _metrics(rows: list[EvalRecord]) -> list[dict[str, Any]]:
    return [
        {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
        for d in ({k: v for k, v in asdict(r).items() if k not in TIMES} for r in rows)
    ]


def test_standard_probes_leave_the_engine_trajectory_unchanged(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every evaluation (losses, accuracies, lr) with the standard tier is bit-identical to the
    same trial with an idle probe (the engine's probed path, nothing measured), momentum on.

    Against a trial without any probe it agrees to float32 rounding only: the engine may train
    unprobed trials on a fused fast path (batchlab.fastpath) that rounds differently.
    """
    monkeypatch.setitem(suite_module.PROBES, "idle", IdleProbe)
    base = {"batch_sizes": [16], "budget": {"epochs": 2}, "momentum": 0.9}
    idle, none, _ = _run(spec_from_dict(make_spec(**base, probes=["idle"])))
    probed, records, state = _run(spec_from_dict(make_spec(**base, probes="standard")))
    plain, _, _ = _run(spec_from_dict(make_spec(**base)))
    assert state == TrialState.COMPLETE and none == []
    assert _metrics(idle) == _metrics(probed)
    assert len(plain) == len(probed)
    for a, b in zip(plain, probed, strict=True):
        assert a.step == b.step and a.samples == b.samples
        for field in ("train_loss", "val_loss", "test_loss", "val_acc", "test_acc"):
            x, y = getattr(a, field), getattr(b, field)
            assert (math.isnan(x) and math.isnan(y)) or y == pytest.approx(x, rel=1e-5), field
    assert {r.probe for r in records} == {"grad_norms", "update_size", "distance", "noise_scale"}
    assert all(r.value == 0.0 for r in records if r.probe == "distance" and r.step == 0)


def test_a_probe_that_needs_no_gradients_keeps_the_fast_step(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`needs` is read: a probe due at every step that reads neither `p.grad` nor the pre-update
    weights leaves the hand-written MLP step in place (bit-identical to an unprobed trial); one
    that reads gradients moves its steps to autograd (equal to float rounding only)."""
    monkeypatch.setitem(suite_module.PROBES, "idle", IdleProbe)
    monkeypatch.setitem(suite_module.PROBES, "after_update_only", AfterUpdateProbe)
    base = {"batch_sizes": [16], "budget": {"epochs": 2}, "momentum": 0.9}
    plain, _, _ = _run(spec_from_dict(make_spec(**base)))
    light, _, _ = _run(spec_from_dict(make_spec(**base, probes=["after_update_only"])))
    grads, _, _ = _run(spec_from_dict(make_spec(**base, probes=["idle"])))
    assert _metrics(plain) == _metrics(light)
    assert _metrics(plain) != _metrics(grads)
