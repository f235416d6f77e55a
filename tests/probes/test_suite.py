from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import (
    PRESETS,
    PROBES,
    Distance,
    Every,
    GradHistograms,
    GradNorms,
    HessianTop,
    NoiseScale,
    ProbeContext,
    ProbeRecord,
    ProbeSuite,
    Sharpness,
    UpdateSize,
    probe_generator,
    records_to_dataframe,
)

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]
TrainLoop = Callable[..., list[dict[str, torch.Tensor]]]


def _by(records: list[ProbeRecord], probe: str, key: str = "total") -> dict[int, float]:
    return {r.step: r.value for r in records if r.probe == probe and r.key == key}


def test_presets_grow_by_tier_and_name_real_probes() -> None:
    assert PRESETS["cheap"] == ["grad_norms", "update_size", "distance"]
    assert PRESETS["standard"] == [*PRESETS["cheap"], "noise_scale"]
    assert set(PRESETS["full"]) - set(PRESETS["standard"]) == {
        "hessian",
        "sharpness",
        "grad_histograms",
    }
    assert all(name in PROBES for names in PRESETS.values() for name in names)
    for tier, names in PRESETS.items():
        assert all(
            PROBES[n].tier in ("cheap", "standard", "full")[: list(PRESETS).index(tier) + 1]
            for n in names
        )


def test_from_spec_values() -> None:
    assert ProbeSuite.from_spec(None, total_steps=10).names == []
    assert not ProbeSuite.from_spec(None, total_steps=10)
    assert ProbeSuite.from_spec("standard", total_steps=10).names == PRESETS["standard"]
    suite = ProbeSuite.from_spec(["distance", "grad_norms", "distance"], total_steps=10, every=3)
    assert suite.names == ["distance", "grad_norms"]
    assert [s for s in range(1, 11) if suite.due(s)] == [3, 6, 9, 10]
    assert ProbeSuite.from_spec("noise_scale", total_steps=None).names == ["noise_scale"]


def test_unknown_probe_is_a_one_line_error_listing_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        ProbeSuite.from_spec(["grad_norms", "curvature"], total_steps=10)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'curvature'" in msg
    assert all(name in msg for name in PROBES)
    with pytest.raises(ValueError, match="unknown probe 'fast'"):
        ProbeSuite.from_spec("fast", total_steps=10)


def test_end_probes_stay_at_the_end_with_every() -> None:
    suite = ProbeSuite.from_spec("full", total_steps=100, every=1)
    ends = {p.name for p in suite.probes if p.schedule.at_end}
    assert ends == {"hessian", "sharpness", "grad_histograms"}
    assert all(not p.schedule.due(5) for p in suite.probes if p.name in ends)


def test_distance_is_exactly_zero_at_step_zero_and_matches_reference(
    toy_data: Data, make_mlp: ModelFactory, train_loop: TrainLoop
) -> None:
    model = make_mlp()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    suite = ProbeSuite(probes=[Distance(schedule=Every(5))])
    train_loop(model, toy_data, suite=suite, steps=12)
    records = suite.drain()
    at0 = [r for r in records if r.step == 0]
    assert {r.key for r in at0} == {"total"} | {f"layer:{n}" for n in w0}
    assert all(r.value == 0.0 for r in at0)
    assert sorted(_by(records, "distance")) == [0, 5, 10, 12]  # finish adds the last step
    ref = math.sqrt(
        sum(
            float((p.detach() - w0[n]).double().square().sum()) for n, p in model.named_parameters()
        )
    )
    assert _by(records, "distance")[12] == pytest.approx(ref, rel=1e-6)  # float32 model
    layer = _by(records, "distance", "layer:2.weight")[12]
    w2 = dict(model.named_parameters())["2.weight"].detach()
    assert layer == pytest.approx(float((w2 - w0["2.weight"]).norm()), rel=1e-6)
    assert suite.drain() == []


def test_update_size_is_lr_times_grad_norm_for_plain_sgd(
    toy_data: Data, make_mlp: ModelFactory, train_loop: TrainLoop
) -> None:
    model = make_mlp(dtype=torch.float64)
    x, y = toy_data
    suite = ProbeSuite.from_spec("cheap", total_steps=10, every=1)
    used = train_loop(model, (x.double(), y), suite=suite, steps=10, lr=0.3)
    records = suite.drain()
    upd, gn = _by(records, "update_size"), _by(records, "grad_norms")
    assert sorted(upd) == list(range(1, 11))
    for step in range(1, 11):
        ref = math.sqrt(sum(float(g.square().sum()) for g in used[step - 1].values()))
        assert gn[step] == pytest.approx(ref, rel=1e-12)
        assert upd[step] == pytest.approx(0.3 * gn[step], rel=1e-9)
        for name, g in used[step - 1].items():
            assert _by(records, "update_size", f"layer:{name}")[step] == pytest.approx(
                0.3 * float(g.norm()), rel=1e-9
            )


