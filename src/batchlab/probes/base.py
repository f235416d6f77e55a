"""The probe vocabulary: records, the context a probe runs in, and the `Probe` base class.

A probe is a small measurement that declares what it needs (`needs`), how expensive it is (`tier`)
and when it runs (`schedule`). The suite calls its hooks; a hook returns flat `ProbeRecord`s, one
number each, so a store can keep them as rows (trial_id, step, probe, key, value) and a DataFrame
can be made from them without knowing which probe wrote them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from batchlab.probes.schedule import Schedule

if TYPE_CHECKING:  # no torch at import: the store reads `ProbeRecord`s without it
    import pandas as pd
    import torch
    from torch import nn

    from batchlab.batch import Inputs

    LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
else:
    LossFn = Callable[[Any, Any], Any]
"""`loss_fn(logits, targets) -> scalar mean loss`, e.g. `torch.nn.functional.cross_entropy`."""

Tier = Literal["cheap", "standard", "full"]
TIERS: tuple[Tier, ...] = ("cheap", "standard", "full")

Need = Literal["grads", "data"]
"""`grads`: the training step's own gradients in `p.grad` (read in `after_backward`).
`data`: draws its own batches from `ctx.x_train, ctx.y_train` with `ctx.generator`."""


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One measured number: `probe`'s value for `key` after optimizer update `step` (0 = init).

    Keys are probe-specific but follow one grammar: `total` (the whole model), `layer:<name>` (one
    parameter tensor, named as in `model.named_parameters()`), optionally behind a quantity prefix
    such as `g2/layer:fc.weight`, or `B=32/bin=17` for histograms (see docs/probes.md).
    """

    step: int
    probe: str
    key: str
    value: float

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_row(self) -> tuple[int, str, str, float]:
        return (self.step, self.probe, self.key, self.value)


def records_to_dataframe(records: Iterable[ProbeRecord]) -> pd.DataFrame:
    """A long-format DataFrame with columns step, probe, key, value (one row per record)."""
    import pandas as pd  # imported here: the engine path never needs pandas

    rows = [r.as_row() for r in records]
    df = pd.DataFrame(rows, columns=ProbeRecord.columns())
    return df.astype({"step": "int64", "probe": "object", "key": "object", "value": "float64"})


@dataclass(frozen=True, kw_only=True)
class ProbeContext:
    """What a probe may look at: the model, the loss, the training data and its own RNG.

    `x_train, y_train` are the full training tensors (on the model's device; `x_train` may be a
    dict of tensors, a dict batch: read it with `batchlab.batch`'s helpers); `batch_size` is the
    trial's batch size; `step` is the number of the optimizer update being made (0 before
    training). `generator` is a CPU `torch.Generator` owned by the probes (see `probe_generator`),
    so probing never consumes the training shuffle stream.
    """

    model: nn.Module
    loss_fn: LossFn
    x_train: Inputs  # a tensor, or a dict of tensors (a dict batch)
    y_train: torch.Tensor
    step: int
    batch_size: int
    generator: torch.Generator

    def at(self, step: int) -> ProbeContext:
        """The same context at another step (a cheap copy; the tensors are shared)."""
        return replace(self, step=step)


def probe_generator(seed: int) -> torch.Generator:
    """The probes' own CPU generator for a trial seed, on a stream apart from the shuffle's."""
    import torch

    # Offset by a fixed odd constant so seed s never reproduces the training shuffle of seed s.
    return torch.Generator().manual_seed((seed + 0x9E3779B97F4A7C15) % (2**63))


class Probe:
    """Base class: override the hooks you need; each returns the records it measured.

    The suite calls `after_backward` / `after_update` only at steps where `schedule.due(step)`,
    `start` once before training and `finish` once after it. Hooks must leave the model as they
    found it: parameters, buffers, `p.grad`, train/eval mode and the global RNG (see
    `batchlab.probes._util.isolated`).
    """

    name: ClassVar[str]
    tier: ClassVar[Tier]
    needs: ClassVar[frozenset[Need]] = frozenset()

    def __init__(self, *, schedule: Schedule) -> None:
        self.schedule = schedule

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        """The schedule the presets use for this probe on a trial of `total_steps` updates."""
        raise NotImplementedError

    def start(self, ctx: ProbeContext) -> list[ProbeRecord]:
        """Before the first update (ctx.step == 0)."""
        return []

    def after_backward(self, ctx: ProbeContext) -> list[ProbeRecord]:
        """Training gradients are in `p.grad`; the parameters are still the pre-update ones."""
        return []

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        """Right after `optimizer.step()` for update `ctx.step`."""
        return []

    def finish(self, ctx: ProbeContext) -> list[ProbeRecord]:
        """After the last update (ctx.step is the final step)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r})"
