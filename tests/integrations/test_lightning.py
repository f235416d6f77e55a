"""BatchlabCallback: what reaches the Trainer's logger equals the probes on the same weights.

The reference is a plain PyTorch loop over the same initial weights and batches: gradient norm
and distance from init computed directly from their definitions, and every other value from a
`Monitor` in that loop. The callback's values are read back from a CSVLogger's file.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchlab.integrations.lightning import BatchlabCallback
from batchlab.probes import Monitor

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_example.py"
PROBES = ["grad_norms", "distance", "noise_scale"]
N, BATCH, LR = 96, 16, 0.2


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 6, generator=gen)
    return x, (x[:, :3] @ torch.randn(3, 3, generator=gen)).argmax(dim=1)


def trainer(tmp_path: Path, callback: BatchlabCallback, **kwargs: object) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,  # type: ignore[arg-type]
    )


def logged(path: Path, prefix: str = "batchlab/") -> dict[str, dict[int, float]]:
    """name -> step -> value for the prefixed columns of a CSVLogger metrics file."""
    df = pd.read_csv(path)
    out: dict[str, dict[int, float]] = {}
    for col in (c for c in df.columns if c.startswith(prefix)):
        rows = df[["step", col]].dropna()
        out[col.removeprefix(prefix)] = dict(zip(rows["step"].astype(int), rows[col], strict=True))
    return out


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict[int, float]]:
    """The same training as the Trainer's, in a plain loop: direct norms and a Monitor."""
    w0 = [p.detach().clone() for p in model.parameters()]
    monitor = Monitor(model, F.cross_entropy, probes=PROBES, data=(x, y), every=1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    direct: dict[str, dict[int, float]] = {"grad_norms/total": {}, "distance/total": {0: 0.0}}
    for step, i in enumerate(range(0, N, BATCH), start=1):
        xb, yb = x[i : i + BATCH], y[i : i + BATCH]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
        g2 = sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None)
        direct["grad_norms/total"][step] = math.sqrt(g2)
        opt.step()
        d2 = sum(
            float(((p.detach() - p0) ** 2).sum())
            for p, p0 in zip(model.parameters(), w0, strict=True)
        )
        direct["distance/total"][step] = math.sqrt(d2)
        monitor.step((xb, yb))
    monitor.finish()
    out: dict[str, dict[int, float]] = {}
    for r in (r for r in monitor.records if not math.isnan(r.value)):  # NaN is not logged
        out.setdefault(f"{r.probe}/{r.key}", {})[r.step] = r.value
    for name, values in direct.items():  # the definitions agree with the Monitor's values
        assert out[name] == pytest.approx(values, rel=1e-5, abs=1e-7)
    return out


@pytest.mark.slow
def test_logged_values_equal_the_probes_on_the_same_weights_and_batches(tmp_path: Path) -> None:
    x, y = data()
    torch.manual_seed(0)
    module = Tiny()
    initial = copy.deepcopy(module)
    callback = BatchlabCallback(PROBES, data=(x, y), every=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    run = trainer(tmp_path, callback)
    run.fit(module, loader)
    assert run.global_step == N // BATCH
    got = logged(next(tmp_path.glob("csv/version_*/metrics.csv")))
    expected = reference(initial, x, y)
    assert set(got) == set(expected)
    assert {"noise_scale/total", "grad_norms/layer:net.0.weight"} <= set(got)
    for name, values in expected.items():
        assert got[name] == pytest.approx(values, rel=1e-5, abs=1e-7), name
    kept = callback.to_dataframe().dropna()
    assert len(kept) == sum(len(v) for v in expected.values())


def test_gradient_accumulation_is_refused(tmp_path: Path) -> None:
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    run = trainer(tmp_path, BatchlabCallback("cheap"), accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 is not supported"):
        run.fit(Tiny(), loader)


@pytest.mark.slow
def test_the_example_runs_and_logs_what_it_reports(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("lightning_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    df = example.main(epochs=1, batch_size=64, log_dir=tmp_path)
    assert set(df["probe"]) == {"noise_scale", "grad_norms", "distance"}
    csv = logged(next(tmp_path.glob("batchlab/version_*/metrics.csv")))
    for (probe, key), rows in df.dropna().groupby(["probe", "key"]):  # NaN: not logged
        values = dict(zip(rows["step"], rows["value"], strict=True))
        assert csv[f"{probe}/{key}"] == pytest.approx(values, rel=1e-6)


def test_noise_scale_without_data_is_the_two_batch_estimate_of_consecutive_batches(
    tmp_path: Path,
) -> None:
    """Without `data=`, the noise scale logged at update 4 is the two-batch estimate from the
    first four training batches (small: each batch, big: all four), computed here by hand."""
    x, y = data()
    torch.manual_seed(0)
    module = Tiny()
    model = copy.deepcopy(module).net
    callback = BatchlabCallback(["noise_scale"], every=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    trainer(tmp_path, callback).fit(module, loader)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    small, grads = [], []
    for i in range(0, 4 * BATCH, BATCH):
        opt.zero_grad()
        F.cross_entropy(model(x[i : i + BATCH]), y[i : i + BATCH]).backward()  # type: ignore[no-untyped-call]
        g = torch.cat(
            [p.grad.detach().reshape(-1) for p in model.parameters() if p.grad is not None]
        )
        small.append(float(g.square().sum()))
        grads.append(g.clone())
        opt.step()
    b, big = BATCH, 4 * BATCH
    gs, gb = sum(small) / 4, float(torch.stack(grads).mean(dim=0).square().sum())
    trace, g2 = (gs - gb) / (1 / b - 1 / big), (big * gb - b * gs) / (big - b)
    got = {(r.step, r.key): r.value for r in callback.records}
    assert got[(4, "trace_sigma/total")] == pytest.approx(trace, rel=1e-5)
    assert got[(4, "g2/total")] == pytest.approx(g2, rel=1e-5)
    assert math.isnan(got[(3, "g2/total")])  # no block complete before update 4
    csv = logged(next(tmp_path.glob("csv/version_*/metrics.csv")))
    assert csv["noise_scale/trace_sigma/total"][4] == pytest.approx(trace, rel=1e-5)
