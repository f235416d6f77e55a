"""`BatchlabCallback`: batchlab's probes in any `LightningModule` training, logged to the loggers.

    probes = BatchlabCallback(["noise_scale", "grad_norms", "distance"], data=(x, y))
    trainer = L.Trainer(callbacks=[probes], logger=CSVLogger("logs"))
    trainer.fit(model, loader)

It drives a `batchlab.probes.Monitor` from Lightning's hooks: the monitor is created when
training starts (it keeps w_0) and steps after every optimizer update, while the update's
gradients are still in `p.grad` (Lightning zeroes them before the next batch's forward pass).
The model's `forward` must return the logits that `loss_fn(logits, targets)` scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from batchlab.probes import LossFn, Monitor, ProbeRecord, records_to_dataframe

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        "batchlab.integrations.lightning needs Lightning: pip install 'batchlab[lightning]'"
    ) from None

if TYPE_CHECKING:
    import pandas as pd

Batch = tuple[torch.Tensor, torch.Tensor]


def inputs_and_targets(batch: Any) -> Batch:
    """The default batch reader: a `(x, y)` tuple or list, as a TensorDataset's loader yields."""
    if isinstance(batch, Sequence) and len(batch) == 2:
        x, y = batch
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x, y
    raise TypeError(
        "BatchlabCallback: batches are not (inputs, targets) tensor pairs;"
        " pass batch_fn=... that returns them"
    )


class BatchlabCallback(pl.Callback):
    """Runs batchlab probes during `trainer.fit` and logs every value to `trainer.loggers`.

    `probes`: a preset ("cheap", "standard", "full") or probe names, as in a study spec.
    `data`: the pool data-hungry probes (noise scale, Hessian, ...) draw from, usually the
    training tensors. Without it the noise scale is estimated from consecutive training
    batches (see `Monitor`: the 4 updates before each due step form the big batch, each one a
    small batch), and the other data-hungry probes draw from the current batch. `every`:
    measure every k updates (default: each probe's own schedule over the planned number of
    updates).
    `batch_fn` turns a training batch into `(inputs, targets)`.

    Values are logged as `{prefix}{probe}/{key}` (`batchlab/noise_scale/total`, the names of
    `batchlab export --probes` behind a prefix) at the optimizer update they were measured
    after, with `logger.log_metrics(..., step=)`. Not through `pl_module.log`: that keeps only
    steps that are multiples of `log_every_n_steps`, while probe schedules are log-spaced.
    NaN values (no estimate at that step) are not logged. Every record is also kept:
    `callback.records`, `callback.to_dataframe()`.
    """

    def __init__(
        self,
        probes: str | Sequence[str] = "cheap",
        *,
        loss_fn: LossFn = F.cross_entropy,
        data: Batch | None = None,
        every: int | None = None,
        seed: int = 0,
        prefix: str = "batchlab/",
        batch_fn: Callable[[Any], Batch] = inputs_and_targets,
    ) -> None:
        self.probes = probes
        self.loss_fn = loss_fn
        self.data = data
        self.every = every
        self.seed = seed
        self.prefix = prefix
        self.batch_fn = batch_fn
        self.monitor: Monitor | None = None
        self.records: list[ProbeRecord] = []
        self._offset = 0  # global_step when this fit started (a resumed fit goes on counting)
        self._last_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "BatchlabCallback: accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches} is not supported (probes read one batch's"
                " gradient per update); use accumulate_grad_batches=1"
            )
        data = self.data
        if data is not None:
            data = (data[0].to(pl_module.device), data[1].to(pl_module.device))
        planned = trainer.estimated_stepping_batches
        total = int(planned) - trainer.global_step if math.isfinite(planned) else None
        self._offset = self._last_step = trainer.global_step
        self.monitor = Monitor(
            pl_module,
            self.loss_fn,
            probes=self.probes,
            data=data,
            every=self.every,
            total_steps=total,
            seed=self.seed,
        )
        self._log(trainer, self.monitor.records)  # step 0: distance 0, the initial weights

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.monitor is None or trainer.global_step == self._last_step:
            return  # no optimizer update on this batch (skipped step)
        self._last_step = trainer.global_step
        self._log(trainer, self.monitor.step(self.batch_fn(batch)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self._log(trainer, self.monitor.finish())

    def _log(self, trainer: pl.Trainer, records: Sequence[ProbeRecord]) -> None:
        shifted = [ProbeRecord(r.step + self._offset, r.probe, r.key, r.value) for r in records]
        self.records += shifted
        by_step: dict[int, dict[str, float]] = {}
        for r in shifted:
            if not math.isnan(r.value):  # NaN: no estimate at this step (kept in `records`)
                by_step.setdefault(r.step, {})[f"{self.prefix}{r.probe}/{r.key}"] = r.value
        for step, metrics in sorted(by_step.items()):
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def to_dataframe(self) -> pd.DataFrame:
        """Every record so far: columns step, probe, key, value (step = optimizer updates)."""
        return records_to_dataframe(self.records)
