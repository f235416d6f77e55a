"""batchlab's probes in a Lightning training: noise scale, gradient norms, distance from init.

Run it: `python examples/lightning_example.py` (needs `pip install 'batchlab[lightning]'`; a tiny
MLP on synthetic data, a few seconds on CPU). The probe values go to the Trainer's logger, here
a CSVLogger under lightning_logs/ (`tensorboard --logdir lightning_logs` with a TensorBoardLogger).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchlab.integrations.lightning import BatchlabCallback


class Classifier(L.LightningModule):
    """Any LightningModule whose forward returns logits; nothing batchlab-specific in it."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def synthetic(n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 20, generator=gen)
    y = (x[:, :5] @ torch.randn(5, 4, generator=gen)).argmax(dim=1)  # 4 learnable classes
    return x, y


def main(
    epochs: int = 2, batch_size: int = 32, log_dir: Path = Path("lightning_logs")
) -> pd.DataFrame:
    """Train with the callback; print the probes' totals and return every record."""
    x, y = synthetic()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    L.seed_everything(0, verbose=False)
    # `data` is the pool the noise-scale probe draws its extra batches from.
    probes = BatchlabCallback(["noise_scale", "grad_norms", "distance"], data=(x, y))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=CSVLogger(log_dir, name="batchlab"),
        callbacks=[probes],
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=10,  # the default 50 is more than an epoch of this small example
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), loader)

    df = probes.to_dataframe()
    totals = df[df["key"] == "total"].pivot_table(index="step", columns="probe", values="value")
    print(totals.iloc[[0, 1, len(totals) // 2, -1]].to_string(float_format="{:.4g}".format))
    print(f"logged to {trainer.logger.log_dir if trainer.logger else '-'}")
    return df


if __name__ == "__main__":
    main()
