"""Probes: measurements taken during training (gradient noise scale, gradient norms, update size,
distance from init, Hessian top eigenvalue, sharpness, gradient histograms) and the loss along a
line between two weight sets.

Each probe is a small class in its own module with a cost tier and a schedule; `ProbeSuite`
runs a set of them inside batchlab's engine, `Monitor` inside your own training loop. Every probe
writes flat `ProbeRecord(step, probe, key, value)`s. See docs/probes.md.
"""

from __future__ import annotations

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
from batchlab.probes.schedule import AnyOf, AtEnd, AtSteps, Every, LogSpaced, Schedule, periodic
from batchlab.probes.sharpness import Sharpness, SharpnessResult, random_subspace, sharpness
from batchlab.probes.suite import PRESETS, PROBES, ProbeSuite, resolve_names
from batchlab.probes.update_size import UpdateSize

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