def _every_hook_suite() -> ProbeSuite:
    """Every probe on a frequent schedule, including the expensive ones (with tiny settings)."""
    return ProbeSuite(
        probes=[
            GradNorms(schedule=Every(1)),
            UpdateSize(schedule=Every(1)),
            Distance(schedule=Every(2)),
            NoiseScale(schedule=Every(2), draws=3),
            HessianTop(schedule=Every(5), subset=16, max_iters=5),
            Sharpness(schedule=Every(5), subset=16, maxiter=2, subspace_dim=3),
            GradHistograms(schedule=Every(5), batch_sizes=(2, 4), draws=3, bins=7),
        ]
    )


def test_probes_do_not_change_training(
    toy_data: Data, make_mlp: ModelFactory, train_loop: TrainLoop
) -> None:
    """BatchNorm statistics, dropout's global RNG, p.grad and modes all survive the probes."""
    plain, probed = make_mlp(noisy=True), make_mlp(noisy=True)
    grads_plain = train_loop(plain, toy_data, suite=None, steps=11, momentum=0.9)
    suite = _every_hook_suite()
    grads_probed = train_loop(probed, toy_data, suite=suite, steps=11, momentum=0.9)
    for a, b in zip(grads_plain, grads_probed, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = plain.state_dict(), probed.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert probed.training and all(m.training for m in probed.modules())
    records = suite.drain()
    assert {r.probe for r in records} == {p.name for p in suite.probes}
    assert {r.step for r in records if r.probe == "hessian"} == {5, 10}


def test_records_make_a_dataframe(
    toy_data: Data, make_mlp: ModelFactory, train_loop: TrainLoop
) -> None:
    suite = ProbeSuite.from_spec("cheap", total_steps=6, every=2)
    train_loop(make_mlp(), toy_data, suite=suite, steps=6)
    records = suite.drain()
    df = records_to_dataframe(records)
    assert list(df.columns) == ["step", "probe", "key", "value"]
    assert len(df) == len(records)
    assert df["step"].dtype == "int64" and df["value"].dtype == "float64"
    assert df.iloc[0].tolist() == list(records[0].as_row())
    assert records_to_dataframe([]).shape == (0, 4)
    assert isinstance(df, pd.DataFrame)


def test_context_and_generator() -> None:
    model = torch.nn.Linear(2, 2)
    ctx = ProbeContext(
        model=model,
        loss_fn=F.cross_entropy,
        x_train=torch.zeros(1, 2),
        y_train=torch.zeros(1, dtype=torch.long),
        step=0,
        batch_size=1,
        generator=probe_generator(3),
    )
    assert ctx.at(7).step == 7 and ctx.step == 0 and ctx.at(7).model is model
    a = torch.randint(1000, (5,), generator=probe_generator(3))
    assert torch.equal(a, torch.randint(1000, (5,), generator=probe_generator(3)))
    assert not torch.equal(a, torch.randint(1000, (5,), generator=torch.Generator().manual_seed(3)))


def test_finish_skips_end_probes_on_diverged_weights(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    x, y = toy_data
    model = make_mlp()
    suite = ProbeSuite.from_spec(["distance", "hessian"], total_steps=3)
    ctx = ProbeContext(
        model=model,
        loss_fn=F.cross_entropy,
        x_train=x,
        y_train=y,
        step=0,
        batch_size=8,
        generator=probe_generator(0),
    )
    suite.start(ctx)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    suite.finish(ctx.at(3))
    records = suite.drain()
    assert {r.probe for r in records} == {"distance"}
    assert math.isnan(_by(records, "distance")[3])


def test_options_choose_checkpoints_for_any_probe() -> None:
    """`steps` / `every` in a probe's options set its schedule; end probes keep the end."""
    suite = ProbeSuite.from_spec(
        "full",
        total_steps=100,
        options={
            "grad_histograms": {"steps": [10, 50], "draws": 7},
            "distance": {"every": 30},
        },
    )
    by_name = {p.name: p for p in suite.probes}
    hist = by_name["grad_histograms"]
    assert isinstance(hist, GradHistograms) and hist.draws == 7
    assert [s for s in range(0, 101) if hist.schedule.due(s)] == [10, 50]
    assert hist.schedule.at_end
    dist = by_name["distance"].schedule
    assert [s for s in range(0, 101) if dist.due(s)] == [30, 60, 90, 100]
    assert not dist.at_end
    assert not any(by_name["sharpness"].schedule.due(s) for s in range(101))  # untouched
    with pytest.raises(ValueError, match="AtSteps"):
        ProbeSuite.from_spec("full", total_steps=10, options={"hessian": {"steps": [0]}})
