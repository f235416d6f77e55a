"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel and shows real results.

The notebook is executed with nbclient in a scratch folder (its store and report land there).
A last cell, added here and never saved, reports what the kernel holds; the test checks it
against the SQLite store read directly with sqlite3, an independent reading of the results.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

REPORT_CELL = """
import json as _json, sys as _sys
print("REPORT" + _json.dumps({
    "executable": _sys.executable,
    "rows_per_trial": {str(k): int(v) for k, v in df.groupby("trial_id").size().items()},
    "final_rows": len(final),
    "best_batch_size": rec.best.batch_size,
    "page": str(page.resolve()),
}))
"""


def _outputs(nb: Any) -> list[dict[str, Any]]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _mimes(nb: Any) -> list[str]:
    return [m for o in _outputs(nb) for m in o.get("data", {})]


@pytest.mark.slow
def test_quickstart_notebook_runs_and_matches_the_store(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    assert not _outputs(nb), "save the notebook without outputs"
    nb.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))  # type: ignore[no-untyped-call]
    # "python3" is ipykernel's spec; jupyter_client runs it with the test's own interpreter.
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any error in any cell

    last = nb.cells[-1].outputs
    text = "".join(o.get("text", "") for o in last if o.get("name") == "stdout")
    report = json.loads(text.split("REPORT", 1)[1])
    assert Path(report["executable"]).resolve() == Path(sys.executable).resolve()

    with sqlite3.connect(tmp_path / "quickstart.db") as db:
        trials = db.execute(
            "SELECT trial_id, batch_size, state FROM trials WHERE study = 'quickstart'"
        ).fetchall()
        evals = dict(
            db.execute("SELECT trial_id, COUNT(*) FROM evals GROUP BY trial_id").fetchall()
        )
        last_acc = dict(
            db.execute(
                "SELECT e.trial_id, e.test_acc FROM evals e WHERE e.idx ="
                " (SELECT MAX(idx) FROM evals WHERE trial_id = e.trial_id)"
            ).fetchall()
        )
    # 3 batch sizes x 2 seeds, all finished; the DataFrame has a row per stored evaluation
    assert len(trials) == 6
    assert {state for _, _, state in trials} == {"COMPLETE"}
    assert report["rows_per_trial"] == {tid: evals[tid] for tid, _, _ in trials}
    assert all(n == 4 for n in evals.values())  # before training and after each of 3 epochs
    assert report["final_rows"] == len(trials)

    # the recommendation's best batch size: highest mean final test accuracy over seeds
    by_batch: dict[int, list[float]] = {}
    for tid, b, _ in trials:
        by_batch.setdefault(b, []).append(last_acc[tid])
    best = max(by_batch, key=lambda b: statistics.fmean(by_batch[b]))
    assert report["best_batch_size"] == best

    # figures inline: two interactive plotly charts over the study's batch sizes, one PNG
    plotly = [o["data"][PLOTLY_MIME] for o in _outputs(nb) if PLOTLY_MIME in o.get("data", {})]
    assert len(plotly) == 2
    xs = {x for trace in plotly[0]["data"] for x in trace.get("x", [])}
    assert set(by_batch) <= xs
    assert _mimes(nb).count("image/png") == 1
    page = Path(report["page"])
    assert page.parent.parent == tmp_path.resolve()
    assert "quickstart" in page.read_text(encoding="utf-8")
