"""Built-in studies, each a TOML file beside this module, runnable with `--preset NAME`.

A preset may carry `[small]` and `[full]` tables: overrides applied by `--scale small|full`
(see `batchlab.spec.apply_scale`).
Design presets are CPU-sized as written (their `[full]` table is the paper's scale); the
`seed-sweep` preset is the full seed 000 study as written.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from batchlab.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    cpu_time: str  # measured on the 2-core CI machine at the default scale; docs/designs.md
    data: dict[str, Any]  # as in the file, [small] / [full] tables included

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))


_CPU_TIME = {
    "quick": "~20 s",
    "seed-sweep": "~7 min",
    "budget-controls": "~3 min",
    "lr-grid": "~4 min",
    "optimizers": "~2 min",
    "accumulation": "~1 min",
    "batch-schedule": "~2 min",
    "ghost-bn": "~1 min",
    "sharpness": "~2 min",
    "lm-quick": "~3 min",
    "lm-critical": "~26 min",
    "resnet-quick": "~5 min",
    "branched": "~10 min",
    "lm-branched": "~20 min",
}


def names() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def get(name: str) -> Preset:
    if name not in names():
        raise SpecError(f"--preset: unknown preset {name!r}; choose from {', '.join(names())}")
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return Preset(name=name, cpu_time=_CPU_TIME.get(name, "unknown"), data=tomllib.loads(text))


def source(name: str) -> str:
    """A preset's TOML file as written (comments, [small] and [full] tables included)."""
    get(name)  # an unknown name is a one-line error
    return resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


def all_presets() -> list[Preset]:
    return [get(n) for n in names()]
