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
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchlab.errors import SpecError
from batchlab.lr import scaled_lr

BudgetKind = Literal["epochs", "steps", "samples", "seconds"]
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
# Fields that say where and how fast to run, not what to run: they do not enter a trial's id,
# so a study started on one device can be resumed on another.
EXECUTION_FIELDS = frozenset({"device", "threads"})


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Frozen):
    """What every trial is given, held equal across batch sizes: exactly one of the four."""

    epochs: int | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, gt=0)
    samples: int | None = Field(default=None, gt=0)
    seconds: float | None = Field(default=None, gt=0)

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


class StudySpec(_Frozen):
    """Everything that defines a study. Defaults are visible here, in one place."""

    name: str = Field(min_length=1)
    description: str = ""
    dataset: str = "fashion-mnist"
    dataset_args: dict[str, Any] = Field(default_factory=dict)
    train_subset: int | None = Field(default=None, gt=0)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    data_seed: int = 0
    model: str = "mlp"
    model_args: dict[str, Any] = Field(default_factory=dict)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0.0)
    lrs: tuple[float, ...] = (0.01,)
    reference_batch_size: int = Field(default=32, gt=0)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    warmup_epochs: float = Field(default=0.0, ge=0.0)
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    seeds: tuple[int, ...] = (0,)
    budget: Budget = Field(default_factory=lambda: Budget(epochs=25))
    eval_every: int = Field(default=1, gt=0)
    train_eval_every: int = Field(default=0, ge=0)
    eval_batch_size: int = Field(default=4096, gt=0)
    device: str = "auto"
    threads: int | None = Field(default=None, gt=0)

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _batch_sizes(cls, v: object) -> tuple[int, ...]:
        return parse_batch_sizes(v)

    @field_validator("lrs", mode="before")
    @classmethod
    def _lrs(cls, v: object) -> object:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = [v]
        if isinstance(v, list | tuple):
            if not v:
                raise ValueError("give at least one learning rate, e.g. lrs = [0.01]")
            for x in v:
                if isinstance(x, int | float) and not isinstance(x, bool) and not x > 0:
                    raise ValueError(f"learning rates must be > 0, got {x!r}")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if isinstance(v, list | tuple) and not v:
            raise ValueError("give at least one seed, e.g. seeds = [0]")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError(f"{v!r} is not a device; use auto, cpu, cuda or cuda:N")
        return v

    def trials(self) -> list[TrialSpec]:
        """The grid, in a fixed order: batch size, then lr, then seed."""
        out = []
        for b in self.batch_sizes:
            for lr_base in self.lrs:
                for seed in self.seeds:
                    lr = scaled_lr(lr_base, b, self.reference_batch_size, self.lr_scaling)
                    out.append(
                        TrialSpec(study=self, batch_size=b, lr_base=lr_base, lr=lr, seed=seed)
                    )
        return out

    def to_toml_dict(self) -> dict[str, Any]:
        """Plain data, JSON- and TOML-compatible, with the budget reduced to its one key."""
        d = self.model_dump(mode="json")
        d["budget"] = {self.budget.kind: getattr(self.budget, self.budget.kind)}
        return d


class TrialSpec(_Frozen):
    """One trial: the study's settings at one batch size, base lr and seed."""

    study: StudySpec
    batch_size: int
    lr_base: float
    lr: float
    seed: int

    def params(self) -> dict[str, Any]:
        """The resolved spec of this trial: what it runs, not where."""
        d = self.study.to_toml_dict()
        for k in ("lrs", "batch_sizes", "seeds", "description", *EXECUTION_FIELDS):
            d.pop(k, None)
        d.update(batch_size=self.batch_size, lr_base=self.lr_base, lr=self.lr, seed=self.seed)
        return d

    @property
    def trial_id(self) -> str:
        blob = json.dumps(self.params(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
        parent: type[BaseModel] = Budget if loc[:1] == ("budget",) else StudySpec
        valid = sorted(parent.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return SpecError(f"{source}: unknown key '{where}'; {hint}")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return SpecError(f"{source}: '{where}' is required; add {where} = ... to the spec")
    return SpecError(f"{source}: field '{where}': {msg}")


def spec_from_dict(data: dict[str, Any], *, source: str = "study spec") -> StudySpec:
    """Validate plain data into a StudySpec, or raise a one-line SpecError."""
    try:
        return StudySpec.model_validate(data)
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


def load_spec(
    path: Path | None = None,
    *,
    base: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> StudySpec:
    """Build a StudySpec from a TOML file (or a base dict such as a preset) plus overrides."""
    data = dict(base or {})
    source = "study spec"
    if path is not None:
        data.update(read_toml(path))
        source = str(path)
    data = apply_overrides(data, overrides or [])
    return spec_from_dict(data, source=source)
