"""Synthetic studies with known numbers: FrozenTrials built directly, no training, no store.

A uniquely named module (not conftest) so `from report_factories import ...` cannot pick up
another directory's conftest.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from batchlab.trial import EvalRecord, FrozenTrial, TrialState

N_TRAIN = 1024


@dataclass(frozen=True)
class FakeBudget:
    kind: str = "epochs"
    value: float = 4.0


@dataclass(frozen=True)
class FakeSpec:
    budget: FakeBudget = field(default_factory=FakeBudget)
    lr_scaling: str = "none"
    reference_batch_size: int = 32
    dataset: str = "fashion-mnist"
    model: str = "mlp"
    optimizer: str = "sgd"


@dataclass
class FakeStudy:
    name: str
    spec: FakeSpec
    trials: list[FrozenTrial]


def record(
    *,
    idx: int,
    step: int,
    test_acc: float,
    epoch: float = 0.0,
    samples: int = 0,
    train_acc: float = math.nan,
    train_loss: float = math.nan,
    test_loss: float = 1.0,
    full_train_acc: float = math.nan,
    full_train_loss: float = math.nan,
    train_time_s: float = 0.0,
    samples_per_s: float = math.nan,
    peak_mem_bytes: int = 0,
    val_acc: float | None = None,
) -> EvalRecord:
    """An evaluation; the validation score is the test score unless `val_acc` is given (NaN: a
    study with no validation split)."""
    return EvalRecord(
        idx=idx,
        epoch=epoch,
        step=step,
        samples=samples,
        current_lr=0.1,
        train_loss=train_loss,
        train_acc=train_acc,
        val_loss=test_loss,
        val_acc=test_acc if val_acc is None else val_acc,
        test_loss=test_loss,
        test_acc=test_acc,
        full_train_loss=full_train_loss,
        full_train_acc=full_train_acc,
        train_time_s=train_time_s,
        eval_time_s=0.01,
        samples_per_s=samples_per_s,
        peak_mem_bytes=peak_mem_bytes,
    )


def trial(
    *,
    study: str = "s",
    number: int = 0,
    batch_size: int = 32,
    lr_base: float = 0.1,
    seed: int = 0,
    state: TrialState = TrialState.COMPLETE,
    evals: Sequence[EvalRecord] = (),
    error: str | None = None,
    diverged_step: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> FrozenTrial:
    """A trial; `params` adds to (or overrides) the resolved spec, e.g. variant or control."""
    return FrozenTrial(
        trial_id=f"{study}-{number}",
        study=study,
        number=number,
        batch_size=batch_size,
        lr_base=lr_base,
        lr=lr_base,
        seed=seed,
        state=state,
        params={"optimizer": "sgd", "dataset": "fashion-mnist", "model": "mlp", **(params or {})},
        evals=tuple(evals),
        error=error,
        diverged_step=diverged_step,
    )


def final_only(
    *, test_acc: float, step: int = 100, train_time_s: float = 1.0, **kw: float
) -> list[EvalRecord]:
    """A step-0 evaluation and one final evaluation with the given numbers."""
    return [
        record(idx=0, step=0, test_acc=0.1),
        record(idx=1, step=step, test_acc=test_acc, train_time_s=train_time_s, **kw),  # type: ignore[arg-type]
    ]


def curve(
    batch_size: int,
    final_acc: float,
    *,
    epochs: int = 4,
    seed: int = 0,
    final_val: float | None = None,
) -> list[EvalRecord]:
    """An epoch-budget run: one evaluation per epoch, smaller batches more updates and slower.

    The validation score follows the test score, or rises the same way to `final_val` when given
    (NaN: no validation split)."""
    per_epoch = math.ceil(N_TRAIN / batch_size)
    speed = 4000.0 * batch_size / (batch_size + 64)  # samples/s, saturating with batch size
    out = []
    for e in range(epochs + 1):
        frac = (1 - math.exp(-1.5 * e)) / (1 - math.exp(-1.5 * epochs))
        acc = 0.1 + (final_acc - 0.1) * frac + 0.002 * seed
        val = None if final_val is None else 0.1 + (final_val - 0.1) * frac + 0.002 * seed
        last = e in (0, epochs)
        out.append(
            record(
                idx=e,
                epoch=float(e),
                step=e * per_epoch,
                samples=e * N_TRAIN,
                test_acc=acc,
                test_loss=-math.log(acc),
                train_acc=math.nan if e == 0 else min(1.0, acc + 0.03),
                train_loss=math.nan if e == 0 else -math.log(min(1.0, acc + 0.03)),
                full_train_acc=min(1.0, acc + 0.02) if last else math.nan,
                full_train_loss=-math.log(min(1.0, acc + 0.02)) if last else math.nan,
                train_time_s=e * N_TRAIN / speed,
                samples_per_s=math.nan if e == 0 else speed,
                peak_mem_bytes=50_000_000 + 20_000 * batch_size,
                val_acc=val,
            )
        )
    return out


def grid_study(
    name: str = "grid",
    *,
    batch_sizes: Sequence[int] = (8, 16, 32, 64, 128, 256),
    lr_bases: Sequence[float] = (0.1,),
    seeds: Sequence[int] = (0, 1),
    acc: Callable[[int, float], float] = lambda b, lr: 0.9 - 0.02 * abs(math.log2(b / 32)),
    diverged: Callable[[int, float], bool] = lambda b, lr: False,
    spec: FakeSpec | None = None,
    val: Callable[[int, float], float] | None = None,
) -> FakeStudy:
    """A full grid whose final accuracy is `acc(b, lr)` (seed s adds 0.002 s); its final
    validation score is `val(b, lr)` when given (NaN: no validation split), else the same."""
    trials: list[FrozenTrial] = []
    for lr in lr_bases:
        for b in batch_sizes:
            for s in seeds:
                if diverged(b, lr):
                    t = trial(
                        study=name,
                        number=len(trials),
                        batch_size=b,
                        lr_base=lr,
                        seed=s,
                        state=TrialState.DIVERGED,
                        evals=curve(b, 0.1)[:2],
                        diverged_step=7,
                    )
                else:
                    t = trial(
                        study=name,
                        number=len(trials),
                        batch_size=b,
                        lr_base=lr,
                        seed=s,
                        evals=curve(
                            b, acc(b, lr), seed=s, final_val=None if val is None else val(b, lr)
                        ),
                    )
                trials.append(t)
    return FakeStudy(name=name, spec=spec or FakeSpec(), trials=trials)


@functools.cache
def rich_study() -> FakeStudy:
    """Two learning rates, six batch sizes, two seeds; lr 1.0 diverges at b <= 16.

    Cached: every test reads the same immutable trials (do not mutate the result).
    """
    return grid_study(
        "rich",
        lr_bases=(0.1, 1.0),
        acc=lambda b, lr: 0.9 - 0.02 * abs(math.log2(b / 32)) - (0.03 if lr == 1.0 else 0.0),
        diverged=lambda b, lr: lr == 1.0 and b <= 16,
    )


# ---- probe records ------------------------------------------------------------------------------

ProbeRow = tuple[str, int, str, str, float]  # trial_id, step, probe, key, value
PROBE_COLUMNS = ["trial_id", "step", "probe", "key", "value"]


@dataclass
class FakeProbeStudy(FakeStudy):
    """A FakeStudy that is also a ProbeSource: its probe records as a long DataFrame."""

    rows: list[ProbeRow] = field(default_factory=list)

    def probes_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=PROBE_COLUMNS)


def probe_rows(
    t: FrozenTrial, probe: str, values: Mapping[str, float], step: int
) -> list[ProbeRow]:
    """One probe's records of a trial at one step."""
    return [(t.trial_id, step, probe, k, float(v)) for k, v in values.items()]


def histogram_rows(
    t: FrozenTrial,
    *,
    step: int,
    edges: Sequence[float],
    counts: Mapping[int, Sequence[float]],
    variance: Mapping[int, float],
    under: float = 0.0,
    over: float = 0.0,
) -> list[ProbeRow]:
    """grad_histograms records in the probe's flat key grammar."""
    values: dict[str, float] = {f"edge={i}": e for i, e in enumerate(edges)}
    for b, cs in counts.items():
        values.update({f"B={b}/bin={i}": c for i, c in enumerate(cs)})
        values.update({f"B={b}/under": under, f"B={b}/over": over})
        values[f"B={b}/variance"] = variance[b]
        values[f"B={b}/variance/layer:0.weight"] = variance[b]
    return probe_rows(t, "grad_histograms", values, step)
