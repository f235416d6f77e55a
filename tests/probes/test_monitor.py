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


def test_noise_scale_without_data_draws_from_the_batch(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    model = make_mlp()
    monitor = Monitor(model, F.cross_entropy, probes=["noise_scale"], every=1)
    _user_loop(model, toy_data, monitor, steps=3)
    df = monitor.to_dataframe()
    assert sorted(set(df["step"])) == [1, 2, 3]
    assert {"total", "trace_sigma/total", "g2/total"} <= set(df["key"])


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
