"""Monitor in a user's own loop: same numbers as the engine path, and the shipped example runs."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import Monitor

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "monitor_example.py"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "probes.md"


def _user_loop(
    model: torch.nn.Module,
    data: Data,
    monitor: Monitor | None,
    *,
    steps: int,
    drop_grads: bool = False,
) -> list[float]:
    """Plain SGD; returns the training-gradient norm of each step (the reference)."""
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    gen = torch.Generator().manual_seed(1)
    norms = []
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (8,), generator=gen)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()  # type: ignore[no-untyped-call]
        norms.append(
            math.sqrt(
                sum(float(p.grad.square().sum()) for p in model.parameters() if p.grad is not None)
            )
        )
        opt.step()
        if drop_grads:
            opt.zero_grad(set_to_none=True)  # the monitor must recompute them
        if monitor is not None:
            monitor.step((x[idx], y[idx]))
    return norms


@pytest.mark.parametrize("drop_grads", [False, True])
def test_cheap_probes_match_the_loop(
    toy_data: Data, make_mlp: ModelFactory, drop_grads: bool
) -> None:
    model = make_mlp(dtype=torch.float64)
    data = (toy_data[0].double(), toy_data[1])
    w0 = [p.detach().clone() for p in model.parameters()]
    monitor = Monitor(model, F.cross_entropy, probes="cheap", every=2)
    norms = _user_loop(model, data, monitor, steps=7, drop_grads=drop_grads)
    df = monitor.to_dataframe()
    total = df[df["key"] == "total"].pivot_table(index="step", columns="probe", values="value")
    assert total.index.tolist() == [0, 2, 4, 6]
    assert total.loc[0, "distance"] == 0.0
    for step in (2, 4, 6):
        assert total.loc[step, "grad_norms"] == pytest.approx(norms[step - 1], rel=1e-9)
        assert total.loc[step, "update_size"] == pytest.approx(0.2 * norms[step - 1], rel=1e-9)
    monitor.finish()  # adds the final distance at step 7
    df = monitor.to_dataframe()
    last = df[(df["probe"] == "distance") & (df["key"] == "total")].iloc[-1]
    ref = math.sqrt(
        sum(
            float((p.detach() - w).square().sum())
            for p, w in zip(model.parameters(), w0, strict=True)
        )
    )
    assert last["step"] == 7 and last["value"] == pytest.approx(ref, rel=1e-12)


def test_monitor_does_not_change_training(toy_data: Data, make_mlp: ModelFactory) -> None:
    plain, watched = make_mlp(noisy=True), make_mlp(noisy=True)
    torch.manual_seed(0)
    _user_loop(plain, toy_data, None, steps=9)
    torch.manual_seed(0)
    _user_loop(
        watched,
        toy_data,
        Monitor(watched, F.cross_entropy, probes="standard", data=toy_data, every=1),
        steps=9,
        drop_grads=False,
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), watched.state_dict().values(), strict=True)
    )


def test_noise_scale_without_data_reports_on_schedule(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    """Every due step gets the keys; NaN until the first block of 4 updates is complete."""
    model = make_mlp()
    monitor = Monitor(model, F.cross_entropy, probes=["noise_scale"], every=1)
    _user_loop(model, toy_data, monitor, steps=5)
    df = monitor.to_dataframe()
    assert sorted(set(df["step"])) == [1, 2, 3, 4, 5]
    assert {"total", "trace_sigma/total", "g2/total"} <= set(df["key"])
    trace = df[df["key"] == "trace_sigma/total"].set_index("step")["value"]
    assert trace.loc[[1, 2, 3]].isna().all() and trace.loc[[4, 5]].notna().all()


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out.squeeze(-1) - target).square().mean()


@pytest.mark.parametrize("drop_grads", [False, True])
def test_noise_scale_without_data_estimates_the_datas_noise_scale(drop_grads: bool) -> None:
    """Linear regression on a Gaussian stream at a fixed weight: x ~ N(0, I_d),
    y = w*.x + sigma eps, f = 0.5 (w.x - y)^2, so with delta = w - w* the per-example gradient
    is (delta.x - sigma eps) x, G = delta and (Isserlis) tr(Sigma) = (d + 1)|delta|^2 + d sigma^2.
    Here B_simple = 64, eight times the loop's batch of 8; a probe drawing from the current
    batch alone would measure about 64 / (1 + 64 / 8) = 7."""
    d, b, sigma2 = 4, 8, 59 / 4  # B_simple = (d + 1) + d sigma^2 / |delta|^2 = 64
    g = torch.Generator().manual_seed(0)
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    delta = torch.randn(d, generator=g, dtype=torch.float64)
    delta /= delta.norm()
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    monitor = Monitor(model, _half_mse, probes=["noise_scale"], every=4)
    for _ in range(1600):  # 400 blocks of 4 batches
        xb = torch.randn(b, d, generator=g, dtype=torch.float64)
        yb = xb @ w_star + math.sqrt(sigma2) * torch.randn(b, generator=g, dtype=torch.float64)
        model.zero_grad(set_to_none=True)
        _half_mse(model(xb), yb).backward()  # type: ignore[no-untyped-call]
        if drop_grads:
            model.zero_grad(set_to_none=True)  # the monitor recomputes them
        monitor.step((xb, yb))
    df = monitor.to_dataframe()
    v = df.pivot_table(index="step", columns="key", values="value").iloc[10:]
    trace, g2 = v["trace_sigma/total"].mean(), v["g2/total"].mean()
    assert trace == pytest.approx((d + 1) + d * sigma2, rel=0.1)  # 64
    assert g2 == pytest.approx(1.0, rel=0.25)
    assert trace / g2 == pytest.approx(64.0, rel=0.25)
    ok = v["g2/total"] > 0  # the ratio of the averaged estimates, NaN while |G|^2 <= 0
    ratio = (v["trace_sigma/total"] / v["g2/total"])[ok].to_numpy()
    assert v["total"][ok].to_numpy() == pytest.approx(ratio, rel=1e-12)
    assert v["total"][~ok].isna().all()


def test_unknown_probe_name() -> None:
    with pytest.raises(ValueError, match="unknown probe 'nois_scale'"):
        Monitor(torch.nn.Linear(2, 2), F.cross_entropy, probes=["nois_scale"])


def test_example_runs_and_reports_values() -> None:
    spec = importlib.util.spec_from_file_location("monitor_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    df = module.main(steps=60)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["step", "probe", "key", "value"]
    totals = df[df["key"] == "total"]
    assert set(totals["probe"]) == {"noise_scale", "grad_norms", "distance"}
    assert totals[totals["probe"] == "distance"]["value"].iloc[0] == 0.0
    assert totals[totals["probe"] == "distance"]["step"].max() == 60
    assert (totals[totals["probe"] == "grad_norms"]["value"] > 0).all()
    assert totals[totals["probe"] == "noise_scale"]["value"].notna().any()


def test_docs_monitor_example_runs_as_written() -> None:
    """The python block under docs/probes.md's Monitor heading, executed as written."""
    section = DOCS.read_text(encoding="utf-8").split("## Monitor: probes in your own loop")[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    df = namespace["df"]
    assert isinstance(df, pd.DataFrame)
    assert set(df["probe"]) == {"noise_scale", "grad_norms"}
    steps = sorted(set(df["step"]))
    assert steps[0] >= 1 and steps[-1] == 32  # measured during training, the last step included
    noise = df[df["probe"] == "noise_scale"].pivot_table(
        index="step", columns="key", values="value"
    )
    finite = noise["g2/total"] > 0
    assert finite.any()
    ratio = noise.loc[finite, "trace_sigma/total"] / noise.loc[finite, "g2/total"]
    assert noise.loc[finite, "total"].to_numpy() == pytest.approx(ratio.to_numpy(), rel=1e-12)
    grads = df[(df["probe"] == "grad_norms")].pivot_table(
        index="step", columns="key", values="value"
    )
    layers = grads[[c for c in grads.columns if c.startswith("layer:")]]
    assert grads["total"].to_numpy() == pytest.approx(
        (layers**2).sum(axis=1).pow(0.5).to_numpy(), rel=1e-6
    )
