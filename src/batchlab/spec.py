"""The study specification: validated once, at the edge, into immutable typed objects.

A study is a TOML file (or a preset) plus `--set key=value` overrides. `StudySpec` holds what the
user asked for; `TrialSpec` is one resolved point of the grid batch_sizes x lrs x seeds, with the
learning rate actually used. A trial's id is a hash of its resolved spec, so the same spec always
maps to the same trial (and a rerun finds the trials it already ran).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchlab.errors import SpecError
from batchlab.lr import scaled_lr

BudgetKind = Literal["epochs", "steps", "samples", "seconds"]
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
# Fields that choose the data and its task: one per study, shared by every trial and variant.
DATA_FIELDS = frozenset(
    {"dataset", "dataset_args", "train_subset", "val_fraction", "data_seed", "task", "task_args"}
)
# Fields that say where and how fast to run, not what to run: they do not enter a trial's id,
# so a study started on one device can be resumed on another.
EXECUTION_FIELDS = frozenset(
    {
        "device",
        "threads",
        "save_weights",
        "adaptive",
        "workers",
        "executor",
        "ray_address",
        "fuse",
        "data_workers",
        "compile",
    }
)


MAX_TRIALS = 100_000
"""The most trials one study may hold (variants x batch sizes x lrs x seeds, controls
included): its registration alone is a row per trial in the store and in memory."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Budget(_Frozen):
    """What every trial is given, held equal across batch sizes: exactly one of the four."""

    epochs: int | None = Field(default=None, gt=0)
    """Passes over the training set."""
    steps: int | None = Field(default=None, gt=0)
    """Optimizer updates."""
    samples: int | None = Field(default=None, gt=0)
    """Training examples seen, summed over updates."""
    seconds: float | None = Field(default=None, gt=0)
    """Training time in seconds, evaluation excluded."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [
            k for k in ("epochs", "steps", "samples", "seconds") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of epochs, steps, samples, seconds"
                f" (got {', '.join(given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> BudgetKind:
        for k in ("epochs", "steps", "samples", "seconds"):
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("validated budget has no kind")

    @property
    def value(self) -> float:
        v = getattr(self, self.kind)
        assert v is not None
        return float(v)


class Schedule(_Frozen):
    """A step schedule: at each milestone epoch, multiply the batch (or divide the lr) by factor.

    For a batch schedule, `max_batch` caps the batch (Smith et al.): milestones past the cap
    divide the lr by `factor` instead.
    """

    milestones: tuple[int, ...] = Field(min_length=1)
    """Increasing epochs at which the schedule steps, e.g. [10, 20]."""
    factor: float | None = Field(default=None, gt=1.0)
    """At each milestone, multiply the batch (or divide the lr) by this."""
    max_batch: int | None = Field(default=None, gt=0)
    """Batch schedules: a cap on the batch; milestones past it divide the lr instead."""
    batch_sizes: tuple[int, ...] | None = None
    """Batch schedules, instead of a factor: the batch size from each milestone on, with the
    lr following the study's lr_scaling rule (`batchlab schedule` writes these)."""

    @model_validator(mode="after")
    def _factor_or_sizes(self) -> Schedule:
        if (self.factor is None) == (self.batch_sizes is None):
            raise ValueError("give exactly one of factor or batch_sizes, e.g. factor = 5")
        if self.batch_sizes is not None:
            if len(self.batch_sizes) != len(self.milestones):
                raise ValueError("batch_sizes: give one batch size per milestone")
            if any(b <= 0 for b in self.batch_sizes) or self.max_batch is not None:
                raise ValueError("batch_sizes: positive sizes, and no max_batch with them")
        return self

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(m <= 0 for m in v) or list(v) != sorted(set(v)):
            raise ValueError("milestones must be increasing positive epochs, e.g. [10, 20]")
        return v

    def passed(self, epoch: int, scale: int = 1) -> int:
        """How many milestones (in epochs, stretched by `scale`) lie at or before `epoch`."""
        return sum(epoch >= m * scale for m in self.milestones)


