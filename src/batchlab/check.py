"""`batchlab check`: is the study's large batch the batch it means?

On the study's own model, task and data, at the initial weights and after a few updates, the
gradient of one batch of B is compared with

- k micro-batches of B/k accumulated by the engine's own `step.backward_batch` (each weighted by
  its share of the batch's units: examples, or tokens for a language model), for the study's
  `accumulate` and k = 2, 4; and
- a simulated data-parallel split into W shards (W = 2, 4): each shard's mean-loss gradient,
  averaged equally over shards as DDP's all-reduce averages them.

A comparison is the relative difference ||g - g_batch|| / ||g_batch||, over all parameters and
per parameter tensor, against a tolerance of `TOLERANCE_EPS` machine epsilons of the parameters'
dtype (TF32 is switched off for the check, so float32 means float32).

What breaks equivalence is named: batch statistics (BatchNorm: micro-batches are ghost batches),
a loss that is not a mean over the task's unit (a sum, a per-micro-batch mean, a token mean whose
`units` count examples), randomness (dropout modules are put in eval mode for the comparison: the
same masks, none), modules left in eval mode during training. Accumulation decides the verdict
(it is what the study trains with); the data-parallel comparison is reported beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from batchlab import batch
from batchlab.batch import Inputs
from batchlab.data import Dataset
from batchlab.engine import build_model_for
from batchlab.errors import SpecError
from batchlab.models import GhostBatchNorm
from batchlab.prepared import PreparedStudy, prepare
from batchlab.spec import StudySpec, load_spec
from batchlab.step import backward_batch
from batchlab.tasks import Task

TOLERANCE_EPS = 1024
"""The tolerance in machine epsilons of the parameters' dtype: 1.2e-4 relative for float32.
Summing k micro-batches instead of one batch reorders float additions: on the built-in MLP that
moves gradients by 0.5..5 eps, on a small CNN with ghost BatchNorm at B = 256 by 140 eps (a conv
weight's gradient sums B x H x W terms, so it grows like their square root); every real mismatch
seen (batch statistics, a summed or per-micro-batch loss) is above 1e-3."""
MAX_TOLERANCE = 0.05
"""Low precision (bf16's eps is 7.8e-3) caps the tolerance here: coarser than this is no check."""
DEFAULT_FACTORS = (2, 4)
DEFAULT_WORKERS = (2, 4)
DEFAULT_STEPS = 2
Verdict = Literal["equivalent", "equivalent to tolerance", "not equivalent", "not checked"]


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """One batch's gradient against k micro-batches ("accumulate") or W shards ("data-parallel")."""

    variant: str
    batch_size: int
    kind: Literal["accumulate", "data-parallel"]
    factor: int
    at: str  # "initial weights" or "after N steps"
    relative: float  # over all parameters
    per_tensor: dict[str, float]
    units: tuple[float, ...]  # the task's units (examples, tokens) in each micro-batch or shard

    @property
    def worst_tensor(self) -> tuple[str, float]:
        return max(self.per_tensor.items(), key=lambda kv: _key(kv[1]), default=("-", 0.0))


@dataclass(frozen=True, kw_only=True)
class Finding:
    """Something that breaks (or could break) equivalence, by name, with what to change."""

    variant: str
    name: str  # batch-statistics, loss-sum, loss-unit, loss-per-batch, micro-loss, randomness,
    # unfixed-randomness, eval-mode, batch-dependence, data-parallel-weighting
    message: str
    fix: str = ""
    modules: tuple[str, ...] = ()
    breaks: bool = True  # whether it breaks accumulation's equivalence (else: a note)


@dataclass(frozen=True, kw_only=True)
class BatchVerdict:
    """The verdict at one batch size: accumulation decides it; data parallelism is reported."""

    variant: str
    batch_size: int
    verdict: Verdict
    worst: float  # the largest accumulation difference
    data_parallel: Verdict
    data_parallel_worst: float
    why: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.verdict != "not equivalent"


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """The check of one study: a verdict per (variant,) batch size, the comparisons behind it,
    and the findings that explain a mismatch."""

    study: str
    dtype: str
    device: str
    eps: float
    tolerance: float
    factors: tuple[int, ...]
    workers: tuple[int, ...]
    steps: int
    verdicts: tuple[BatchVerdict, ...]
    comparisons: tuple[Comparison, ...] = ()
    findings: tuple[Finding, ...] = ()
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """Every checked batch size is equivalent (bit for bit or to tolerance)."""
        return all(v.ok for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    @property
    def verdict(self) -> Verdict:
        """The worst verdict over the batch sizes checked."""
        order: list[Verdict] = [
            "not equivalent",
            "equivalent to tolerance",
            "equivalent",
            "not checked",
        ]
        return next((o for o in order if any(v.verdict == o for v in self.verdicts)), "not checked")

    def lines(self) -> list[str]:
        """One screen: the tolerance, a line per batch size, the findings, the verdict."""
        variants = len({v.variant for v in self.verdicts}) > 1
        out = [
            f"batchlab check: study {self.study} ({self.dtype} on {self.device}),"
            f" at the initial weights{f' and after {self.steps} steps' if self.steps else ''}",
            f"tolerance: relative gradient difference <= {self.tolerance:.2g}"
            f" ({TOLERANCE_EPS} x {self.dtype} eps {self.eps:.2g});"
            f" accumulation k = {', '.join(map(str, self.factors))},"
            f" data-parallel W = {', '.join(map(str, self.workers)) or 'none'}",
        ]
        for v in self.verdicts:
            label = f"[{v.variant}] " if variants and v.variant else ""
            acc = self._worst_text(v, "accumulate")
            ddp = self._worst_text(v, "data-parallel")
            out.append(
                f"  {label}B={v.batch_size}: {v.verdict}"
                + (f" ({acc})" if acc else "")
                + (f"; data-parallel {v.data_parallel} ({ddp})" if ddp else "")
            )
            out += [f"      why: {w}" for w in v.why]
        for f in self.findings:
            label = f"[{f.variant}] " if variants and f.variant else ""
            out.append(f"  {'found' if f.breaks else 'note'}: {label}{f.message}")
            if f.fix:
                out.append(f"      fix: {f.fix}")
        out += [f"  note: {n}" for n in self.notes]
        bad = [v for v in self.verdicts if not v.ok]
        if bad:
            sizes = ", ".join(
                f"{v.variant}/{v.batch_size}" if variants and v.variant else str(v.batch_size)
                for v in bad
            )
            out.append(f"verdict: not equivalent at B = {sizes} (exit 1)")
        else:
            out.append(f"verdict: {self.verdict} at every batch size (exit 0)")
        return out

    def _worst_text(self, v: BatchVerdict, kind: str) -> str:
        parts = []
        for factor in sorted({c.factor for c in self.comparisons if c.kind == kind}):
            cs = [
                c
                for c in self.comparisons
                if c.kind == kind
                and c.factor == factor
                and c.batch_size == v.batch_size
                and c.variant == v.variant
            ]
            if cs:
                worst = max(cs, key=lambda c: _key(c.relative))
                parts.append(
                    f"{'k' if kind == 'accumulate' else 'W'}={factor}: {worst.relative:.2g}"
                )
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "ok": self.ok,
            "verdict": self.verdict,
            "dtype": self.dtype,
            "device": self.device,
            "eps": self.eps,
            "tolerance": self.tolerance,
            "factors": list(self.factors),
            "workers": list(self.workers),
            "steps": self.steps,
            "seconds": self.seconds,
            "verdicts": [asdict(v) for v in self.verdicts],
            "findings": [asdict(f) for f in self.findings],
            "comparisons": [asdict(c) for c in self.comparisons],
            "notes": list(self.notes),
        }

    def summary(self) -> dict[str, Any]:
        """What is stored with the study (small): the verdict per batch size and the findings."""
        return {
            "ok": self.ok,
            "verdict": self.verdict,
            "tolerance": self.tolerance,
            "factors": list(self.factors),
            "not_equivalent": [
                {"variant": v.variant, "batch_size": v.batch_size, "worst": v.worst}
                for v in self.verdicts
                if not v.ok
            ],
            "findings": [f.message for f in self.findings if f.breaks],
        }


def _key(v: float) -> float:
    return math.inf if math.isnan(v) else v


# ---- running the check ------------------------------------------------------------------------


def check(
    spec: StudySpec | str | Path | dict[str, Any],
    *,
    data_dir: Path | None = None,
    overrides: Sequence[str] = (),
    factors: Sequence[int] | None = None,
    workers: Sequence[int] = DEFAULT_WORKERS,
    steps: int = DEFAULT_STEPS,
) -> CheckResult:
    """Check a study's batches (see the module docstring); bad input raises a one-line error.

    `factors`: accumulation factors besides the study's own `accumulate` (default 2, 4);
    `workers`: data-parallel shard counts; `steps`: updates before the second comparison.
    """
    if isinstance(spec, str | Path):
        spec = load_spec(Path(spec), overrides=list(overrides))
    elif isinstance(spec, dict):
        spec = load_spec(base=spec, overrides=list(overrides))
    elif overrides:
        spec = load_spec(base=spec.to_toml_dict(), overrides=list(overrides))
    for name, values in (("factors", factors or ()), ("workers", workers)):
        if any(int(v) < 1 for v in values):
            raise SpecError(f"check: {name} must be positive integers, got {list(values)}")
    if steps < 0:
        raise SpecError(f"check: steps must be >= 0, got {steps}")
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    return check_prepared(
        prepare(spec, data_dir=data_dir), factors=factors, workers=workers, steps=steps
    )


def check_prepared(
    prepared: PreparedStudy,
    *,
    factors: Sequence[int] | None = None,
    workers: Sequence[int] = DEFAULT_WORKERS,
    steps: int = DEFAULT_STEPS,
) -> CheckResult:
    """The check of a study whose data is loaded and on its device (`run_study` calls this)."""
    t0 = time.perf_counter()
    spec, data, device = prepared.spec, prepared.data, prepared.device
    base = tuple(DEFAULT_FACTORS if factors is None else factors)
    ks = sorted({int(k) for k in base} | {v.accumulate for _, v in spec.resolved_variants()} - {1})
    ws = tuple(sorted({int(w) for w in workers} - {1}))
    out: list[_VariantCheck] = []
    with _forked_rng(device), _exact_matmuls():
        for label, variant in spec.resolved_variants():
            vc = _VariantCheck(label, variant, data, device)
            vc.run(ks, ws, steps)
            out.append(vc)
    dtype = out[0].dtype
    eps = float(torch.finfo(dtype).eps)
    return CheckResult(
        study=spec.name,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        eps=eps,
        tolerance=tolerance(dtype),
        factors=tuple(ks),
        workers=ws,
        steps=steps,
        verdicts=tuple(v for vc in out for v in vc.verdicts()),
        comparisons=tuple(c for vc in out for c in vc.comparisons),
        findings=tuple(f for vc in out for f in vc.findings),
        seconds=time.perf_counter() - t0,
        notes=tuple(n for vc in out for n in vc.notes),
    )


def tolerance(dtype: torch.dtype) -> float:
    """The relative difference float rounding may explain: TOLERANCE_EPS eps, capped."""
    return min(TOLERANCE_EPS * float(torch.finfo(dtype).eps), MAX_TOLERANCE)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """The check leaves the global RNG as it found it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


@contextmanager
def _exact_matmuls() -> Iterator[None]:
    """TF32 off for the check (CUDA's convolutions use it by default): float32 is float32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ---- one variant: its model, the comparisons and what explains them ----------------------------

Grads = list[torch.Tensor]


def relative(a: Grads, ref: Grads) -> tuple[float, list[float]]:
    """||a - ref|| / ||ref|| over all tensors and per tensor (one host sync). In float32 at
    least: the difference of two nearby floats is exact, and its norm needs no more."""
    diff = [(_f32(x) - _f32(r)).norm() for x, r in zip(a, ref, strict=True)]
    size = [_f32(r).norm() for r in ref]
    values = torch.stack([*diff, *size]).tolist() if diff else []
    d, s = values[: len(diff)], values[len(diff) :]
    total_d, total_s = math.sqrt(sum(v * v for v in d)), math.sqrt(sum(v * v for v in s))

    def ratio(num: float, den: float) -> float:
        if den == 0:
            return 0.0 if num == 0 else math.inf
        return num / den

    return ratio(total_d, total_s), [ratio(x, y) for x, y in zip(d, s, strict=True)]


_DROPOUT = nn.modules.dropout._DropoutNd
_BATCH_STATS = nn.modules.batchnorm._BatchNorm


class _VariantCheck:
    """The comparisons and findings of one variant of a study (its own model)."""

    def __init__(self, label: str, spec: StudySpec, data: Dataset, device: torch.device) -> None:
        self.label, self.spec, self.data, self.device = label, spec, data, device
        self.task: Task = data.task
        self.model = build_model_for(spec, data, seed=spec.seeds[0]).to(device)
        self.model.train()  # as the engine trains
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.params: list[torch.Tensor] = [p for p in self.model.parameters() if p.requires_grad]
        floats = [p.dtype for p in self.params if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32
        self.tol = tolerance(self.dtype)
        self.comparisons: list[Comparison] = []
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.skipped: dict[int, str] = {}
        g = torch.Generator().manual_seed(spec.seeds[0])
        self.order = torch.randperm(data.n_train, generator=g)
        self.sizes = sorted({b for b in spec.batch_sizes if b <= data.n_train})

    # -- gradients ------------------------------------------------------------------------------

    def grads(self, fn: Callable[[], object]) -> Grads:
        for p in self.params:
            p.grad = None
        fn()
        return [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in self.params
        ]

    def batch_grads(self, x: Inputs, y: torch.Tensor, micro: int | None = None) -> Grads:
        """The engine's gradient of a batch, in micro-batches of `micro` rows when given."""
        return self.grads(lambda: backward_batch(self.model, self.task, x, y, micro=micro))

    def shard_grads(self, x: Inputs, y: torch.Tensor, w: int) -> tuple[Grads, list[float]]:
        """DDP: each of `w` shards takes its own batch gradient; the all-reduce averages them."""
        size = int(y.shape[0]) // w
        total: Grads | None = None
        units = []
        for xs, ys in zip(batch.split(x, size), torch.split(y, size), strict=True):
            g = self.batch_grads(xs, ys)
            total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
            units.append(float(self.task.units(ys)))
        assert total is not None
        return [t / w for t in total], units

    def mean_loss_grads(self, x: Inputs, y: torch.Tensor) -> Grads:
        def backward() -> None:
            loss = self.task.mean_loss(self.task.forward(self.model, x), y)
            loss.backward()  # type: ignore[no-untyped-call]

        return self.grads(backward)

    def rows(self, b: int, start: int = 0) -> tuple[Inputs, torch.Tensor]:
        return next(iter(self.data.train.batches(self.order[start : start + b], b)))

    # -- the check ------------------------------------------------------------------------------

    def run(self, ks: Sequence[int], ws: Sequence[int], steps: int) -> None:
        with self.fixed_randomness():
            self.structure()
            self.compare(ks, ws, at="initial weights")
            self.diagnose_loss()
            if steps and self.sizes:
                if self.train(steps):
                    self.compare(ks, ws, at=f"after {steps} steps")
                else:
                    self.notes.append(
                        f"{self.label or self.spec.name}: the loss is not finite after"
                        f" {steps} steps; compared at the initial weights only"
                    )
        self.explain()

    def compare(self, ks: Sequence[int], ws: Sequence[int], *, at: str) -> None:
        for b in self.sizes:
            if b in self.skipped:
                continue
            x, y = self.rows(b)
            try:
                ref = self.batch_grads(x, y)
            except torch.OutOfMemoryError:
                self.skipped[b] = "one batch of B does not fit in memory"
                continue
            plan: list[tuple[Literal["accumulate", "data-parallel"], int]] = [
                *(("accumulate", k) for k in ks),
                *(("data-parallel", w) for w in ws),
            ]
            for kind, f in plan:
                if b % f or b < f:
                    continue
                if kind == "accumulate":  # the engine's micro-step loop, as it trains
                    g = self.batch_grads(x, y, micro=b // f)
                    units = [float(self.task.units(m)) for m in torch.split(y, b // f)]
                else:
                    g, units = self.shard_grads(x, y, f)
                rel, per = relative(g, ref)
                self.comparisons.append(
                    Comparison(
                        variant=self.label,
                        batch_size=b,
                        kind=kind,
                        factor=f,
                        at=at,
                        relative=rel,
                        per_tensor=dict(zip(self.names, per, strict=True)),
                        units=tuple(units),
                    )
                )

    def train(self, steps: int) -> bool:
        """`steps` updates at the study's first trial's batch size and lr, from the engine's
        gradient: SGD's (p -= lr g) for sgd, Adam's first, bias-corrected update (p -= lr g / |g|)
        for adam and adamw. Not the optimizer itself: building one imports torch's compiler
        (seconds), and the point is only to leave the initial weights. Whether they stay finite."""
        trial = self.spec.trials(n_train=self.data.n_train)[0]
        b = min(trial.batch_size, self.data.n_train)
        for i in range(steps):
            start = (i * b) % max(1, self.data.n_train - b + 1)
            grads = self.batch_grads(*self.rows(b, start))
            if self.spec.optimizer != "sgd":
                grads = [g / (g.abs() + 1e-8) for g in grads]
            with torch.no_grad():
                torch._foreach_add_(self.params, grads, alpha=-trial.lr)
        for p in self.params:
            p.grad = None
        return all(bool(torch.isfinite(p).all()) for p in self.params)

    # -- what explains a difference -------------------------------------------------------------

    @contextmanager
    def fixed_randomness(self) -> Iterator[None]:
        """Dropout modules in eval mode (no masks: the same for a batch and its micro-batches);
        every other module keeps its training mode."""
        drop = [m for m in self.model.modules() if isinstance(m, _DROPOUT) and m.training]
        for m in drop:
            m.eval()
        try:
            yield
        finally:
            for m in drop:
                m.train()

    def structure(self) -> None:
        """Findings read from the model's modules and two forward passes."""
        model, label = self.model, self.label
        named = dict(model.named_modules())
        stats = [
            n
            for n, m in named.items()
            if isinstance(m, _BATCH_STATS) and m.training and not _inside_ghost(n, named)
        ]
        ghosts = [n for n, m in named.items() if isinstance(m, GhostBatchNorm) and m.training]
        drops = [
            n for n, m in named.items() if isinstance(m, _DROPOUT) and float(getattr(m, "p", 0)) > 0
        ]
        frozen = [
            n or "(the model)"
            for n, m in named.items()
            if not m.training and not isinstance(m, _DROPOUT)  # dropout: fixed by the check
        ]
        if stats:
            kinds = sorted({type(named[n]).__name__ for n in stats})
            self.findings.append(
                Finding(
                    variant=label,
                    name="batch-statistics",
                    message=f"batch statistics in {', '.join(stats)} ({', '.join(kinds)}):"
                    " each micro-batch of B/k is normalised with its own mean and variance,"
                    " so micro-batches act as ghost batches of B/k (and each data-parallel"
                    " worker's BatchNorm sees only its B/W examples)",
                    fix=_batch_stats_fix(self.spec),
                    modules=tuple(stats),
                )
            )
        if ghosts:
            sizes = sorted({int(named[n].ghost_batch) for n in ghosts})  # type: ignore[arg-type]
            self.findings.append(
                Finding(
                    variant=label,
                    name="ghost-batch",
                    message=f"ghost BatchNorm in {', '.join(ghosts)} (chunks of"
                    f" {', '.join(map(str, sizes))}): equivalent when B/k is a multiple of the"
                    " ghost batch, not otherwise",
                    modules=tuple(ghosts),
                    breaks=False,
                )
            )
        if drops:
            self.findings.append(
                Finding(
                    variant=label,
                    name="randomness",
                    message=f"dropout in {', '.join(drops)}: randomness, compared with the masks"
                    " fixed (these modules in eval mode, every other module in training mode);"
                    " in training each micro-batch draws its own masks, which is as random as"
                    " one batch's",
                    modules=tuple(drops),
                    breaks=False,
                )
            )
        if frozen:
            self.findings.append(
                Finding(
                    variant=label,
                    name="eval-mode",
                    message=f"modules stay in eval mode while the model trains:"
                    f" {', '.join(frozen[:8])}{' ...' if len(frozen) > 8 else ''}; their"
                    " BatchNorm uses running statistics and their dropout is off",
                    fix="call .train() on them if that is not meant (a train() override, or"
                    " .eval() inside forward)",
                    modules=tuple(frozen),
                    breaks=False,
                )
            )
        if not self.sizes:
            return
        b = self.sizes[-1]
        if b < 2:
            return
        x, _ = self.rows(b)
        with torch.no_grad():
            one = self.task.forward(model, x)
            again = self.task.forward(model, x)  # the RNG has moved on: equal unless random
            halves = torch.cat([self.task.forward(model, part) for part in batch.split(x, b // 2)])
        if _rel_tensor(again, one) > self.tol:
            self.findings.append(
                Finding(
                    variant=label,
                    name="unfixed-randomness",
                    message="the model's forward is random beyond its dropout modules (two"
                    " passes over the same inputs differ): a batch and its micro-batches cannot"
                    " be compared with the same randomness",
                    fix="draw the noise from a module the check knows (nn.Dropout), or make it"
                    " optional so the check can turn it off",
                )
            )
        elif _rel_tensor(halves, one) > self.tol and not stats and not ghosts:
            self.findings.append(
                Finding(
                    variant=label,
                    name="batch-dependence",
                    message="an example's output depends on the other examples in its batch"
                    " (outputs for two halves differ from those of the whole batch) though no"
                    " BatchNorm module was found",
                    fix="look for statistics over the batch dimension in forward (a custom"
                    " norm, attention across examples) and compute them per example",
                )
            )

    def diagnose_loss(self) -> None:
        """Which rule combines a batch's loss from its parts: the gradient of `mean_loss` on a
        batch against its parts' gradients (B/4 and 3B/4 rows, so the units differ) weighted by
        units, by examples, by tokens, equally, or summed. Batch statistics are put in eval
        mode here, so that the parts see the same model as the whole."""
        b = next((s for s in reversed(self.sizes) if s >= 4), 0)
        if b == 0 or any(
            f.name in ("unfixed-randomness", "batch-dependence") for f in self.findings
        ):
            return
        x, y = self.rows(b)
        q = b // 4
        parts = [(batch.take(x, slice(0, q)), y[:q]), (batch.take(x, slice(q, b)), y[q:])]
        norms = [m for m in self.model.modules() if isinstance(m, _BATCH_STATS) and m.training]
        for m in norms:
            m.eval()
        try:
            whole = self.mean_loss_grads(x, y)
            gs = [self.mean_loss_grads(px, py) for px, py in parts]
            micro_ok = self._micro_loss_consistent(x, y)
        finally:
            for m in norms:
                m.train()
        weights = {
            "units": [float(self.task.units(py)) for _, py in parts],
            "examples": [float(py.shape[0]) for _, py in parts],
            "equal": [1.0, 1.0],
        }
        tokens = _token_counts([py for _, py in parts])
        if tokens is not None:
            weights["tokens"] = tokens
        rules = {
            name: [(w[0] * a + w[1] * c) / sum(w) for a, c in zip(*gs, strict=True)]
            for name, w in weights.items()
        }
        rules["sum"] = [a + c for a, c in zip(*gs, strict=True)]
        match = {name: relative(g, whole)[0] <= self.tol for name, g in rules.items()}
        label, unit = self.label, self.task.unit
        if not match["units"]:
            if match["sum"]:
                name, msg, fix = (
                    "loss-sum",
                    "the loss is a sum over the batch (reduction='sum'), not a mean over"
                    f" {unit}s: the engine weights each micro-batch by its share of the units,"
                    " so k micro-batches give 1/k of the batch's gradient, and the lr's meaning"
                    " changes with B",
                    "return a mean over the task's units in mean_loss (reduction='mean'), or"
                    " divide the sum by units(y)",
                )
            elif match.get("tokens") and unit != "token":
                name, msg, fix = (
                    "loss-unit",
                    "the loss is a mean over tokens, but the task's units count examples:"
                    " micro-batches are weighted by sequences, not tokens, so with unequal"
                    " token counts per micro-batch accumulation is not the batch (the"
                    " per-micro-batch normalisation bug)",
                    "override units(y) to count the tokens, (y != -100).sum(), and"
                    ' unit = "token" (or use task = "language-model")',
                )
            elif match["equal"]:
                name, msg, fix = (
                    "loss-per-batch",
                    f"the loss is a mean per (micro-)batch, not over {unit}s: parts with"
                    " unequal units are weighted equally",
                    f"average the loss over the {unit}s of the whole batch (sum_loss / units)",
                )
            else:
                name, msg, fix = (
                    "loss-unit",
                    f"the loss is not a mean over the task's {unit}s (nor a sum): a batch's"
                    " loss is not its parts' losses weighted by units(y)",
                    "make mean_loss a mean over what units(y) counts",
                )
            self.findings.append(Finding(variant=label, name=name, message=msg, fix=fix))
        elif not micro_ok:
            self.findings.append(
                Finding(
                    variant=label,
                    name="micro-loss",
                    message="micro_loss (or sum_loss) disagrees with mean_loss: summed over"
                    " micro-batches it is not the batch's mean loss",
                    fix="micro_loss(out, y, total) must be sum_loss(out, y) / total, and"
                    " sum_loss the mean loss times units(y) (the defaults are)",
                )
            )

    def _micro_loss_consistent(self, x: Inputs, y: torch.Tensor) -> bool:
        """Two micro-batches' `micro_loss` add up to the batch's `mean_loss` (loss values)."""
        with torch.no_grad():
            total = self.task.units(y)
            whole = self.task.mean_loss(self.task.forward(self.model, x), y)
            h = int(y.shape[0]) // 2
            parts = [(batch.take(x, slice(0, h)), y[:h]), (batch.take(x, slice(h, None)), y[h:])]
            acc = sum(
                (
                    self.task.micro_loss(self.task.forward(self.model, px), py, total)
                    for px, py in parts
                ),
                torch.zeros((), device=self.device, dtype=whole.dtype),
            )
            return bool(abs(float(acc) - float(whole)) <= self.tol * max(abs(float(whole)), 1e-12))

    def explain(self) -> None:
        """The data-parallel weighting note: DDP averages shards equally, not by units."""
        uneven = [
            c
            for c in self.comparisons
            if c.kind == "data-parallel" and c.relative > self.tol and len(set(c.units)) > 1
        ]
        if uneven and not any(f.breaks for f in self.findings):
            c = max(uneven, key=lambda c: c.relative)
            shards = ", ".join(f"{u:g}" for u in c.units)
            self.findings.append(
                Finding(
                    variant=self.label,
                    name="data-parallel-weighting",
                    message=f"data-parallel: DDP averages the W shards' gradients equally, and"
                    f" the shards hold unequal {self.task.unit}s (B={c.batch_size}, W={c.factor}:"
                    f" {shards}), so the average is not the batch's {self.task.unit}-weighted"
                    f" gradient (relative difference {c.relative:.2g}); batchlab's"
                    " accumulation weights them right",
                    fix=f"with DDP, scale each worker's loss by W x its {self.task.unit}s / the"
                    f" global batch's {self.task.unit}s (all-reduce the count first)",
                    breaks=False,
                )
            )

    def verdicts(self) -> list[BatchVerdict]:
        out = []
        breaking = [f for f in self.findings if f.breaks] or [
            f for f in self.findings if f.name == "ghost-batch"
        ]
        for b in self.sizes:
            acc = [c for c in self.comparisons if c.batch_size == b and c.kind == "accumulate"]
            ddp = [c for c in self.comparisons if c.batch_size == b and c.kind == "data-parallel"]
            verdict, worst = self._verdict(acc)
            dp, dp_worst = self._verdict(ddp)
            why: list[str] = []
            fixes: list[str] = []
            if b in self.skipped:
                why.append(self.skipped[b])
            elif verdict == "not equivalent":
                if breaking:
                    why += [f.name for f in breaking]
                    fixes += [f.fix for f in breaking if f.fix]
                else:
                    why.append("unexplained: no batch statistics, loss rule or randomness found")
                    fixes.append("compare your model's forward on a batch and on its halves")
            out.append(
                BatchVerdict(
                    variant=self.label,
                    batch_size=b,
                    verdict=verdict,
                    worst=worst,
                    data_parallel=dp,
                    data_parallel_worst=dp_worst,
                    why=tuple(why),
                    fixes=tuple(fixes),
                )
            )
        return out

    def _verdict(self, cs: Sequence[Comparison]) -> tuple[Verdict, float]:
        if not cs:
            return "not checked", math.nan
        worst = max((c.relative for c in cs), key=_key)
        if math.isnan(worst) or worst > self.tol:
            return "not equivalent", worst
        return ("equivalent" if worst == 0 else "equivalent to tolerance"), worst


def _inside_ghost(name: str, named: dict[str, nn.Module]) -> bool:
    """A BatchNorm wrapped by batchlab's GhostBatchNorm (reported as the ghost module)."""
    parent = name.rpartition(".")[0]
    return parent in named and isinstance(named[parent], GhostBatchNorm) and parent != name


def _batch_stats_fix(spec: StudySpec) -> str:
    ghost = max(1, min(spec.batch_sizes) // max(2, spec.accumulate))
    if spec.model == "cnn":
        return (
            f"for a fair study compare at equal statistics: model_args.ghost_batch = {ghost}"
            " (ghost BatchNorm, a divisor of every micro-batch) in every variant, or no"
            " batchnorm (GroupNorm in your own model)"
        )
    return (
        "for a fair study use ghost BatchNorm with a ghost batch dividing every micro-batch"
        " (batchlab.models.GhostBatchNorm) or GroupNorm/LayerNorm, which need no batch"
    )


def _token_counts(ys: Sequence[torch.Tensor]) -> list[float] | None:
    """Non-padding targets (-100 is padding) per part, for integer targets with a time axis."""
    if not all(y.ndim >= 2 and not y.is_floating_point() for y in ys):
        return None
    return [float((y != -100).sum()) for y in ys]


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Half and bfloat16 tensors in float32; float32 and float64 as they are."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def _rel_tensor(a: torch.Tensor, ref: torch.Tensor) -> float:
    return relative([a], [ref])[0]
