"""Weights & Biases in offline mode: the run files (`run-*.wandb`) read back record by record."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wandb.proto import wandb_internal_pb2

from batchlab import run_study
from batchlab.trackers import WandbTracker, trial_label
from tests.trackers.conftest import expected_metrics, tracked_spec

_BLOCK = 32 * 1024  # the LevelDB log format W&B writes: 32 KiB blocks of framed chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[bytes]:
    """The serialized records of a `.wandb` file (a 7-byte `:W&B` header, then LevelDB log
    chunks: crc32c 4 bytes, length 2, type 1, then the payload; blocks are padded)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk


def _key(item: Any) -> str:
    """An item's name: `key`, or its `nested_key` path (how newer W&B writes most names)."""
    return str(item.key) or ".".join(item.nested_key)


def read_run(path: Path) -> dict[str, Any]:
    """The run's group, name, config and history (step -> {key: value}) from its .wandb file."""
    out: dict[str, Any] = {"config": {}, "history": {}}
    for blob in wandb_records(path):
        record = wandb_internal_pb2.Record.FromString(blob)  # type: ignore[attr-defined]
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["name"] = record.run.run_group, record.run.display_name
            out["project"] = record.run.project
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            step = int(row.pop("_step"))
            user = {k: v for k, v in row.items() if not k.startswith("_")}
            out["history"].setdefault(step, {}).update(user)
            continue
        else:
            continue
        out["config"].update({_key(u): json.loads(u.value_json) for u in updates})
    return out


@pytest.mark.slow
def test_offline_runs_grouped_by_study_with_config_and_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    tracker = WandbTracker("batchlab-test", dir=tmp_path)
    study = run_study(tracked_spec(), store=tmp_path / "r.db", trackers=[tracker])
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == len(study.trials) == 2
    runs = {r["config"]["trial_id"]: r for r in map(read_run, files)}
    for trial in study.trials:
        run = runs[trial.trial_id]
        assert (run["project"], run["group"]) == ("batchlab-test", "tracked")
        assert run["name"] == trial_label(trial)
        assert run["config"]["batch_size"] == trial.batch_size
        assert run["config"]["budget"] == {"epochs": 2}  # nested, as in the spec
        by_name: dict[str, dict[int, float]] = {}
        for step, row in run["history"].items():
            for name, value in row.items():
                by_name.setdefault(name, {})[step] = value
        expected = expected_metrics(study, trial.trial_id)
        assert set(by_name) == set(expected)
        for name, by_step in expected.items():
            assert by_name[name] == pytest.approx(by_step, rel=1e-12), name
