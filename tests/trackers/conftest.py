"""A tiny study (2 trials, 2 epochs, cheap probes) and its export: the trackers' reference."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from batchlab.study import Study
from batchlab.trackers import EVAL_METRICS
from tests.conftest import tiny_spec


def tracked_spec(**overrides: Any) -> dict[str, Any]:
    """Two trials, three evaluations each (steps 0, one epoch, two epochs), cheap probes."""
    spec = tiny_spec(
        name="tracked",
        batch_sizes=[16, 64],
        budget={"epochs": 2},
        probes="cheap",
        save_weights=False,
    )
    spec.update(overrides)
    return spec


def expected_metrics(study: Study, trial_id: str) -> dict[str, dict[int, float]]:
    """From the export (`Study.to_dataframe`, `probes_dataframe`): name -> step -> value.

    Evaluation columns keep their names, probe values are `<probe>/<key>`; NaN is "not measured".
    """
    out: dict[str, dict[int, float]] = {}
    evals = study.to_dataframe()
    for _, row in evals[evals["trial_id"] == trial_id].iterrows():
        for name in EVAL_METRICS:
            value = float(row[name])
            if not math.isnan(value):
                out.setdefault(name, {})[int(row["step"])] = value
    probes = study.probes_dataframe()
    for _, row in probes[probes["trial_id"] == trial_id].iterrows():
        if not math.isnan(row["value"]):
            out.setdefault(f"{row['probe']}/{row['key']}", {})[int(row["step"])] = row["value"]
    return out


def probe_names(study: Study) -> set[str]:
    df: pd.DataFrame = study.probes_dataframe()
    return {f"{p}/{k}" for p, k in zip(df["probe"], df["key"], strict=True)}
