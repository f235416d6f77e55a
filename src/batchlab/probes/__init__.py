"""Probes: measurements taken during training (gradient noise scale, gradient norms, update size,
distance from init, Hessian top eigenvalue, sharpness, gradient histograms) and the loss along a
line between two weight sets.

Each probe is a small class in its own module with a cost tier and a schedule; `ProbeSuite`
runs a set of them inside batchlab's engine, `Monitor` inside your own training loop. Every probe
writes flat `ProbeRecord(step, probe, key, value)`s. See docs/probes.md.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchlab.probes.base import (
        LossFn,
        Probe,
        ProbeContext,
        ProbeRecord,
        Tier,
        probe_generator,
        records_to_dataframe,
    )
    from batchlab.probes.distance import Distance
    from batchlab.probes.grad_norms import GradNorms
    from batchlab.probes.hessian import HessianTop, hessian_top_eigenvalue
    from batchlab.probes.histograms import GradHistograms, GradientHistograms, gradient_histograms
    from batchlab.probes.interpolate import interpolate
    from batchlab.probes.monitor import Monitor
    from batchlab.probes.noise_scale import NoiseEstimate, NoiseScale, estimate_noise
    from batchlab.probes.running_noise import RunningNoiseScale
    from batchlab.probes.schedule import AnyOf, AtEnd, AtSteps, Every, LogSpaced, Schedule, periodic
    from batchlab.probes.sharpness import Sharpness, SharpnessResult, random_subspace, sharpness
    from batchlab.probes.suite import PRESETS, PROBES, ProbeSuite, resolve_names
    from batchlab.probes.update_size import UpdateSize

_HOME = {
    "LossFn": "batchlab.probes.base",
    "Probe": "batchlab.probes.base",
    "ProbeContext": "batchlab.probes.base",
    "ProbeRecord": "batchlab.probes.base",
    "Tier": "batchlab.probes.base",
    "probe_generator": "batchlab.probes.base",
    "records_to_dataframe": "batchlab.probes.base",
    "Distance": "batchlab.probes.distance",
    "GradNorms": "batchlab.probes.grad_norms",
    "HessianTop": "batchlab.probes.hessian",
    "hessian_top_eigenvalue": "batchlab.probes.hessian",
    "GradHistograms": "batchlab.probes.histograms",
    "GradientHistograms": "batchlab.probes.histograms",
    "gradient_histograms": "batchlab.probes.histograms",
    "interpolate": "batchlab.probes.interpolate",
    "Monitor": "batchlab.probes.monitor",
    "NoiseEstimate": "batchlab.probes.noise_scale",
    "NoiseScale": "batchlab.probes.noise_scale",
    "estimate_noise": "batchlab.probes.noise_scale",
    "RunningNoiseScale": "batchlab.probes.running_noise",
    "AnyOf": "batchlab.probes.schedule",
    "AtEnd": "batchlab.probes.schedule",
    "AtSteps": "batchlab.probes.schedule",
    "Every": "batchlab.probes.schedule",
    "LogSpaced": "batchlab.probes.schedule",
    "Schedule": "batchlab.probes.schedule",
    "periodic": "batchlab.probes.schedule",
    "Sharpness": "batchlab.probes.sharpness",
    "SharpnessResult": "batchlab.probes.sharpness",
    "random_subspace": "batchlab.probes.sharpness",
    "sharpness": "batchlab.probes.sharpness",
    "PRESETS": "batchlab.probes.suite",
    "PROBES": "batchlab.probes.suite",
    "ProbeSuite": "batchlab.probes.suite",
    "resolve_names": "batchlab.probes.suite",
    "UpdateSize": "batchlab.probes.update_size",
}
"""Where each export lives: loaded on first use, so `ProbeRecord` (the store's) needs no torch."""

__all__ = [
    "PRESETS",
    "PROBES",
    "AnyOf",
    "AtEnd",
    "AtSteps",
    "Distance",
    "Every",
    "GradHistograms",
    "GradNorms",
    "GradientHistograms",
    "HessianTop",
    "LogSpaced",
    "LossFn",
    "Monitor",
    "NoiseEstimate",
    "NoiseScale",
    "Probe",
    "ProbeContext",
    "ProbeRecord",
    "ProbeSuite",
    "RunningNoiseScale",
    "Schedule",
    "Sharpness",
    "SharpnessResult",
    "Tier",
    "UpdateSize",
    "estimate_noise",
    "gradient_histograms",
    "hessian_top_eigenvalue",
    "interpolate",
    "periodic",
    "probe_generator",
    "random_subspace",
    "records_to_dataframe",
    "resolve_names",
    "sharpness",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'batchlab.probes' has no attribute {name!r}")


_SAME_NAME = frozenset({"interpolate", "sharpness"})  # a function named like its module


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing submodule `sharpness` sets `batchlab.probes.sharpness` to the module; the
        # export is the function of that name (as when this package imported it eagerly).
        if name in _SAME_NAME and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
