"""`Monitor`: batchlab's probes in your own training loop, no study or engine needed.

    monitor = Monitor(model, F.cross_entropy, probes=["noise_scale", "grad_norms"], data=(x, y))
    for xb, yb in batches:
        opt.zero_grad(); F.cross_entropy(model(xb), yb).backward(); opt.step()
        monitor.step((xb, yb))
    monitor.finish()
    df = monitor.to_dataframe()        # columns step, probe, key, value

It replays the engine's hook order for each due step: the training gradients are the ones left
in `p.grad` by your backward pass (recomputed on the batch at the pre-update weights when `p.grad`
is None), and the pre-update weights come from a copy the monitor takes one step ahead, only
before due steps.

Without `data=`, the noise scale is measured from the loop's own consecutive batches
(`RunningNoiseScale`): a probe drawing its batches from the current batch alone would measure
that batch's noise, about B_simple / (1 + B_simple / b), never much above the batch size b.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from batchlab.probes._util import batch_grads, isolated, trainable
from batchlab.probes.base import LossFn, ProbeContext, ProbeRecord, probe_generator
from batchlab.probes.base import records_to_dataframe as _to_df
from batchlab.probes.noise_scale import NoiseScale
from batchlab.probes.running_noise import RunningNoiseScale
from batchlab.probes.suite import ProbeSuite

if TYPE_CHECKING:
    import pandas as pd


class Monitor:
    """Runs probes after each `optimizer.step()` of a user's loop and collects their records.

    Create it before training: it keeps the initial weights (distance from init, step 0).

    `probes` is a preset ("cheap", "standard", "full") or a list of probe names. `data` is the
    pool that data-hungry probes (noise scale, Hessian, sharpness, histograms) draw from.
    Without it, the noise scale comes from the loop's own batches: the gradients of the `draws`
    (4) consecutive updates before each due step are one big batch, each of them a small one
    (the two-batch estimator of McCandlish et al., App. A; see `RunningNoiseScale`), so it
    estimates the data's B_simple, not one batch's; the other data-hungry probes draw from the
    current batch, which then stands in for the training set. `every` measures every k steps
    (default: each probe's own schedule over `total_steps`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        probes: str | Sequence[str] = "cheap",
        data: tuple[torch.Tensor, torch.Tensor] | None = None,
        every: int | None = None,
        total_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.suite = ProbeSuite.from_spec(probes, total_steps=total_steps, every=every)
        self.running: RunningNoiseScale | None = None
        if data is None:  # the loop's own consecutive batches replace the probe's own draws
            noise = [p for p in self.suite.probes if isinstance(p, NoiseScale)]
            if noise:
                self.running = RunningNoiseScale(
                    schedule=noise[0].schedule,
                    names=[n for n, _ in trainable(model)],
                    batches=noise[0].draws,
                    beta=noise[0].beta,
                )
                self.suite = ProbeSuite(
                    probes=[p for p in self.suite.probes if not isinstance(p, NoiseScale)]
                )
        self._extra: list[ProbeRecord] = []
        self.generator = probe_generator(seed)
        self.records: list[ProbeRecord] = []
        self._step = 0
        self._before: list[torch.Tensor] | None = None
        # Step 0 is now: the monitor must be created before the first update (w_0 is kept).
        x0, y0 = data if data is not None else (torch.empty(0), torch.empty(0))
        self._last_ctx = self._ctx(x0, y0, 0)
        self.suite.start(self._last_ctx)
        self._collect()
        self._snapshot_if_due(1)

    def _ctx(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> ProbeContext:
        return ProbeContext(
            model=self.model,
            loss_fn=self.loss_fn,
            x_train=x,
            y_train=y,
            step=self._step,
            batch_size=batch_size,
            generator=self.generator,
        )

    def _watched(self, step: int) -> bool:
        """Whether update `step` needs the pre-update weights: a probe is due, or the running
        noise estimator reads its gradient."""
        return self.suite.due(step) or (self.running is not None and self.running.wants(step))

    def _snapshot_if_due(self, step: int) -> None:
        due = self._watched(step)
        self._before = [p.detach().clone() for _, p in trainable(self.model)] if due else None

    def _swap(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Put `values` into the parameters in place; return what was there."""
        current = []
        with torch.no_grad():
            for (_, p), v in zip(trainable(self.model), values, strict=True):
                current.append(p.detach().clone())
                p.copy_(v)
        return current

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> list[ProbeRecord]:
        """Call right after `optimizer.step()` with the batch it trained on; returns new records.

        Call it before the next `zero_grad`: the gradients in `p.grad` are read as the step's.
        """
        xb, yb = batch
        self._step += 1
        x, y = self.data if self.data is not None else (xb, yb)
        ctx = self._ctx(x, y, xb.shape[0])
        due = self.suite.due(self._step)
        if self._watched(self._step) and self._before is not None:
            params = [p for _, p in trainable(self.model)]
            after = self._swap(self._before)  # back to w_{t-1} for the after_backward hook
            installed = False
            try:
                if all(p.grad is None for p in params):  # zeroed with set_to_none: recompute
                    with isolated(self.model, train=True):
                        grads = batch_grads(self.model, self.loss_fn, xb, yb, params)
                    for p, g in zip(params, grads, strict=True):
                        p.grad = g
                    installed = True
                if self.running is not None and self.running.wants(self._step):
                    step_grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
                    self.running.observe(self._step, step_grads, xb.shape[0])
                if due:
                    self.suite.after_backward(ctx)
            finally:
                if installed:
                    for p in params:
                        p.grad = None
                self._swap(after)
            if due:
                self.suite.after_update(ctx)
        if self.running is not None and self.running.schedule.due(self._step):
            self._extra += self.running.records(self._step)
        self._last_ctx = ctx
        self._snapshot_if_due(self._step + 1)
        return self._collect()

    def finish(self) -> list[ProbeRecord]:
        """Run the end-of-training probes (Hessian, sharpness, histograms) at the current step."""
        self.suite.finish(self._last_ctx)
        return self._collect()

    def _collect(self) -> list[ProbeRecord]:
        new, self._extra = self.suite.drain() + self._extra, []
        self.records += new
        return new

    def to_dataframe(self) -> pd.DataFrame:
        """All records so far: columns step, probe, key, value."""
        return _to_df(self.records)
