"""batchlab's probes in a plain PyTorch training loop: gradient noise scale and gradient norms.

Run it: `python examples/monitor_example.py` (a tiny MLP on synthetic data, a few seconds on CPU).
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import Monitor


def main(steps: int = 200, batch_size: int = 32) -> pd.DataFrame:
    """Train for `steps` SGD updates while monitoring; print a summary and return the records."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 20, generator=gen)
    y = (x[:, :5] @ torch.randn(5, 4, generator=gen)).argmax(dim=1)  # 4 classes, learnable
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    # Create the monitor before training (it keeps w_0); `data` is the pool the noise-scale
    # probe draws its extra batches from.
    monitor = Monitor(
        model,
        F.cross_entropy,
        probes=["noise_scale", "grad_norms", "distance"],
        data=(x, y),
        total_steps=steps,
    )
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (batch_size,), generator=gen)
        xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        monitor.step((xb, yb))  # after the update, before the next zero_grad
    monitor.finish()

    df = monitor.to_dataframe()
    totals = df[df["key"] == "total"].pivot_table(index="step", columns="probe", values="value")
    print(totals.iloc[[0, 1, len(totals) // 2, -1]].to_string(float_format="{:.4g}".format))
    return df


if __name__ == "__main__":
    main()
