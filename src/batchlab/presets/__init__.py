"""Built-in studies, each a TOML file beside this module, runnable with `--preset NAME`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import tomllib

from batchlab.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    cpu_time: str  # measured on the 2-core CI machine; see docs/presets.md
    data: dict[str, Any]

    @property
    def description(self) -> str:
        return str(self.data.get("description", ""))


_CPU_TIME = {"quick": "about 1 min", "seed-sweep": "about 2 h"}


def _read(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def names() -> list[str]:
    files = resources.files(__package__).iterdir()
    return sorted(f.name.removesuffix(".toml") for f in files if f.name.endswith(".toml"))


def get(name: str) -> Preset:
    if name not in names():
        raise SpecError(f"--preset: unknown preset {name!r}; choose from {', '.join(names())}")
    return Preset(name=name, cpu_time=_CPU_TIME.get(name, "unknown"), data=_read(name))


def all_presets() -> list[Preset]:
    return [get(n) for n in names()]