class LrDecay(_Frozen):
    """An lr schedule over a trial's planned steps (nanoGPT's `get_lr`, generalised): a linear
    warmup from near zero, then constant, cosine or linear decay to `final` x the lr, or
    warmup-stable-decay (`wsd`: constant, then a linear decay over the last `decay_fraction`).
    It multiplies the lr of each epoch (after lr scaling and any batch schedule). Under a
    batch schedule it runs over the samples rather than the updates (`TrialPlan.decay_step`),
    so a batch-size warmup decays as the constant batch does at the same samples."""

    kind: Literal["constant", "cosine", "linear", "wsd"] = "cosine"
    """constant, cosine, linear, or wsd (warmup-stable-decay)."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Updates of linear warmup: the lr of update i (0-based) is lr * (i + 1) / (warmup + 1).
    Under a batch schedule they are counted on the decay's samples scale
    (`TrialPlan.decay_step`): the warmup covers the first warmup / planned-updates fraction of
    the budget's samples, however many of the schedule's own updates that takes."""
    warmup_fraction: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Warmup as a fraction of the planned updates (instead of warmup_steps)."""
    final: float = Field(default=0.1, ge=0.0, le=1.0)
    """The lr at the end as a fraction of the peak (nanoGPT: min_lr = lr / 10)."""
    decay_fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    """wsd: the fraction of the planned updates spent decaying, at the end."""

    @model_validator(mode="after")
    def _one_warmup(self) -> LrDecay:
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        return self

    def warmup(self, total_steps: int) -> int:
        """Warmup updates for a trial of `total_steps` planned updates."""
        if self.warmup_fraction is not None:
            return round(self.warmup_fraction * total_steps)
        return self.warmup_steps or 0


class Branched(_Frozen):
    """The critical batch size over training, by branching (`batchlab.branched`; Merrill et al.
    2025). The study's grid is the reference run: one batch size and one lr, once per seed. It
    keeps its weights and optimizer state at `points` steps log-spaced from `first` of its
    budget to its end; from each, a short branch runs at every batch size of `batch_sizes`
    (lr by the study's rule, times each of `lr_factors`) and records how many steps and samples
    it needs to reach the validation loss the reference batch's own branch reaches after
    `window` samples."""

    batch_sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    """Batch sizes of the branches (the reference batch size is always added): a list, or
    "lo:hi" for the powers of two from lo to hi."""
    points: int = Field(default=4, ge=2, le=64)
    """Branch points (at least 2: a curve over training): checkpoints of the reference,
    log-spaced in samples."""
    first: float = Field(default=1 / 16, gt=0.0, le=1.0)
    """The first branch point, as a fraction of the reference's budget (the last is its end)."""
    window: int | None = Field(default=None, gt=0)
    """Samples the reference batch's branch trains: its loss at the end is every branch's
    target (unset: a quarter of the reference's samples)."""
    reach: float = Field(default=3.0, ge=1.0)
    """A branch trains at most `reach` x `window` samples to reach the target."""
    evals: int = Field(default=8, ge=2)
    """Evaluations per window (a branch of few steps evaluates after every step), between which
    the steps to the target are interpolated."""
    lr_factors: tuple[float, ...] = (1.0,)
    """A small lr grid per batch size, as factors of the rule's lr; the fastest branch to the
    target counts (selected on the validation split)."""

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _batch_sizes(cls, v: object) -> tuple[int, ...]:
        return parse_batch_sizes(v)

    @field_validator("lr_factors")
    @classmethod
    def _lr_factors(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < f < math.inf for f in v):
            raise ValueError("give positive lr factors, e.g. lr_factors = [0.5, 1, 2]")
        return tuple(sorted(set(v)))


class Branch(_Frozen):
    """Where a branch trial starts: the reference trial and its checkpoint."""

    reference: str
    """The reference trial's id."""
    point: int
    """The branch point's index (0: the earliest)."""
    step: int
    """The reference's updates at the branch point."""
    samples: int
    """The reference's samples at the branch point."""
    window: int
    """Samples after which the reference batch's branch sets the target."""
    lr_factor: float = 1.0
    """The lr's factor over the study's rule."""


class Adaptive(_Frozen):
    """Successive halving over the grid (`batchlab.adaptive`): train every configuration to a
    rung, stop those clearly behind, continue the rest. An execution setting: trial ids do not
    change, and a configuration that survives trains exactly as in the full grid.

    Rungs lie at budget fractions min_fraction * eta**k below 1 (1/9, 1/3 by default); at each,
    the top 1/eta of the configurations by `metric` go on, with every configuration within the
    noise margin of the cut-off (at least `min_margin`) and, with `keep_per_batch`, the best
    configuration at each batch size.
    """

    eta: float = Field(default=3.0, gt=1.0)
    """Keep the top 1/eta of the configurations at each rung; rungs are eta times apart."""
    min_fraction: float = Field(default=1 / 9, gt=0.0, lt=1.0)
    """The first rung, as a fraction of the budget."""
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    """What ranks configurations at a rung (on the validation split)."""
    keep_per_batch: bool = True
    """Always keep the best configuration at each batch size."""
    min_margin: float = Field(default=0.0, ge=0.0)
    """Keep every configuration within at least this margin of the cut-off."""

    def fractions(self) -> tuple[float, ...]:
        """The rung fractions of the budget, below 1 (the end of training is not a rung)."""
        out = []
        r = self.min_fraction
        while r < 1 - 1e-9:
            out.append(r)
            r *= self.eta
        return tuple(out)


def parse_lrs(value: object) -> object:
    """A list of lrs, one lr, or "lo:hi:n" meaning n values log-spaced from lo to hi."""
    if isinstance(value, str):
        parts = value.split(":")
        try:
            lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise ValueError('use a list like [0.01, 0.1] or "lo:hi:n" for a log grid') from None
        if len(parts) != 3 or not 0 < lo <= hi or num < 1:
            raise ValueError(f'"{value}": need 0 < lo <= hi and n >= 1, e.g. "1e-4:1:9"')
        if num == 1:
            return [lo]
        ratio = (hi / lo) ** (1 / (num - 1))
        return [float(f"{lo * ratio**i:.6g}") for i in range(num)]
    return value


def parse_batch_sizes(value: object) -> tuple[int, ...]:
    """A list of sizes, or "lo:hi" meaning the powers of two from lo to hi inclusive."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if not m:
            raise ValueError('use a list like [8, 32] or "lo:hi" for powers of two, e.g. "8:2048"')
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo <= 0 or hi < lo:
            raise ValueError(f'"{value}": need 0 < lo <= hi')
        first = 1 << max(0, math.ceil(math.log2(lo)))
        sizes = []
        b = first
        while b <= hi:
            sizes.append(b)
            b *= 2
        if not sizes:
            raise ValueError(f'"{value}" holds no power of two')
        return tuple(sizes)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError('give a non-empty list of batch sizes, or a range like "8:2048"')
    out = []
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"batch sizes must be positive integers, got {v!r}")
        out.append(v)
    return tuple(sorted(set(out)))


def _check_seed(v: object) -> object:
    """A seed must fit 64 signed bits: torch's generators take no more, nor does SQLite."""
    if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
        raise ValueError(f"{v} is out of range; use an integer from 0 to 2**63 - 1")
    return v


class StudySpec(_Frozen):
    """Everything that defines a study. Defaults are visible here, in one place."""

    name: str = Field(min_length=1)
    """The study's name: its key in the store (batchlab show NAME)."""
    description: str = ""
    """Free text, shown by batchlab presets and in reports."""
    dataset: str = "fashion-mnist"
    """fashion-mnist, mnist, kmnist, mnist1d, digits, synthetic, npz:PATH, or
    package.module:function returning (x_train, y_train, x_test, y_test) arrays or (train, test)
    map-style torch Datasets."""
    dataset_args: dict[str, Any] = Field(default_factory=dict)
    """Options of the dataset, e.g. synthetic: kind, n_train, dim, classes; mnist1d:
    make_dataset options."""
    train_subset: int | None = Field(default=None, gt=0)
    """Keep only this many training examples (after the validation split)."""
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Fraction of the training set held out for validation (0: none); the test set is untouched."""
    data_seed: int = 0
    """Seed of the validation split, the same for every trial."""
    task: str | None = None
    """classification, regression, language-model, or package.module:function returning a
    batchlab.tasks.Task; unset: the one the data implies (real targets: regression; token ids
    [N, T]: language-model; else classification)."""
    task_args: dict[str, Any] = Field(default_factory=dict)
    """Options of the task, e.g. regression: loss = "mae"; language-model: ignore_index."""
    model: str = "mlp"
    """mlp, cnn, gpt, resnet, hf:NAME (a Hugging Face model type built from its config, or
    hf:/folder), or package.module:function returning an nn.Module that maps a batch to the
    task's outputs (class logits, regression targets, or next-token logits [B, T, V])."""
    model_args: dict[str, Any] = Field(default_factory=dict)
    """Options of the model: mlp widths; cnn channels, hidden, kernel_size, batchnorm,
    ghost_batch; gpt layers, heads, width, context, dropout; resnet depth, width, norm,
    ghost_batch; hf: the config's fields (n_layer, n_embd, ...)."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    """sgd (momentum, nesterov), adam or adamw (betas)."""
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    """SGD momentum."""
    nesterov: bool = False
    """Nesterov momentum, with sgd."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam and AdamW betas."""
    eps: float = Field(default=1e-8, gt=0.0)
    """Adam and AdamW epsilon."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """Weight decay, as in torch.optim (decoupled for adamw)."""
    no_decay: Literal["none", "biases-and-norms"] = "none"
    """Parameters weight decay skips: none, or biases-and-norms (every parameter with fewer than
    two dimensions: biases, LayerNorm and BatchNorm weights; nanoGPT's rule)."""
    clip_grad_norm: float | None = Field(default=None, gt=0.0)
    """Clip the gradient's global L2 norm to this before each update (unset: no clipping); the
    fraction of clipped updates is recorded as the `clipping` probe."""
    lrs: tuple[float, ...] = (0.01,)
    """Base learning rates, each valid at reference_batch_size: a list, one number, or
    "lo:hi:n" for n values log-spaced from lo to hi."""
    reference_batch_size: int = Field(default=32, gt=0)
    """The batch size at which a base lr applies; lr_scaling scales from it."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """How the lr follows the batch size B: none (as given), linear (x B / reference), sqrt (x
    sqrt(B / reference))."""
    warmup_epochs: float = Field(default=0.0, ge=0.0)
    """Epochs of linear ramp from the base lr to the scaled lr (0: no warmup)."""
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    """Batch sizes to compare: a list, or "lo:hi" for the powers of two from lo to hi."""
    seeds: tuple[int, ...] = (0,)
    """Each (batch size, lr) runs once per seed; the seed draws the weights and the data order."""
    budget: Budget = Field(default_factory=lambda: Budget(epochs=25))
    """What every trial gets, equal across batch sizes: exactly one of epochs, steps, samples,
    seconds."""
    eval_every: int = Field(default=1, gt=0)
    """Epochs between evaluations on the validation and test sets (one is made before training)."""
    train_eval_every: int = Field(default=0, ge=0)
    """Epochs between full passes over the training set (0: only before training and at the end)."""
    eval_batch_size: int = Field(default=4096, gt=0)
    """Examples per chunk when evaluating (memory only: results do not depend on it)."""
    probes: str | tuple[str, ...] | None = None
    """Measurements during training: a tier ("cheap", "standard", "full") or a list of probe
    names."""
    probe_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Options per probe, e.g. { noise_scale = { draws = 8 } }."""
    save_weights: bool = True
    """Store each finished trial's final weights (for interpolation and sharpness)."""
    accumulate: int = Field(default=1, gt=0)
    """Gradient accumulation: micro-batches per optimizer step; must divide every batch size."""
    batch_schedule: Schedule | None = None
    """Multiply the batch size by factor at milestone epochs (Smith et al.)."""
    lr_schedule: Schedule | None = None
    """Divide the lr by factor at milestone epochs."""
    lr_decay: LrDecay | None = None
    """An lr schedule over the planned updates: warmup, then constant, cosine, linear or wsd,
    e.g. { kind = "cosine", warmup_fraction = 0.05, final = 0.1 }."""
    regime_adaptation: bool = False
    """Hoffer et al.: train batch B for ceil(B / reference_batch_size) times the epochs,
    milestones stretched alike."""
    controls: bool = False
    """Add, for each batch size above the smallest, a run with as many updates as the smallest
    got."""
    variants: tuple[dict[str, Any], ...] = ()
    """Run the grid once per variant: tables of field overrides with a unique label, e.g. {
    label = "adam", optimizer = "adam" }."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:N or mps."""
    threads: int | None = Field(default=None, gt=0)
    """CPU threads for torch per trial: N, or "auto" (the default, also when unset): torch's
    default, lowered to the cores the load average leaves free on a busy machine
    (batchlab.cpuload), with a one-line warning."""
    adaptive: Adaptive | None = None
    """Successive halving over the grid: true for the default rule, or a table of its options."""
    branched: Branched | None = None
    """Measure the critical batch size over training by branching from checkpoints of a
    reference run (batchlab.branched): a table of its options, or true for the defaults."""
    # How trials run (batchlab.executors): 1 = one after another in this process; N = a pool of
    # N worker processes; "auto" = one per core, small batches packed single-threaded.
    workers: Annotated[int, Field(gt=0)] | Literal["auto"] = 1
    """Trials at once: 1 (one after another, in this process), N worker processes, or "auto"."""
    executor: Literal["local", "ray"] = "local"
    """Where trials run: local processes, or a Ray cluster."""
    ray_address: str | None = None
    """With executor = "ray": the cluster to join (unset: start one)."""
    data_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes reading a map-style Dataset (0: read in the trial's process);
    in-memory tensors never use them."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Arithmetic of the forward pass: fp32, or bf16 or fp16 autocast (weights, gradients and
    the update stay fp32; fp16 scales the loss with a gradient scaler). It changes the numbers,
    so it enters the trial id (when not fp32). Where the device has no bf16 (fp16) instructions
    it runs fp32, says so in one line, and stores the precision used with each trial."""
    compile: bool = False
    """Run each trial's forward and backward through `torch.compile` (an execution setting: the
    same numbers within rounding, so not in the trial id). Where it cannot (no C++ compiler,
    Windows, an error at the first step) it runs eager, says so in one line, and stores the
    setting used with each trial. A compiled trial trains through autograd, not the
    hand-written MLP step, and never fuses (a fused group's stacked step is not compiled)."""
    fuse: bool | Literal["auto"] = "auto"
    """Train trials that differ only in seed and lr as one batched step (batchlab.fused): auto
    (on CUDA, one trial after another), true (on any device), false (never)."""

    @field_validator("adaptive", mode="before")
    @classmethod
    def _adaptive(cls, v: object) -> object:
        if isinstance(v, bool):  # adaptive = true: the default rule; false: the full grid
            return {} if v else None
        return v

    @field_validator("branched", mode="before")
    @classmethod
    def _branched(cls, v: object) -> object:
        if isinstance(v, bool):
            return {} if v else None
        return v

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: object) -> object:
        return None if v == "auto" else v  # "auto" is the default, kept as unset

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse(cls, v: object) -> object:
        if isinstance(v, bool) or v == "auto":
            return v
        raise ValueError(f"{v!r} is not a fuse setting; use true, false or auto")

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: object) -> object:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            return v
        raise ValueError(f"{v!r} is not a worker count; use a positive integer or auto")

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _batch_sizes(cls, v: object) -> tuple[int, ...]:
        return parse_batch_sizes(v)

    @field_validator("lrs", mode="before")
    @classmethod
    def _lrs(cls, v: object) -> object:
        v = parse_lrs(v)
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = [v]
        if isinstance(v, list | tuple):
            if not v:
                raise ValueError("give at least one learning rate, e.g. lrs = [0.01]")
            for x in v:
                if isinstance(x, int | float) and not isinstance(x, bool) and not 0 < x < math.inf:
                    raise ValueError(f"learning rates must be finite and > 0, got {x!r}")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if isinstance(v, list | tuple) and not v:
            raise ValueError("give at least one seed, e.g. seeds = [0]")
        if isinstance(v, list | tuple) and len(v) > MAX_TRIALS:
            raise ValueError(
                f"{len(v):,} seeds: a study holds at most {MAX_TRIALS:,} trials;"
                " use fewer seeds (a few are enough for a mean and its spread)"
            )
        for seed in v if isinstance(v, list | tuple) else ():
            _check_seed(seed)
        return v

    @field_validator("data_seed", mode="before")
    @classmethod
    def _data_seed(cls, v: object) -> object:
        return _check_seed(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError(f"{v!r} is not a device; use auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _probes_exist(self, info: ValidationInfo) -> StudySpec:
        # Build the probes once here (constructors only store their options), so an unknown
        # probe or option is refused before anything runs, not inside every trial.
        if _stored(info):
            return self
        from batchlab.probes import ProbeSuite

        try:
            ProbeSuite.from_spec(self.probes, total_steps=None, options=self.probe_args)
        except ValueError as err:
            raise ValueError(f"probes: {err}") from None
        return self

    @model_validator(mode="after")
    def _task_exists(self, info: ValidationInfo) -> StudySpec:
        # A built-in task and its options are checked here; a user's task when the data loads.
        if _stored(info):
            return self
        from batchlab.errors import DataError
        from batchlab.tasks import TASKS, make_task

        if self.task is not None and ":" not in self.task:
            if self.task not in TASKS:
                valid = ", ".join([*TASKS, "package.module:function"])
                raise ValueError(f"task: unknown task {self.task!r}; use one of {valid}")
            try:
                make_task(self.task, self.task_args)
            except DataError as err:
                raise ValueError(str(err)) from None
        return self

    @model_validator(mode="after")
    def _combinations(self) -> StudySpec:
        bad = [b for b in self.batch_sizes if b % self.accumulate]
        if bad:
            raise ValueError(
                f"accumulate: {self.accumulate} does not divide batch size {bad[0]};"
                " choose a divisor of every batch size"
            )
        if self.lr_schedule is not None and self.lr_schedule.factor is None:
            raise ValueError("lr_schedule: give a factor to divide the lr by, e.g. factor = 5")
        sizes = self.batch_schedule.batch_sizes if self.batch_schedule is not None else None
        if sizes and any(b % self.accumulate for b in sizes):
            odd = next(b for b in sizes if b % self.accumulate)
            raise ValueError(
                f"batch_schedule.batch_sizes: accumulate {self.accumulate} does not divide {odd};"
                " choose a divisor of every batch size"
            )
        for key in ("batch_schedule", "lr_schedule"):
            sched: Schedule | None = getattr(self, key)
            if sched is None:
                continue
            if self.budget.epochs is None:
                raise ValueError(f"{key}: milestones are epochs; use an epochs budget")
            if sched.milestones[-1] >= self.budget.epochs:
                raise ValueError(
                    f"{key}: milestone {sched.milestones[-1]} is past the budget of"
                    f" {self.budget.epochs} epochs; use milestones below it"
                )
        if self.lr_decay is not None:
            if self.budget.seconds is not None:
                raise ValueError(
                    "lr_decay: the schedule spans the planned updates; use an epochs, steps or"
                    " samples budget, not seconds"
                )
            if self.lr_schedule is not None or self.warmup_epochs > 0:
                raise ValueError(
                    "lr_decay: one lr schedule at a time; remove lr_schedule and warmup_epochs"
                    " (lr_decay has its own warmup)"
                )
            steps, warm = self.budget.steps, self.lr_decay.warmup_steps
            if steps is not None and warm is not None and warm >= steps:
                raise ValueError(
                    f"lr_decay: warmup_steps {warm} is not below the budget of {steps} steps;"
                    " use fewer warmup steps"
                )
        if self.controls and (self.budget.epochs is None and self.budget.samples is None):
            raise ValueError("controls: need an epochs or samples budget (steps are already equal)")
        if self.controls and len(self.batch_sizes) < 2:
            raise ValueError("controls: need at least two batch sizes")
        if self.controls and self.batch_schedule is not None:
            raise ValueError("controls: not with a batch_schedule (update counts are not fixed)")
        if self.fuse is True and (self.workers != 1 or self.executor != "local"):
            raise ValueError(
                "fuse: fused groups train in this process, one group after another;"
                " use workers = 1 and executor = local, or fuse = auto"
            )
        if self.compile and self.fuse is True:
            raise ValueError(
                "compile: a fused group's stacked step is not compiled;"
                " use fuse = auto or false with compile = true"
            )
        if self.adaptive is not None and self.budget.seconds is not None:
            raise ValueError(
                "adaptive: rungs are fractions of planned steps; use an epochs,"
                " steps or samples budget, not seconds"
            )
        if self.adaptive is not None and self.val_fraction == 0:
            raise ValueError(
                "adaptive: rungs rank trials on the validation split;"
                " set val_fraction > 0 (e.g. 0.1)"
            )
        if self.branched is not None:
            self._check_branched(self.branched)
        per_variant = len(self.batch_sizes) * len(self.lrs) * len(self.seeds)
        n_trials = max(1, len(self.variants)) * per_variant * (2 if self.controls else 1)
        if n_trials > MAX_TRIALS:
            raise ValueError(
                f"seeds: the grid holds {n_trials:,} trials, more than the {MAX_TRIALS:,} a"
                " study may hold; use fewer seeds, lrs or batch sizes"
            )
        labels = [str(v.get("label", "")) for v in self.variants]
        if any(not lab for lab in labels) or len(set(labels)) != len(labels):
            raise ValueError('variants: every variant needs a unique label, e.g. label = "adam"')
        return self

    def _check_branched(self, cfg: Branched) -> None:
        """A branched design has one reference configuration, trained to a planned end."""
        if len(self.batch_sizes) != 1 or len(self.lrs) != 1:
            raise ValueError(
                "branched: the grid is the reference run; give one batch size and one lr"
                " (the branches' batch sizes go in branched.batch_sizes)"
            )
        clash = [
            name
            for name, on in (
                ("variants", bool(self.variants)),
                ("controls", self.controls),
                ("batch_schedule", self.batch_schedule is not None),
                ("adaptive", self.adaptive is not None),
                ("regime_adaptation", self.regime_adaptation),
                ("fuse = true", self.fuse is True),
            )
            if on
        ]
        if clash:
            raise ValueError(f"branched: not with {clash[0]}; run that as a study of its own")
        if self.budget.seconds is not None:
            raise ValueError(
                "branched: branch points are fractions of planned steps; use an epochs, steps"
                " or samples budget, not seconds"
            )
        if self.val_fraction == 0:
            raise ValueError(
                "branched: the target is a validation loss; set val_fraction > 0 (e.g. 0.1)"
            )
        bad = [b for b in cfg.batch_sizes if b % self.accumulate]
        if bad:
            raise ValueError(
                f"branched.batch_sizes: accumulate {self.accumulate} does not divide {bad[0]}"
            )
        if self.lr_decay is not None and self.lr_decay.final == 0:
            raise ValueError(
                "branched: lr_decay.final = 0 leaves the branches at the last point (the end of"
                " training) no lr; use final > 0, e.g. 0.1"
            )

    def resolved_variants(self) -> list[tuple[str, StudySpec]]:
        """(label, spec) per variant; a study without variants is its own single variant."""
        if not self.variants:
            return [("", self)]
        base = self.to_toml_dict()
        out = []
        for i, v in enumerate(self.variants):
            overrides = {k: val for k, val in v.items() if k != "label"}
            banned = {"name", "variants", "description", "adaptive", *DATA_FIELDS} & set(overrides)
            if banned:
                raise SpecError(
                    f"variants[{i}]: cannot override {sorted(banned)} (a study has one dataset;"
                    " compare datasets across studies with batchlab compare)"
                )
            data = {**base, **overrides, "variants": []}
            out.append(
                (str(v["label"]), spec_from_dict(data, source=f"variants[{i}] ({v['label']})"))
            )
        return out

    def hooks(self) -> frozenset[str]:
        """The `package.module:function` hooks this spec names (dataset, task, each variant's
        model): the code that rebuilding its data and models imports."""
        from batchlab.plugins import is_hook

        named = [("dataset", self.dataset), ("task", self.task), ("model", self.model)]
        named += [("model", str(v.get("model"))) for v in self.variants if "model" in v]
        return frozenset(ref for field, ref in named if ref and is_hook(ref, field=field))

    def trials(self, n_train: int | None = None) -> list[TrialSpec]:
        """The grid, in a fixed order: variant, batch size, lr, seed; then control runs. (A
        branched design's branches follow: `batchlab.branched.study_trials`.)

        Controls (`controls = true`) give every batch size above the smallest as many updates as
        the smallest got; they need `n_train` to count those updates.
        """
        out = []
        for label, spec in self.resolved_variants():
            ref = spec.reference_batch_size
            for b in spec.batch_sizes:
                regime = math.ceil(b / ref) if spec.regime_adaptation else 1
                budget = spec.budget
                if regime > 1 and budget.epochs is not None:
                    budget = Budget(epochs=budget.epochs * regime)
                for lr_base in spec.lrs:
                    lr = scaled_lr(lr_base, b, ref, spec.lr_scaling)
                    for seed in spec.seeds:
                        out.append(
                            TrialSpec(
                                study=spec,
                                variant=label,
                                batch_size=b,
                                lr_base=lr_base,
                                lr=lr,
                                seed=seed,
                                budget=budget,
                                regime_factor=regime,
                            )
                        )
            if spec.controls:
                if n_train is None:
                    raise ValueError("controls need the training-set size to count updates")
                b_min = spec.batch_sizes[0]
                if spec.budget.epochs is not None:
                    steps = spec.budget.epochs * math.ceil(n_train / b_min)
                else:
                    steps = math.ceil(spec.budget.value / b_min)
                for b in spec.batch_sizes[1:]:
                    for lr_base in spec.lrs:
                        lr = scaled_lr(lr_base, b, ref, spec.lr_scaling)
                        for seed in spec.seeds:
                            out.append(
                                TrialSpec(
                                    study=spec,
                                    variant=label,
                                    batch_size=b,
                                    lr_base=lr_base,
                                    lr=lr,
                                    seed=seed,
                                    budget=Budget(steps=steps),
                                    control=True,
                                )
                            )
        return out

    def to_toml_dict(self) -> dict[str, Any]:
        """Plain data, JSON- and TOML-compatible, with the budget reduced to its one key."""
        d = self.model_dump(mode="json", exclude_none=True)
        d["budget"] = {self.budget.kind: getattr(self.budget, self.budget.kind)}
        return d


class TrialSpec(_Frozen):
    """One trial: a (variant of the) study at one batch size, base lr, seed and budget."""

    study: StudySpec
    batch_size: int
    lr_base: float
    lr: float
    seed: int
    budget: Budget
    variant: str = ""
    control: bool = False
    regime_factor: int = 1  # Hoffer's regime adaptation: epochs and milestones stretched by this
    branch: Branch | None = None  # a branch of a reference trial (batchlab.branched)

    def params(self) -> dict[str, Any]:
        """The resolved spec of this trial: what it runs, not where."""
        d = self.study.to_toml_dict()
        for k in ("lrs", "batch_sizes", "seeds", "description", "variants", *EXECUTION_FIELDS):
            d.pop(k, None)
        d.update(
            batch_size=self.batch_size,
            lr_base=self.lr_base,
            lr=self.lr,
            seed=self.seed,
            budget={self.budget.kind: getattr(self.budget, self.budget.kind)},
            variant=self.variant,
            control=self.control,
            regime_factor=self.regime_factor,
        )
        if self.branch is not None:  # absent otherwise: every other trial keeps its id
            d["branch"] = self.branch.model_dump(mode="json")
        return d

    @property
    def trial_id(self) -> str:
        """A hash of the resolved spec, the study's name included (two studies in one store never
        share a trial). Other fields left at their defaults are not hashed, so a new spec field
        with a default does not change the ids of existing trials."""
        defaults = StudySpec(name=self.study.name).to_toml_dict()
        identity = {
            k: v for k, v in self.params().items() if k == "name" or defaults.get(k, object()) != v
        }
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


GRID_FIELDS = ("batch_sizes", "lrs", "seeds")
"""The grid's axes: a rerun may add values to them (more seeds, say), not remove any."""


def spec_changes(stored: dict[str, Any], new: StudySpec, *, source: str) -> list[str]:
    """How `new` differs from the `stored` spec of a study of the same name, as "field: old ->
    new" per field that changes what runs; [] when a rerun of `new` continues the same study.

    Execution fields (EXECUTION_FIELDS: device, workers, executor...) and the description do
    not change what runs; a grid axis (GRID_FIELDS) may gain values. The stored spec is
    validated like a fresh one first (defaults added since it was stored compare equal)."""
    old = spec_from_dict(stored, source=source).to_toml_dict()
    cur = new.to_toml_dict()
    out = []
    for key in sorted((old.keys() | cur.keys()) - EXECUTION_FIELDS - {"description"}):
        a, b = old.get(key), cur.get(key)
        if a == b:
            continue
        if key in GRID_FIELDS and isinstance(a, list) and isinstance(b, list) and set(a) <= set(b):
            continue
        out.append(f"{key}: {_short(a)} -> {_short(b)}")
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Parsing at the edge: TOML text, --set overrides, and one-line errors.


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _explain(err: ValidationError, source: str) -> SpecError:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _format_loc(loc) or "spec"
    if e["type"] == "extra_forbidden":
        nested: dict[object, type[BaseModel]] = {"budget": Budget, "adaptive": Adaptive}
        parent = nested.get(loc[0], StudySpec) if len(loc) > 1 else StudySpec
        valid = sorted(parent.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return SpecError(f"{source}: unknown key '{where}'; {hint}")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return SpecError(f"{source}: '{where}' is required; add {where} = ... to the spec")
    field, _, rest = msg.partition(": ")
    if not loc and field in StudySpec.model_fields and rest:  # a check across fields names one
        where, msg = field, rest
    return SpecError(f"{source}: field '{where}': {msg}")


def _stored(info: ValidationInfo) -> bool:
    """Whether the spec is read back from a store (`spec_from_dict(..., stored=True)`)."""
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


def spec_from_dict(
    data: dict[str, Any], *, source: str = "study spec", stored: bool = False
) -> StudySpec:
    """Validate plain data into a StudySpec, or raise a one-line SpecError.

    `stored`: a spec read back from a store, checked when its study was written. Its probes
    and task are not built again, so reading results (`ls`, `show`) imports no torch.
    """
    try:
        return StudySpec.model_validate(data, context={"stored": stored})
    except ValidationError as err:
        raise _explain(err, source) from None


def read_toml(path: Path) -> dict[str, Any]:
    """Read a study file, turning every failure into a one-line SpecError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError(f"cannot read study file {path}: {err.strerror or err}") from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
        return data
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: malformed TOML: {err}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`key=value` or `a.b=value`; the value is read as TOML (so 0.1, [1,2], "x", true work)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: write key=value, e.g. --set budget.epochs=3")
    key, raw = item.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if not all(path):
        raise SpecError(f"--set {item!r}: empty key; write key=value, e.g. --set seeds=[0,1]")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as adam or fashion-mnist
    return path, value


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with every `--set` applied in order.

    Setting any key under `budget` replaces the whole budget, since a budget holds one key.
    """
    out: dict[str, Any] = json.loads(json.dumps(data))
    for item in items:
        path, value = parse_override(item)
        if path[0] == "budget" and len(path) == 2:
            out["budget"] = {path[1]: value}
            continue
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: '{part}' is not a table")
            node = child
        node[path[-1]] = value
    return out


SCALES = ("small", "full")


def apply_scale(data: dict[str, Any], scale: str | None) -> dict[str, Any]:
    """Drop the `[small]` / `[full]` tables of a study file, applying the one `scale` names."""
    out = {k: v for k, v in data.items() if k not in SCALES}
    if scale is not None:
        if scale not in SCALES:
            raise SpecError(f"--scale: {scale!r} is not a scale; use small or full")
        table = data.get(scale, {})
        if not isinstance(table, dict):
            raise SpecError(f"[{scale}]: must be a table of spec fields")
        out.update(table)
    return out


def load_spec(
    path: Path | None = None,
    *,
    base: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    scale: str | None = None,
) -> StudySpec:
    """Build a StudySpec from a TOML file (or a base dict such as a preset), its `[small]` or
    `[full]` table when `scale` names one, and overrides."""
    data = dict(base or {})
    source = "study spec"
    if path is not None:
        data.update(read_toml(path))
        source = str(path)
    data = apply_overrides(apply_scale(data, scale), overrides or [])
    return spec_from_dict(data, source=source)
